"""The tokenizer service in-process over real gRPC and Redis, and `python -m tokenizer_service` as a process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from pipeserve.internal.v1 import queue_pb2, tokenizer_pb2, tokenizer_pb2_grpc
from pipeserve.local_models import TINY_LLAMA
from pipeserve.queue.protocol import PAYLOAD_FIELD
from pipeserve.v1 import generation_pb2, types_pb2
from tokenizer_service.config import TokenizerSettings
from tokenizer_service.server import SERVICE_NAME, create_server

FINISH = types_pb2.FinishReason
WAIT_S = 10.0


@pytest.fixture
async def address(models_file, redis, keys) -> AsyncIterator[str]:
    """A running server (tokenizers loaded from the models file) on a free port."""
    settings = TokenizerSettings(models_file=models_file, key_prefix=keys.prefix, key_ttl_s=60)
    server, port = create_server(settings, "127.0.0.1:0", redis=redis)
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


@pytest.fixture
async def channel(address) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(address) as channel:
        yield channel


@pytest.fixture
def stub(channel) -> tokenizer_pb2_grpc.TokenizerServiceStub:
    return tokenizer_pb2_grpc.TokenizerServiceStub(channel)


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


async def publish(redis, keys, request_id: str, *chunks: queue_pb2.ReplyChunk) -> None:
    """What the model worker does: append ReplyChunks to the request's reply stream."""
    for chunk in chunks:
        await redis.xadd(keys.reply_stream(request_id), {PAYLOAD_FIELD: chunk.SerializeToString()})


def token_chunks(token_ids: list[int], finish=FINISH.FINISH_REASON_UNSPECIFIED, size: int = 3):
    chunks = [
        queue_pb2.ReplyChunk(deltas=[queue_pb2.SequenceDelta(index=0, token_ids=token_ids[start : start + size])])
        for start in range(0, len(token_ids), size)
    ]
    if finish:
        chunks.append(queue_pb2.ReplyChunk(deltas=[queue_pb2.SequenceDelta(index=0, finish_reason=finish)]))
    for number, chunk in enumerate(chunks):
        chunk.sequence_number = number
    return chunks


def stream_request(
    request_id: str, prompt_ids: list[int], resume_after_messages: int = 0, **decode
) -> tokenizer_pb2.StreamTextRequest:
    options = tokenizer_pb2.DecodeOptions(skip_special_tokens=True, num_sequences=1, **decode)
    return tokenizer_pb2.StreamTextRequest(
        request_id=request_id,
        model=TINY_LLAMA,
        prompt_token_ids=prompt_ids,
        decode=options,
        resume_after_messages=resume_after_messages,
    )


