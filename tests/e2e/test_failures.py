"""Nothing lost, nothing duplicated: real processes killed with SIGKILL while they serve streams.

One stack (`serve-all --model-workers 2 --tokenizers 2`, which restarts the
services it loses) with short recovery timings: heartbeats every 0.2 s, a
pending entry idle for 2 s is taken over, and a request that took down two
workers is dead-lettered.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from polling import wait_for

from pipeserve.local_models import TINY_LLAMA
from pipeserve.queue.keys import CONSUMER_GROUP
from pipeserve.queue.protocol import PAYLOAD_FIELD, decode_work_item
from pipeserve.v1 import generation_pb2_grpc, models_pb2, models_pb2_grpc, types_pb2

from .conftest import RunningStack, greedy_reference, start_stack, stop_stack, stream_request, unary_request

MAX_DELIVERIES = 2
RECOVERY_ENV = {
    "PIPESERVE_HEARTBEAT_INTERVAL_S": "0.2",
    "PIPESERVE_CLAIM_IDLE_MS": "2000",
    "PIPESERVE_MAX_DELIVERIES": str(MAX_DELIVERIES),
}
WAIT_S = 180
# Bounded waits are generous, and so is the per-test limit: on a busy shared CPU a decode step of the
# tiny model can take a second, and each scenario here waits for restarts and a claim time besides.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def failure_stack(models_file, redis_url, tmp_path_factory) -> Iterator[RunningStack]:
    running = start_stack(
        models_file, redis_url, tmp_path_factory.mktemp("failures"), workers=2, tokenizers=2, env=RECOVERY_ENV
    )
    yield running
    assert stop_stack(running.process) == 0, f"serve-all did not shut down cleanly:\n{running.logs()}"


@pytest.fixture(scope="module")
def stubs(failure_stack):
    with failure_stack.channel() as channel:
        yield generation_pb2_grpc.GenerationServiceStub(channel), models_pb2_grpc.ModelsServiceStub(channel)


class Stream(threading.Thread):
    """One GenerateStream call, read to its end on a thread of its own."""

    def __init__(self, stub, prompt: str, max_new_tokens: int):
        super().__init__(daemon=True)
        self.prompt, self.max_new_tokens = prompt, max_new_tokens
        self._call = stub.GenerateStream(
            stream_request(prompt=prompt, max_new_tokens=max_new_tokens, ignore_eos=True), timeout=WAIT_S * 2
        )
        self.request_id = dict(self._call.initial_metadata())["x-request-id"]
        self.responses: list = []
        self.error: grpc.RpcError | None = None
        self.start()

    def run(self):
        try:
            for response in self._call:
                self.responses.append(response)
        except grpc.RpcError as error:
            self.error = error

    def check_against(self, reference, models_api) -> None:
        """The stream is whole: numbered without gaps, the uninterrupted run's tokens and text, one finish."""
        self.join(WAIT_S)
        assert not self.is_alive(), f"stream {self.request_id} did not end"
        assert self.error is None, f"stream {self.request_id}: {self.error}"
        assert [r.sequence_number for r in self.responses] == list(range(len(self.responses)))
        prompt_ids = list(
            models_api.Tokenize(models_pb2.TokenizeRequest(model=TINY_LLAMA, prompt=self.prompt)).token_ids
        )
        expected = greedy_reference(reference, prompt_ids, self.max_new_tokens)
        assert [t for r in self.responses for t in r.token_ids] == expected, f"stream {self.request_id} tokens"
        _model, tokenizer = reference
        assert "".join(r.text for r in self.responses) == tokenizer.decode(expected, skip_special_tokens=True)
        assert [r.finish_reason for r in self.responses if r.finish_reason] == [types_pb2.FINISH_REASON_LENGTH]
        assert self.responses[-1].usage.completion_tokens == self.max_new_tokens


def holders(stack: RunningStack) -> dict[str, str]:
    """Request id -> the consumer (worker id, hostname-pid) holding its queue entry."""
    client, stream = stack.redis(), stack.keys.request_stream(TINY_LLAMA)
    held = {}
    for entry in client.xpending_range(stream, CONSUMER_GROUP, "-", "+", 1000):
        [(_id, fields)] = client.xrange(stream, entry["message_id"], entry["message_id"]) or [(None, None)]
        if fields is not None:
            held[decode_work_item(fields[PAYLOAD_FIELD]).request_id] = entry["consumer"].decode()
    return held


def sigkill_worker(consumer: str) -> None:
    """Worker ids default to hostname-pid: that pid is the model worker process."""
    os.kill(int(consumer.rsplit("-", 1)[1]), signal.SIGKILL)


def live_workers(stack: RunningStack) -> int:
    """Workers that heartbeated within the last second (a SIGKILLed one stays in the set, growing old)."""
    return stack.redis().zcount(stack.keys.workers(TINY_LLAMA), time.time() - 1, "+inf")


