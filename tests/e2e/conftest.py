"""The real stack for end-to-end tests, started the way the README starts it.

`pipeserve serve-all` runs as a subprocess (embedded Redis unless REDIS_URL is
set; the session's `redis_url` fixture decides) and writes a ready file once
the gateway, the tokenizer service and the model worker are all up.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import redis
from polling import consecutive_free_ports

from pipeserve.cli.stack import free_port
from pipeserve.local_models import TINY_LLAMA, build_models
from pipeserve.queue.keys import Keys
from pipeserve.v1 import generation_pb2, generation_pb2_grpc, models_pb2_grpc

STARTUP_TIMEOUT_S = 120
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items):
    for item in items:
        if HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.e2e)


@dataclass
class RunningStack:
    gateway: str
    redis_url: str
    keys: Keys
    process: subprocess.Popen
    log_path: Path
    metrics: dict[str, str] = field(default_factory=dict)
    """Child name (gateway, tokenizer, model-worker-1, ...) -> its /metrics address; empty when off."""
    worker_health: dict[str, str] = field(default_factory=dict)
    """model-worker-N -> its grpc.health.v1 address."""

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.gateway)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def one_model_stack(name: str, redis_url: str, tmp_path_factory) -> Iterator[tuple[RunningStack, Path]]:
    """A stack serving one locally built model alone, and that model's directory (for the reference)."""
    models_file = build_models(tmp_path_factory.mktemp(f"{name}-models"), [name], progress=lambda _msg: None)
    running = start_stack(models_file, redis_url, tmp_path_factory.mktemp(f"{name}-stack"))
    yield running, models_file.parent / name
    assert stop_stack(running.process) == 0, f"serve-all did not shut down cleanly:\n{running.logs()}"


def start_stack(
    models_file: Path,
    redis_url: str,
    workdir: Path,
    *,
    workers: int = 1,
    tokenizers: int = 1,
    env: dict | None = None,
    metrics: bool = False,
):
    """``metrics``: every process serves Prometheus metrics, on consecutive free ports (RunningStack.metrics)."""
    prefix = f"pipeserve-e2e-{uuid.uuid4().hex[:8]}"
    ready_file = workdir / "ready.json"
    log_path = workdir / "stack.log"
    gateway = f"127.0.0.1:{free_port()}"
    command = [
        str(Path(sys.executable).with_name("pipeserve")), "serve-all",
        "--models-file", str(models_file),
        "--gateway-listen", gateway,
        "--tokenizer-listen", f"127.0.0.1:{free_port()}",
        "--model-workers", str(workers),
        "--tokenizers", str(tokenizers),
        "--redis-url", redis_url,
        "--ready-file", str(ready_file),
    ]  # fmt: skip
    if metrics:
        command += ["--metrics-port-base", str(consecutive_free_ports(2 + workers))]
    child_env = {**os.environ, "PIPESERVE_KEY_PREFIX": prefix, **(env or {})}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=child_env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not ready_file.exists():
        if process.poll() is not None:
            raise RuntimeError(f"serve-all exited with {process.returncode}:\n{log_path.read_text()}")
        if time.monotonic() > deadline:
            stop_stack(process)
            raise RuntimeError(f"serve-all not ready after {STARTUP_TIMEOUT_S}s:\n{log_path.read_text()}")
        time.sleep(0.1)
    info = json.loads(ready_file.read_text())
    return RunningStack(
        info["gateway"], redis_url, Keys(prefix), process, log_path, info["metrics"], info["worker_health"]
    )


def stop_stack(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


@pytest.fixture(scope="session")
def stack(models_file, redis_url, tmp_path_factory) -> Iterator[RunningStack]:
    """gateway + tokenizer service + one model worker serving tiny-llama, every one serving metrics."""
    running = start_stack(models_file, redis_url, tmp_path_factory.mktemp("stack"), metrics=True)
    yield running
    assert stop_stack(running.process) == 0, f"serve-all did not shut down cleanly:\n{running.logs()}"


@pytest.fixture(scope="session")
def generation(stack) -> Iterator[generation_pb2_grpc.GenerationServiceStub]:
    with stack.channel() as channel:
        yield generation_pb2_grpc.GenerationServiceStub(channel)


@pytest.fixture(scope="session")
def models_api(stack) -> Iterator[models_pb2_grpc.ModelsServiceStub]:
    with stack.channel() as channel:
        yield models_pb2_grpc.ModelsServiceStub(channel)


@pytest.fixture(scope="session")
def reference(tiny_llama_dir):
    """The same model in-process: what pipeserve's output must equal."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    return model, tokenizer


def greedy_reference(reference, prompt_ids: list[int], max_new_tokens: int, ignore_eos: bool = True) -> list[int]:
    import torch

    model, tokenizer = reference
    with torch.inference_mode():
        output = model.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=None if ignore_eos else model.generation_config.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    return output[0, len(prompt_ids) :].tolist()


def stream_request(model: str = TINY_LLAMA, prompt: str = "def main():", **parameters):
    return generation_pb2.GenerateStreamRequest(
        model=model, prompt=prompt, parameters=generation_pb2.GenerationParameters(**parameters)
    )


def unary_request(model: str = TINY_LLAMA, prompt: str = "def main():", **parameters):
    return generation_pb2.GenerateRequest(
        model=model, prompt=prompt, parameters=generation_pb2.GenerationParameters(**parameters)
    )