async def eventually(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not await condition():
        assert time.monotonic() < deadline, f"not within {WAIT_S} s: {what}"
        await asyncio.sleep(0.02)


async def test_stream_text_relays_chunks_published_while_it_reads(stub, redis, keys, tokenizer):
    request_id = uuid.uuid4().hex
    prompt = tokenizer.encode("def main():")
    generated = tokenizer.encode("\n    print('你好 🙂')\n", add_special_tokens=False)
    chunks = token_chunks(generated, FINISH.FINISH_REASON_LENGTH)
    call = stub.StreamText(stream_request(request_id, prompt), timeout=WAIT_S)

    async def worker():
        for chunk in chunks:
            await publish(redis, keys, request_id, chunk)
            await asyncio.sleep(0.01)

    publishing = asyncio.create_task(worker())
    responses = [response async for response in call]
    await publishing
    full = tokenizer.decode(prompt + generated, skip_special_tokens=True)
    assert "".join(r.text for r in responses) == full[len(tokenizer.decode(prompt, skip_special_tokens=True)) :]
    assert [t for r in responses for t in r.token_ids] == generated
    assert responses[-1].finish_reason == FINISH.FINISH_REASON_LENGTH
    assert responses[-1].usage == types_pb2.Usage(prompt_tokens=len(prompt), completion_tokens=len(generated))
    assert not await redis.exists(keys.reply_stream(request_id)), "the reply stream outlived its request"
    assert not await redis.exists(keys.cancel(request_id)), "a finished request needs no cancel flag"


async def test_stop_string_raises_the_sequence_cancel_flag(stub, redis, keys, tokenizer):
    request_id = uuid.uuid4().hex
    generated = tokenizer.encode(" x = 1\n    return x\n", add_special_tokens=False)
    # No finish chunk: the worker keeps generating until it sees the cancel flag.
    await publish(redis, keys, request_id, *token_chunks(generated))
    responses = [r async for r in stub.StreamText(stream_request(request_id, [], stop=["return"]), timeout=WAIT_S)]
    assert "".join(r.text for r in responses) == " x = 1\n    "
    assert responses[-1].finish_reason == FINISH.FINISH_REASON_STOP
    assert await redis.smembers(keys.cancel(request_id)) == {b"0"}
    assert 0 < await redis.ttl(keys.cancel(request_id)) <= 60
    assert not await redis.exists(keys.reply_stream(request_id))


async def test_worker_error_ends_the_call_with_its_status(stub, redis, keys):
    request_id = uuid.uuid4().hex
    error = queue_pb2.ReplyError(code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message="KV cache budget exceeded")
    await publish(
        redis, keys, request_id, *token_chunks([100, 101]), queue_pb2.ReplyChunk(sequence_number=1, error=error)
    )
    call = stub.StreamText(stream_request(request_id, []), timeout=WAIT_S)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _response in call:
            pass
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert raised.value.details() == "KV cache budget exceeded"
    await eventually(lambda: _gone(redis, keys.reply_stream(request_id)), "reply stream deleted after an error")


async def _gone(redis, key: str) -> bool:
    return not await redis.exists(key)


async def _cancelled_all(redis, keys, request_id: str) -> bool:
    return await redis.smembers(keys.cancel(request_id)) == {b"*"}


async def test_a_cancelled_call_leaves_the_request_for_a_resumed_call(stub, redis, keys, tokenizer):
    """The gateway's connection to this tokenizer broke: the request runs on, and a new call picks it up.

    The new call (on this tokenizer or another) rebuilds the text from the
    reply stream and sends only what the broken call had not delivered.
    """
    request_id = uuid.uuid4().hex
    prompt = tokenizer.encode("def main():")
    generated = tokenizer.encode("\n    print('你好 🙂')\n    return 0\n", add_special_tokens=False)
    chunks = token_chunks(generated, FINISH.FINISH_REASON_LENGTH, size=2)
    half = len(chunks) // 2
    await publish(redis, keys, request_id, *chunks[:half])
    broken = stub.StreamText(stream_request(request_id, prompt), timeout=WAIT_S)
    delivered = [await broken.read() for _ in range(half - 1)]
    broken.cancel()
    await asyncio.sleep(0.2)  # proving an absence: the tokenizer's cleanup, if any, runs right after the cancel
    assert await redis.exists(keys.reply_stream(request_id)), "the reply stream is needed to resume"
    assert not await redis.exists(keys.cancel(request_id)), "the request must keep running"

    await publish(redis, keys, request_id, *chunks[half:])
    resumed = stub.StreamText(stream_request(request_id, prompt, resume_after_messages=len(delivered)), timeout=WAIT_S)
    rest = [response async for response in resumed]
    responses = delivered + rest
    full = tokenizer.decode(prompt + generated, skip_special_tokens=True)
    assert "".join(r.text for r in responses) == full[len(tokenizer.decode(prompt, skip_special_tokens=True)) :]
    assert [t for r in responses for t in r.token_ids] == generated
    assert rest[-1].usage == types_pb2.Usage(prompt_tokens=len(prompt), completion_tokens=len(generated))
    assert not await redis.exists(keys.reply_stream(request_id)), "a finished request's reply stream is deleted"


async def test_deadline_passing_while_waiting_for_the_worker(stub, redis, keys):
    request_id = uuid.uuid4().hex
    await publish(redis, keys, request_id, *token_chunks([100]))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _response in stub.StreamText(stream_request(request_id, []), timeout=0.5):
            pass
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await eventually(lambda: _gone(redis, keys.reply_stream(request_id)), "reply stream deleted after the deadline")
    await eventually(lambda: _cancelled_all(redis, keys, request_id), "cancel flag raised after the deadline")


async def test_preprocess_and_tokenize_over_grpc(stub, tokenizer):
    response = await stub.Preprocess(
        tokenizer_pb2.PreprocessRequest(
            model=TINY_LLAMA, prompt="Hello", parameters=generation_pb2.GenerationParameters(max_new_tokens=7)
        )
    )
    assert list(response.prompt_token_ids) == tokenizer("Hello")["input_ids"]
    assert response.sampling.max_new_tokens == 7 and response.decode.skip_special_tokens
    tokenized = await stub.Tokenize(tokenizer_pb2.TokenizeRequest(model=TINY_LLAMA, prompt="Hello"))
    assert list(tokenized.tokens) == tokenizer.convert_ids_to_tokens(tokenizer("Hello")["input_ids"])


async def test_describe_models_reports_what_the_tokenizer_knows(stub):
    response = await stub.DescribeModels(tokenizer_pb2.DescribeModelsRequest())
    (info,) = response.models
    assert (info.name, info.task, info.max_context_length, info.has_chat_template) == (
        TINY_LLAMA,
        "text-generation",
        2048,
        True,
    )


@pytest.mark.parametrize(
    ("call", "code", "mentions"),
    [
        (lambda s: s.Preprocess(tokenizer_pb2.PreprocessRequest(model="nope", prompt="x")), "NOT_FOUND", TINY_LLAMA),
        (lambda s: s.Tokenize(tokenizer_pb2.TokenizeRequest(model="nope", prompt="x")), "NOT_FOUND", "nope"),
        (
            lambda s: s.Preprocess(tokenizer_pb2.PreprocessRequest(model=TINY_LLAMA, prompt="")),
            "INVALID_ARGUMENT",
            "prompt",
        ),
        (
            lambda s: s.StreamText(tokenizer_pb2.StreamTextRequest(model="nope", request_id="r")).read(),
            "NOT_FOUND",
            "nope",
        ),
        (
            lambda s: s.StreamText(tokenizer_pb2.StreamTextRequest(model=TINY_LLAMA)).read(),
            "INVALID_ARGUMENT",
            "request_id",
        ),
    ],
    ids=["preprocess-unknown-model", "tokenize-unknown-model", "empty-prompt", "stream-unknown-model", "no-request-id"],
)
async def test_errors_have_precise_codes(stub, call, code, mentions):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(stub)
    assert raised.value.code() == getattr(grpc.StatusCode, code)
    assert mentions in raised.value.details()


async def test_health_and_reflection(address, channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    def reflected_services() -> list[str]:
        # The reflection client is synchronous: run it off the loop that serves the server.
        with grpc.insecure_channel(address) as sync_channel:
            return ProtoReflectionDescriptorDatabase(sync_channel).get_services()

    assert SERVICE_NAME in await asyncio.to_thread(reflected_services)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_module_entry_point_serves_until_sigterm(models_file, redis_url, key_prefix, tmp_path):
    address = f"127.0.0.1:{free_port()}"
    log_path = tmp_path / "tokenizer.log"
    command = [
        sys.executable, "-m", "tokenizer_service", "--listen", address,
        "--models-file", str(models_file), "--redis-url", redis_url,
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PIPESERVE_KEY_PREFIX": key_prefix}
        )
    try:
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), wait_for_ready=True, timeout=60)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    logs = log_path.read_text()
    # stderr is a file, so the lines are JSON (pipeserve.logsetup).
    assert '"service": "tokenizer"' in logs and f"listening on {address}" in logs and "stopped" in logs
