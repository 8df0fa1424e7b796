"""Every bad input gets a precise status and a message a person can act on; nothing is enqueued."""

from __future__ import annotations

import grpc
import pytest

from pipeserve.local_models import TINY_LLAMA
from pipeserve.v1 import generation_pb2, types_pb2

from .conftest import start_stack, stop_stack, stream_request, unary_request

INVALID = grpc.StatusCode.INVALID_ARGUMENT

BAD_REQUESTS = [
    (unary_request(prompt=""), INVALID, "prompt"),
    (generation_pb2.GenerateRequest(model=TINY_LLAMA), INVALID, "prompt"),
    (unary_request(max_new_tokens=-5), INVALID, "max_new_tokens"),
    (unary_request(max_new_tokens=0), INVALID, "max_new_tokens"),
    (unary_request(max_new_tokens=10_000_000), INVALID, "max_new_tokens"),
    (unary_request(do_sample=True, temperature=0.0), INVALID, "temperature"),
    (unary_request(do_sample=True, temperature=-1.0), INVALID, "temperature"),
    (unary_request(top_p=0.0), INVALID, "top_p"),
    (unary_request(top_p=1.5), INVALID, "top_p"),
    (unary_request(top_k=-1), INVALID, "top_k"),
    (unary_request(repetition_penalty=0.0), INVALID, "repetition_penalty"),
    (unary_request(temperature=float("nan"), do_sample=True), INVALID, "temperature"),
    (unary_request(num_beams=9), INVALID, "num_beams"),  # past PIPESERVE_MAX_BEAMS
    (unary_request(num_return_sequences=2), INVALID, "num_return_sequences"),
    (unary_request(stop=[""]), INVALID, "stop"),
    (unary_request(model="no-such-model"), grpc.StatusCode.NOT_FOUND, "no-such-model"),
    (unary_request(prompt="word " * 5000), INVALID, "token"),
    (unary_request(max_new_tokens=2040, prompt="def f(x):\n" * 20), INVALID, "context"),
    (
        generation_pb2.GenerateRequest(model=TINY_LLAMA, chat=types_pb2.Chat()),
        INVALID,
        "messages",
    ),
]


@pytest.mark.parametrize(("request_message", "code", "mentions"), BAD_REQUESTS, ids=[m for _r, _c, m in BAD_REQUESTS])
def test_bad_request_gets_precise_status(stack, generation, request_message, code, mentions):
    client = stack.redis()
    depth_before = client.xlen(stack.keys.request_stream(TINY_LLAMA))
    with pytest.raises(grpc.RpcError) as raised:
        generation.Generate(request_message, timeout=30)
    assert raised.value.code() == code, raised.value.details()
    assert mentions in raised.value.details()
    assert "Traceback" not in raised.value.details()
    assert client.xlen(stack.keys.request_stream(TINY_LLAMA)) == depth_before, "a rejected request was enqueued"


def test_streaming_rpc_rejects_the_same_way(generation):
    with pytest.raises(grpc.RpcError) as raised:
        list(generation.GenerateStream(stream_request(top_p=2.0), timeout=30))
    assert raised.value.code() == INVALID and "top_p" in raised.value.details()


def test_oversize_message_is_refused(generation):
    with pytest.raises(grpc.RpcError) as raised:
        generation.Generate(unary_request(prompt="a" * (8 * 1024 * 1024)), timeout=30)
    assert raised.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, INVALID)


def test_full_queue_gives_resource_exhausted_and_no_worker_gives_unavailable(models_file, redis_url, tmp_path):
    """A stack with no model worker: the queue fills up to its bound, then refuses at once."""
    stack = start_stack(
        models_file,
        redis_url,
        tmp_path,
        workers=0,
        env={"PIPESERVE_MAX_QUEUE_DEPTH": "2", "PIPESERVE_WORKER_LIVENESS_S": "0"},
    )
    try:
        with stack.channel() as channel:
            from pipeserve.v1 import generation_pb2_grpc

            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            waiting = [stub.Generate.future(unary_request(max_new_tokens=4), timeout=30) for _ in range(2)]
            client = stack.redis()
            stream = stack.keys.request_stream(TINY_LLAMA)
            while client.xlen(stream) < 2:
                assert not any(f.done() for f in waiting), [f.exception() for f in waiting if f.done()]
            with pytest.raises(grpc.RpcError) as raised:
                stub.Generate(unary_request(max_new_tokens=4), timeout=30)
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "queued" in raised.value.details()
            assert client.xlen(stream) == 2
            for future in waiting:
                future.cancel()
    finally:
        assert stop_stack(stack.process) == 0, stack.logs()


def test_no_live_worker_gives_unavailable(models_file, redis_url, tmp_path):
    stack = start_stack(models_file, redis_url, tmp_path, workers=0, env={"PIPESERVE_WORKER_LIVENESS_S": "15"})
    try:
        with stack.channel() as channel:
            from pipeserve.v1 import generation_pb2_grpc

            with pytest.raises(grpc.RpcError) as raised:
                generation_pb2_grpc.GenerationServiceStub(channel).Generate(unary_request(max_new_tokens=4), timeout=30)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "worker" in raised.value.details()
    finally:
        assert stop_stack(stack.process) == 0, stack.logs()
