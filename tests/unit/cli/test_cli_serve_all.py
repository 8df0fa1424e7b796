"""`pipeserve serve-all` as a user runs it (a real subprocess), with fake services behind it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import processes_with_env, tell_fake_to_exit

from pipeserve.cli.stack import free_port

FAKE_CLI = Path(__file__).resolve().with_name("fake_cli.py")


@pytest.fixture
def serve_all(tmp_path):
    """Starts `pipeserve serve-all` (fake services); whatever a test leaves running is stopped after it."""
    started: list[subprocess.Popen] = []

    def start(models_file: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
        process = start_serve_all(tmp_path, models_file, *extra, env=env)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def start_serve_all(tmp_path: Path, models_file: Path, *extra: str, env: dict | None) -> subprocess.Popen:
    command = [
        sys.executable, str(FAKE_CLI), "serve-all",
        "--models-file", str(models_file),
        "--gateway-listen", f"127.0.0.1:{free_port()}",
        "--tokenizer-listen", f"127.0.0.1:{free_port()}",
        "--stop-timeout", "3",
        *extra,
    ]  # fmt: skip
    child_env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "PIPESERVE_REDIS_URL")}
    child_env.update(env or {})
    with open(tmp_path / "stderr", "w") as stderr:
        return subprocess.Popen(command, env=child_env, stdout=subprocess.PIPE, stderr=stderr, text=True)


def leftovers(record_dir: Path) -> list[int]:
    """Live processes serve-all started, however deep (they inherit FAKE_DIR).

    valkey-server is not among them: it rewrites its process title over its
    environment; its port tells whether it is gone.
    """
    return processes_with_env("FAKE_DIR", str(record_dir))


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_ready_line_ready_file_and_clean_stop(serve_all, fake_services, fake_models_file, tmp_path, stop_signal):
    ready_file = tmp_path / "ready.json"
    process = serve_all(fake_models_file, "--ready-file", str(ready_file))
    line = process.stdout.readline()
    match = re.fullmatch(
        r"pipeserve ready: gateway on (127\.0\.0\.1:\d+) "
        r"\(models: tiny; redis: (redis://127\.0\.0\.1:\d+/0) \(embedded\)\)\n",
        line,
    )
    assert match, line + (tmp_path / "stderr").read_text()
    info = json.loads(ready_file.read_text())
    worker_health = info.pop("worker_health")
    assert info == {"gateway": match[1], "redis_url": match[2], "models": ["tiny"], "metrics": {}}
    assert list(worker_health) == ["model-worker-1"] and worker_health["model-worker-1"].startswith("127.0.0.1:")
    assert len(leftovers(fake_services)) == 5, "serve-all, the embedded Redis wrapper and three services"

    process.send_signal(stop_signal)
    assert process.wait(timeout=30) == 0, (tmp_path / "stderr").read_text()
    assert not ready_file.exists()
    assert not leftovers(fake_services)
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", int(match[2].rsplit(":", 1)[1].split("/")[0]))) != 0, "valkey-server left"
    assert "pipeserve: stopped" in (tmp_path / "stderr").read_text()


def test_a_dead_service_stops_the_stack_with_its_name_and_code(serve_all, fake_services, fake_models_file, tmp_path):
    process = serve_all(fake_models_file)
    assert process.stdout.readline().startswith("pipeserve ready:")
    tell_fake_to_exit(fake_services, "gateway", 7)
    assert process.wait(timeout=30) == 1
    assert "error: gateway exited unexpectedly (exit code 7)" in (tmp_path / "stderr").read_text()
    assert not leftovers(fake_services)


def test_readiness_timeout_exits_1_and_leaves_nothing(serve_all, fake_services, fake_models_file, tmp_path):
    process = serve_all(fake_models_file, "--ready-timeout", "1.5", env={"FAKE_NEVER_READY": "tokenizer"})
    assert process.wait(timeout=30) == 1
    stderr = (tmp_path / "stderr").read_text()
    assert "error: not ready after 1.5s; still waiting for: tokenizer serving" in stderr
    assert not leftovers(fake_services)


def test_missing_models_file_is_explained(serve_all, tmp_path):
    process = serve_all(tmp_path / "missing.yaml")
    assert process.wait(timeout=30) == 1
    stderr = (tmp_path / "stderr").read_text()
    assert "does not exist; build the local models with `pipeserve build-models" in stderr
    assert "Traceback" not in stderr
