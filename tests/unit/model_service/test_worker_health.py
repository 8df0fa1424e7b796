"""The model worker's health server: NOT_SERVING until warmed up, SERVING after, NOT_SERVING from SIGTERM on."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from model_service.health import WorkerHealth
from pipeserve.internal.v1 import queue_pb2
from pipeserve.local_models import TINY_LLAMA
from pipeserve.queue.keys import Keys
from pipeserve.queue.protocol import PAYLOAD_FIELD, encode

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
STARTUP_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check(address: str, timeout_s: float = 5) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s).status


@pytest.fixture
def worker_health():
    health = WorkerHealth("127.0.0.1:0")
    health.start()
    yield health, f"127.0.0.1:{health.port}"
    health.stop()


def test_not_serving_until_told_then_serving_then_draining_for_good(worker_health):
    health, address = worker_health
    assert check(address) == NOT_SERVING
    health.serving()
    assert check(address) == SERVING
    health.draining()
    assert check(address) == NOT_SERVING
    health.serving()
    assert check(address) == NOT_SERVING, "a drain is never undone"


def test_answers_while_the_main_thread_is_busy(worker_health):
    health, address = worker_health
    health.serving()
    answers = []
    prober = threading.Thread(target=lambda: answers.append(check(address, timeout_s=2)))
    prober.start()
    busy_until = time.monotonic() + 1.0
    while time.monotonic() < busy_until:  # a CPU-bound step in pure Python, as the engine loop might run
        sum(range(1000))
    prober.join()
    assert answers == [SERVING]


def test_a_taken_port_is_an_error_naming_the_setting():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(OSError, match="PIPESERVE_WORKER_HEALTH_LISTEN"):
            WorkerHealth(f"127.0.0.1:{busy.getsockname()[1]}")


def test_the_process_reports_serving_once_warm_and_not_serving_while_draining(
    models_file, redis_url, key_prefix, tmp_path
):
    client = redis.Redis.from_url(redis_url)
    keys = Keys(key_prefix)
    health_address, metrics_port = f"127.0.0.1:{free_port()}", free_port()
    env = {
        **os.environ,
        "PIPESERVE_KEY_PREFIX": key_prefix,
        "PIPESERVE_WORKER_ID": "health-test",
        "PIPESERVE_WORKER_HEALTH_LISTEN": health_address,
        "PIPESERVE_METRICS_PORT": str(metrics_port),
        "PIPESERVE_DRAIN_TIMEOUT_S": "60",
    }
    log_path = tmp_path / "worker.log"
    command = [sys.executable, "-m", "model_service", "--models-file", str(models_file), "--redis-url", redis_url]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while client.zscore(keys.workers(TINY_LLAMA), "health-test") is None:
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        assert check(health_address) == SERVING

        # A long generation keeps the worker draining after SIGTERM.
        item = queue_pb2.WorkItem(
            request_id="long-request",
            model=TINY_LLAMA,
            prompt_token_ids=[5, 6, 7],
            sampling=queue_pb2.SamplingParams(
                max_new_tokens=300,
                ignore_eos=True,
                top_p=1.0,
                temperature=1.0,
                repetition_penalty=1.0,
                num_return_sequences=1,
            ),
        )
        client.xadd(keys.request_stream(TINY_LLAMA), {PAYLOAD_FIELD: encode(item)})
        while not client.exists(keys.reply_stream("long-request")):
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        statuses = set()
        while process.poll() is None and NOT_SERVING not in statuses:
            statuses.add(check(health_address))
        assert NOT_SERVING in statuses, "NOT_SERVING from SIGTERM on, while the request drains"
        assert process.poll() is None, "the request was still draining"

        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert 'pipeserve_batch_size{model="tiny-llama"}' in metrics
        assert process.wait(timeout=60) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        leftover = list(client.scan_iter(match=f"{key_prefix}:*"))
        if leftover:
            client.delete(*leftover)
        client.close()
