#!/usr/bin/env python3
"""Steady load through a whole stack for a while, then what it left behind: process memory and Redis keys.

    python scripts/soak.py --seconds 30 --models-file models/models.yaml

Starts the stack as `pipeserve serve-all` does (an embedded valkey-server
unless --redis-url or REDIS_URL names one), keeps --concurrency clients
busy with streaming requests of every kind (greedy, sampled with n=2, with
a stop string, and cancelled by the client part-way), and reports as JSON:

- requests completed, cancelled and failed (by status code);
- the resident memory (RSS, from /proc: Linux) of every service process
  after a warm-up and at the end of the load;
- what Redis holds once the load stops and the queue has drained: reply
  streams, cancel flags, per-request keys without a TTL, queue entries.

The exit status is 1 when a request failed, the queue did not drain, a
reply stream or a key without a TTL is left behind (every request here
ended), or a process grew more than --max-rss-growth-mib. Cancel flags are
counted but allowed: one raised just as its request ended (a client cancel
or a stop string racing the last token) has nothing left to delete it and
expires after PIPESERVE_KEY_TTL_S.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import grpc

from pipeserve.cli.stack import Stack, free_port
from pipeserve.queue.keys import CONSUMER_GROUP, Keys
from pipeserve.v1 import generation_pb2, generation_pb2_grpc

PROMPTS = [
    "def fibonacci(n):",
    "import os\nimport sys\n\nclass Config:\n    def __init__(self, path):",
    "你好，世界！今天天气",
    "for i in range(10):\n    print(i)\n" * 8,
    "emoji 🙂 and 🚀 go to",
]
DRAIN_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 120.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to keep the load up (default 30)")
    parser.add_argument("--warmup-seconds", type=float, default=5.0, help="load before the first RSS reading (5)")
    parser.add_argument("--models-file", type=Path, default=Path("models/models.yaml"))
    parser.add_argument("--model", default=None, help="model to load (default: the first in the models file)")
    parser.add_argument("--model-workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=8, help="clients sending requests back to back (8)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="longest generation asked for (48)")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL"), help="default: embedded valkey")
    parser.add_argument("--max-rss-growth-mib", type=float, default=None, help="fail when a process grows more")
    return parser.parse_args(argv)


class Load:
    """Clients sending requests back to back until told to stop, counting how each one ended."""

    def __init__(self, stub: generation_pb2_grpc.GenerationServiceStub, model: str, max_new_tokens: int):
        self._stub = stub
        self._model = model
        self._max_new_tokens = max_new_tokens
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.outcomes: Counter[str] = Counter()

    def run(self, clients: int) -> list[threading.Thread]:
        threads = [threading.Thread(target=self._client, args=(number,), daemon=True) for number in range(clients)]
        for thread in threads:
            thread.start()
        return threads

    def stop(self, threads: list[threading.Thread]) -> None:
        self._stop.set()
        for thread in threads:
            thread.join(REQUEST_TIMEOUT_S)

    def _client(self, number: int) -> None:
        for count in itertools.count():
            if self._stop.is_set():
                return
            kind = ("greedy", "sampled", "stop", "greedy", "cancelled")[(number + count) % 5]
            outcome = self._one(kind, PROMPTS[(number + count) % len(PROMPTS)], 8 + (count * 7) % self._max_new_tokens)
            with self._lock:
                self.outcomes[outcome] += 1

    def _one(self, kind: str, prompt: str, max_new_tokens: int) -> str:
        parameters = generation_pb2.GenerationParameters(max_new_tokens=max_new_tokens, ignore_eos=True)
        if kind == "sampled":
            parameters.do_sample, parameters.num_return_sequences, parameters.temperature = True, 2, 0.8
        if kind == "stop":
            parameters.stop.append("\n")
        request = generation_pb2.GenerateStreamRequest(model=self._model, prompt=prompt, parameters=parameters)
        call = self._stub.GenerateStream(request, timeout=REQUEST_TIMEOUT_S)
        try:
            for received, _message in enumerate(call, 1):
                if kind == "cancelled" and received == 2:
                    call.cancel()
                    return "cancelled"
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.CANCELLED and kind == "cancelled":
                return "cancelled"
            return f"failed: {error.code().name}"
        return "completed"


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def service_rss(stack: Stack) -> dict[str, float | None]:
    return {name: rss_mib(pid) for name, pid in stack.pids.items() if name != "redis"}


def redis_leftovers(stack: Stack, model: str) -> dict[str, int]:
    """Wait for the queue to drain, then count what the finished requests left in Redis."""
    import redis

    client, keys = redis.Redis.from_url(stack.redis_url), Keys(stack.key_prefix)
    stream = keys.request_stream(model)

    def queued() -> int:
        return client.xlen(stream) + client.xpending(stream, CONSUMER_GROUP)["pending"]

    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while queued() and time.monotonic() < deadline:
        time.sleep(0.1)
    reply_streams = list(client.scan_iter(match=keys.reply_stream("*")))
    cancel_flags = list(client.scan_iter(match=keys.cancel("*")))
    return {
        "queue_entries": queued(),
        "reply_streams": len(reply_streams),
        "cancel_flags": len(cancel_flags),
        "without_ttl": sum(client.ttl(key) == -1 for key in reply_streams + cancel_flags),
    }


def soak(args: argparse.Namespace) -> dict:
    stack = Stack(
        args.models_file,
        gateway_listen=f"127.0.0.1:{free_port()}",
        tokenizer_listen=f"127.0.0.1:{free_port()}",
        model_workers=args.model_workers,
        redis_url=args.redis_url,
        key_prefix=f"pipeserve-soak-{uuid.uuid4().hex[:8]}",
    )
    with stack:
        model = args.model or next(iter(stack.models))
        with grpc.insecure_channel(stack.gateway_address) as channel:
            load = Load(generation_pb2_grpc.GenerationServiceStub(channel), model, args.max_new_tokens)
            threads = load.run(args.concurrency)
            time.sleep(args.warmup_seconds)
            before, warm = service_rss(stack), Counter(load.outcomes)
            time.sleep(args.seconds)
            after = service_rss(stack)
            load.stop(threads)
        leftovers = redis_leftovers(stack, model)
    measured = load.outcomes - warm
    return {
        "seconds": args.seconds,
        "concurrency": args.concurrency,
        "requests": dict(load.outcomes),
        "requests_per_second": round(sum(measured.values()) / args.seconds, 1),
        "rss_mib": {
            name: {"before": round(before[name], 1), "after": round(after[name], 1)}
            for name in before
            if before[name] is not None and after.get(name) is not None
        },
        "redis": leftovers,
    }


def problems(report: dict, max_rss_growth_mib: float | None) -> list[str]:
    found = [
        f"{count} requests {outcome}" for outcome, count in report["requests"].items() if outcome.startswith("failed")
    ]
    found += [
        f"{count} {what} left in Redis" for what, count in report["redis"].items() if count and what != "cancel_flags"
    ]
    if max_rss_growth_mib is not None:
        for name, rss in report["rss_mib"].items():
            if rss["after"] - rss["before"] > max_rss_growth_mib:
                found.append(f"{name} grew from {rss['before']} to {rss['after']} MiB")
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = soak(args)
    print(json.dumps(report, indent=2))
    found = problems(report, args.max_rss_growth_mib)
    for problem in found:
        print(f"soak: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
