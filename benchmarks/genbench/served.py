"""Phase d: pipeserve end to end, started as its own processes, driven by concurrent grpc.aio clients.

The stack is ``pipeserve serve-all`` in a child process (gateway, tokenizer
service, one model worker and, unless a Redis URL is given, an embedded
valkey-server), with its logs in a file so they do not mix with the progress
display. Nothing else of this benchmark computes while it runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import grpc

from genbench.timing import BenchmarkError, RequestTiming
from genbench.tracker import Advance, no_progress
from genbench.workload import Prompt, Schedule
from pipeserve.v1 import generation_pb2, generation_pb2_grpc, models_pb2, models_pb2_grpc

READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 900.0
SERVE_ALL = "import sys; from pipeserve.cli import main; sys.exit(main())"


class ServedStack:
    """``pipeserve serve-all`` as a child process between ``start()`` (which returns the gateway address) and ``stop()``."""

    def __init__(self, models_file: Path, *, redis_url: str | None, env: Mapping[str, str]):
        self.models_file = models_file
        self.redis_url = redis_url
        self.env = {**os.environ, **env}
        self._dir = tempfile.TemporaryDirectory(prefix="pipeserve-bench-")
        self.log_path = Path(self._dir.name) / "stack.log"
        self._process: subprocess.Popen | None = None

    def start(self) -> str:
        ready_file = Path(self._dir.name) / "ready.json"
        argv = [sys.executable, "-c", SERVE_ALL, "serve-all", "--models-file", str(self.models_file)]
        argv += ["--gateway-listen", f"127.0.0.1:{_free_port()}", "--tokenizer-listen", f"127.0.0.1:{_free_port()}"]
        argv += ["--model-workers", "1", "--ready-file", str(ready_file)]
        argv += ["--redis-url", self.redis_url] if self.redis_url else []
        with self.log_path.open("wb") as log:
            # Its own process group: a Ctrl-C here reaches only us, and we stop the stack in order.
            self._process = subprocess.Popen(
                argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, process_group=0
            )
        try:
            return self._wait_ready(ready_file)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, ready_file: Path) -> str:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready_file.exists():
            if self._process.poll() is not None:
                raise BenchmarkError(f"pipeserve serve-all exited while starting:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise BenchmarkError(f"pipeserve serve-all not ready after {READY_TIMEOUT_S:g}s:\n{self.log_tail()}")
            time.sleep(0.2)
        return json.loads(ready_file.read_text())["gateway"]

    def stop(self) -> None:
        """SIGINT (serve-all's clean stop: gateway, workers, tokenizer, Redis), then SIGKILL if it hangs."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
        self._dir.cleanup()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def check_tokenization(address: str, model: str, prompts: list[Prompt]) -> None:
    """Fail unless the tokenizer service makes of every prompt's text the ids the in-process phases used."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = models_pb2_grpc.ModelsServiceStub(channel)
        for index, prompt in enumerate(prompts):
            reply = await stub.Tokenize(models_pb2.TokenizeRequest(model=model, prompt=prompt.text))
            if tuple(reply.token_ids) != prompt.token_ids:
                raise BenchmarkError(
                    f"prompt {index}: the tokenizer service made {len(reply.token_ids)} ids, "
                    f"the in-process tokenizer {len(prompt.token_ids)}: the phases would not run the same workload"
                )


async def run_clients(
    address: str,
    model: str,
    prompts: list[Prompt],
    max_new_tokens: int,
    schedule: Schedule,
    advance: Advance = no_progress,
) -> list[RequestTiming]:
    """Stream every prompt through GenerateStream, as the schedule says: N closed-loop clients or timed arrivals."""
    timings: list[RequestTiming | None] = [None] * len(prompts)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)

        async def one(index: int, submitted: float) -> None:
            timings[index] = await _stream(stub, model, prompts[index], max_new_tokens, submitted)
            advance()

        if schedule.arrivals is None:
            pending = iter(range(len(prompts)))

            async def client() -> None:
                for index in pending:
                    await one(index, time.perf_counter())

            await asyncio.gather(*(client() for _ in range(schedule.concurrency)))
        else:
            start = time.perf_counter()

            async def arrive(index: int) -> None:
                await asyncio.sleep(max(0.0, start + schedule.arrivals[index] - time.perf_counter()))
                await one(index, start + schedule.arrivals[index])

            await asyncio.gather(*(arrive(index) for index in range(len(prompts))))
    return timings


async def _stream(stub, model: str, prompt: Prompt, max_new_tokens: int, submitted: float) -> RequestTiming:
    request = generation_pb2.GenerateStreamRequest(
        model=model,
        prompt=prompt.text,
        parameters=generation_pb2.GenerationParameters(max_new_tokens=max_new_tokens, do_sample=False, ignore_eos=True),
    )
    timing = RequestTiming(submitted)
    async for message in stub.GenerateStream(request, timeout=REQUEST_TIMEOUT_S):
        if message.token_ids:
            timing.add_tokens(len(message.token_ids), time.perf_counter())
    return timing
