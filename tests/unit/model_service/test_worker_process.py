"""``python -m model_service`` as a process: it becomes ready by heartbeating, serves, and exits 0 on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import redis

from model_service.__main__ import parse_args
from pipeserve.internal.v1 import queue_pb2
from pipeserve.local_models import TINY_LLAMA
from pipeserve.queue.keys import Keys
from pipeserve.queue.protocol import PAYLOAD_FIELD, decode_reply_chunk, encode

STARTUP_TIMEOUT_S = 60


def test_the_process_heartbeats_serves_and_exits_cleanly_on_sigterm(models_file, redis_url, key_prefix, tmp_path):
    client = redis.Redis.from_url(redis_url)
    keys = Keys(key_prefix)
    log_path = tmp_path / "worker.log"
    env = {**os.environ, "PIPESERVE_KEY_PREFIX": key_prefix, "PIPESERVE_WORKER_ID": "process-test"}
    command = [sys.executable, "-m", "model_service", "--models-file", str(models_file), "--redis-url", redis_url]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while client.zscore(keys.workers(TINY_LLAMA), "process-test") is None:
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, f"no heartbeat:\n{log_path.read_text()}"
            time.sleep(0.05)
        item = queue_pb2.WorkItem(
            request_id="process-request",
            model=TINY_LLAMA,
            prompt_token_ids=[5, 6, 7],
            sampling=queue_pb2.SamplingParams(
                max_new_tokens=3, top_p=1.0, temperature=1.0, repetition_penalty=1.0, num_return_sequences=1
            ),
        )
        client.xadd(keys.request_stream(TINY_LLAMA), {PAYLOAD_FIELD: encode(item)})
        reply = keys.reply_stream("process-request")
        while not (chunks := [decode_reply_chunk(f[PAYLOAD_FIELD]) for _, f in client.xrange(reply)]) or not (
            chunks[-1].deltas and chunks[-1].deltas[-1].finish_reason
        ):
            assert not any(c.HasField("error") for c in chunks), chunks
            assert time.monotonic() < deadline, f"no reply:\n{log_path.read_text()}"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log_path.read_text()
        assert client.zscore(keys.workers(TINY_LLAMA), "process-test") is None
        assert "loaded model 'tiny-llama'" in log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        leftover = list(client.scan_iter(match=f"{key_prefix}:*"))
        if leftover:
            client.delete(*leftover)
        client.close()


def test_help_explains_the_flags_and_environment(capsys):
    with pytest.raises(SystemExit) as exited:
        parse_args(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for phrase in ("--models-file", "--models NAME,...", "PIPESERVE_MAX_BATCH_SIZE", "PIPESERVE_DRAIN_TIMEOUT_S"):
        assert phrase in text
    assert "readiness signal" in text