def service_processes(stack: RunningStack, module: str) -> dict[int, dict[str, str]]:
    """Pid -> environment of every `python -m <module>` child of this stack's serve-all."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if parent == stack.process.pid and argv[1:3] == [b"-m", module.encode()]:
            pairs = (item.decode(errors="replace").partition("=") for item in environ if b"=" in item)
            found[int(entry.name)] = {name: value for name, _, value in pairs}
    return found


def assert_nothing_leaks(stack: RunningStack) -> None:
    """Every request ended: no queue entry left, and every per-request key expires on its own."""
    client, stream = stack.redis(), stack.keys.request_stream(TINY_LLAMA)
    wait_for(
        lambda: client.xlen(stream) == 0 and client.xpending(stream, CONSUMER_GROUP)["pending"] == 0,
        "every queue entry to be acknowledged",
        timeout_s=WAIT_S,
    )
    for pattern in (stack.keys.reply_stream("*"), stack.keys.cancel("*")):
        for key in client.scan_iter(match=pattern):
            assert client.ttl(key) != -1, f"{key!r} has no TTL: it would leak"


PROMPTS = [
    "def f(x):",
    "class Path(object):\n    '''A filesystem path.'''\n",
    "你好，世界！",
    "for i in range(10):\n    print(i)\n",
    "x",
    "import collections\nimport functools\n",
    "emoji 🙂 and 🚀 go to",
    "return self._data[key] if key in self._data else default",
]


def test_sigkilled_worker_streams_are_resumed_whole(failure_stack, stubs, reference):
    """8 greedy streams; the worker holding most of them is SIGKILLed; every text equals an uninterrupted run."""
    generation, models_api = stubs
    streams = [Stream(generation, prompt, 80) for prompt in PROMPTS]
    wait_for(lambda: all(len(s.responses) >= 2 for s in streams), "every stream to be under way", timeout_s=WAIT_S)
    held = holders(failure_stack)
    victim, _count = collections.Counter(held.values()).most_common(1)[0]
    interrupted = [s for s in streams if held.get(s.request_id) == victim]
    sigkill_worker(victim)

    for stream in streams:
        stream.check_against(reference, models_api)
    logs = failure_stack.logs()
    for stream in interrupted:
        assert f"taking over request {stream.request_id}" in logs
    print(f"\n{len(interrupted)} of {len(streams)} streams were on the killed worker; all {len(streams)} whole")
    assert interrupted
    assert_nothing_leaks(failure_stack)


def test_a_request_that_kills_every_worker_it_meets_is_dead_lettered(failure_stack, stubs, reference):
    generation, models_api = stubs
    wait_for(lambda: live_workers(failure_stack) >= 2, "both workers to be up", timeout_s=WAIT_S)
    poison = Stream(generation, "def poison():", 1800)
    healthy = Stream(generation, "def healthy():", 80)
    wait_for(lambda: poison.responses, "the poison request to start", timeout_s=WAIT_S)
    killed = []
    for _ in range(MAX_DELIVERIES):
        holder = wait_for(
            lambda: (h := holders(failure_stack).get(poison.request_id)) not in (None, *killed) and h,
            "a worker to take the poison request",
            timeout_s=WAIT_S,
        )
        sigkill_worker(holder)
        killed.append(holder)

    poison.join(WAIT_S)
    assert isinstance(poison.error, grpc.RpcError), "the poison request must end with a status"
    assert poison.error.code() == grpc.StatusCode.INTERNAL
    assert f"failed on {MAX_DELIVERIES} model workers" in poison.error.details()
    healthy.check_against(reference, models_api)
    after = generation.Generate(unary_request(max_new_tokens=5, ignore_eos=True), timeout=WAIT_S)
    assert len(after.completions[0].token_ids) == 5, "the service keeps serving"

    letters = failure_stack.redis().xrange(failure_stack.keys.dead_letter(TINY_LLAMA))
    [fields] = [f for _id, f in letters if f[b"request_id"].decode() == poison.request_id]
    assert int(fields[b"deliveries"]) == MAX_DELIVERIES + 1
    assert_nothing_leaks(failure_stack)


def test_a_dying_tokenizer_is_failed_over_without_a_gap(failure_stack, stubs, reference):
    generation, models_api = stubs
    tokenizers = service_processes(failure_stack, "tokenizer_service")
    assert len(tokenizers) == 2
    wait_for(lambda: live_workers(failure_stack) >= 1, "a model worker", timeout_s=WAIT_S)
    retries_before = failure_stack.logs().count("unavailable during generation")
    streams = []
    for prompt in PROMPTS[:4]:
        # One Tokenize per stream makes three tokenizer calls per request, so round robin alternates
        # the streams between the two tokenizers and the one killed below holds some of them.
        models_api.Tokenize(models_pb2.TokenizeRequest(model=TINY_LLAMA, prompt=prompt))
        streams.append(Stream(generation, prompt, 80))
        wait_for(lambda: streams[-1].responses, "the stream to start", timeout_s=WAIT_S)
    victim = min(tokenizers)
    os.kill(victim, signal.SIGKILL)
    during = generation.Generate(unary_request(max_new_tokens=4, ignore_eos=True), timeout=WAIT_S)
    assert len(during.completions[0].token_ids) == 4, "preprocessing fails over too"

    for stream in streams:
        stream.check_against(reference, models_api)
    resumed = failure_stack.logs().count("unavailable during generation") - retries_before
    print(f"\n{resumed} broken StreamText calls of {len(streams)} streams were resumed on the other tokenizer")
    assert resumed >= 1
    wait_for(
        lambda: len(service_processes(failure_stack, "tokenizer_service")) == 2,
        "the tokenizer's restart",
        timeout_s=WAIT_S,
    )
    assert_nothing_leaks(failure_stack)


def test_leftover_keys_summary(failure_stack):
    """After every scenario above: what the stack leaves in Redis (the dead-letter stream is capped, not per request)."""
    client = failure_stack.redis()
    keys = {key.decode(): client.ttl(key) for key in client.scan_iter(match=f"{failure_stack.keys.prefix}:*")}
    print("\nkeys left:", json.dumps(keys, indent=1, sort_keys=True))
    per_request = {key: ttl for key, ttl in keys.items() if ":reply:" in key or ":cancel:" in key}
    assert all(ttl > 0 for ttl in per_request.values())
