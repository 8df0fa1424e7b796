"""The stack with fake services: embedded Redis, environment wiring, readiness, failures, shutdown."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest
import redis
from cli_support import is_running, tell_fake_to_exit, wait_until
from polling import consecutive_free_ports

import pipeserve.cli.stack
from pipeserve.cli.stack import Stack, StackError, connect_address, free_port, redact
from pipeserve.cli.supervisor import ChildExited, ReadinessTimeout


def make_stack(models_file: Path, **options) -> Stack:
    options = {
        "gateway_listen": f"127.0.0.1:{free_port()}",
        "tokenizer_listen": f"127.0.0.1:{free_port()}",
        "key_prefix": "pipeserve-cli-test",
        "ready_timeout_s": 20,
        "stop_timeout_s": 3,
        **options,
    }
    return Stack(models_file, **options)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def recorded_envs(record_dir: Path) -> dict[str, dict]:
    return {path.stem.rsplit("-", 1)[0]: json.loads(path.read_text()) for path in record_dir.glob("*-*.json")}


def test_embedded_stack_starts_wires_and_stops_without_leftovers(fake_services, fake_models_file):
    tokenizer_port = free_port()
    stack = make_stack(fake_models_file, model_workers=2, tokenizer_listen=f"0.0.0.0:{tokenizer_port}")
    with stack:
        assert stack.embedded_redis
        assert redis.Redis.from_url(stack.redis_url).ping()
        assert set(stack.pids) == {"redis", "tokenizer", "model-worker-1", "model-worker-2", "gateway"}
        assert list(stack.models) == ["tiny"]
        pids = dict(stack.pids)
        env = recorded_envs(fake_services)["gateway"]
        assert env["REDIS_URL"] == stack.redis_url
        assert env["PIPESERVE_TOKENIZER_TARGET"] == f"127.0.0.1:{tokenizer_port}"
        assert env["PIPESERVE_GATEWAY_LISTEN"] == stack.gateway_listen == stack.gateway_address
        assert env["PIPESERVE_MODELS_FILE"] == str(fake_models_file.resolve())
        assert env["PIPESERVE_KEY_PREFIX"] == "pipeserve-cli-test"
        assert env["PIPESERVE_SHUTDOWN_GRACE_S"] == env["PIPESERVE_DRAIN_TIMEOUT_S"] == "2", "not inside stop_timeout_s"
    assert not any(is_running(pid) for pid in pids.values())
    assert port_is_free(port_of(stack.redis_url)), "the embedded valkey-server outlived the stack"
    assert fake_services.joinpath("stopped").read_text().split() == [
        "gateway",
        "model-worker",
        "model-worker",
        "tokenizer",
    ]


def test_a_service_that_dies_is_named_and_everything_else_stops(fake_services, fake_models_file):
    stack = make_stack(fake_models_file)
    with stack:
        tell_fake_to_exit(fake_services, "gateway", 3)
        with pytest.raises(ChildExited, match=r"gateway exited unexpectedly \(exit code 3\)"):
            stack.wait()
        pids = dict(stack.pids)
    assert not any(is_running(pid) for pid in pids.values())


def test_a_model_worker_that_dies_is_started_again_while_the_stack_serves(fake_services, fake_models_file):
    with make_stack(fake_models_file) as stack:
        first = stack.pids["model-worker-1"]

        def kill_a_worker_then_the_gateway():
            tell_fake_to_exit(fake_services, "model-worker", 3)
            wait_until(lambda: stack.pids["model-worker-1"] != first, what="a new model worker")
            wait_until(lambda: len(list(fake_services.glob("model-worker-*.json"))) == 2, what="it to start")
            tell_fake_to_exit(fake_services, "gateway", 0)

        # The stack waits on this (its main) thread, so that restarted children live as long as it does.
        steering = threading.Thread(target=kill_a_worker_then_the_gateway)
        steering.start()
        with pytest.raises(ChildExited, match="gateway exited"):
            stack.wait()
        steering.join()
        assert is_running(stack.pids["model-worker-1"]) and not is_running(first)


def test_several_tokenizers_are_started_and_all_given_to_the_gateway(fake_services, fake_models_file):
    port = free_port()
    with make_stack(fake_models_file, tokenizers=3, tokenizer_listen=f"127.0.0.1:{port}") as stack:
        assert {"tokenizer", "tokenizer-2", "tokenizer-3"} <= set(stack.pids)
        envs = [json.loads(path.read_text()) for path in fake_services.glob("tokenizer-*.json")]
        listens = sorted(env["PIPESERVE_TOKENIZER_LISTEN"] for env in envs)
        assert len(set(listens)) == 3 and f"127.0.0.1:{port}" in listens
        target = recorded_envs(fake_services)["gateway"]["PIPESERVE_TOKENIZER_TARGET"]
        assert target.startswith("ipv4:") and sorted(target.removeprefix("ipv4:").split(",")) == listens


def test_several_tokenizers_need_an_ip_address(fake_models_file):
    with pytest.raises(StackError, match="several tokenizers need an IP address"):
        make_stack(fake_models_file, tokenizers=2, tokenizer_listen=f"localhost:{free_port()}").start()


def test_a_service_dying_during_startup_stops_the_stack(fake_services, fake_models_file):
    tell_fake_to_exit(fake_services, "tokenizer", 1)
    stack = make_stack(fake_models_file)
    with pytest.raises(ChildExited, match="tokenizer exited unexpectedly"):
        stack.start()
    assert stack.pids and not any(is_running(pid) for pid in stack.pids.values())


def test_readiness_timeout_stops_everything(fake_services, fake_models_file, monkeypatch):
    monkeypatch.setenv("FAKE_NEVER_READY", "gateway")
    stack = make_stack(fake_models_file, ready_timeout_s=2)
    with pytest.raises(ReadinessTimeout, match=r"still waiting for: .*gateway serving on 127\.0\.0\.1:\d+"):
        stack.start()
    assert not any(is_running(pid) for pid in stack.pids.values())
    assert port_is_free(port_of(stack.redis_url))


def test_a_service_ignoring_sigterm_is_killed_with_its_helpers(fake_services, fake_models_file, monkeypatch):
    monkeypatch.setenv("FAKE_IGNORE_SIGTERM", "gateway")
    stack = make_stack(fake_models_file, stop_timeout_s=0.5).start()
    grandchild = int(fake_services.joinpath("grandchild").read_text())
    results = {result.name: result for result in stack.stop()}
    assert results["gateway"].killed and results["tokenizer"].clean
    assert not is_running(grandchild)


def test_an_external_redis_is_used_and_left_running(fake_services, fake_models_file, redis_url):
    extra = {"FAKE_EXTRA": "passed", "PIPESERVE_SHUTDOWN_GRACE_S": "1"}
    stack = make_stack(fake_models_file, redis_url=redis_url, env=extra)
    with stack:
        assert not stack.embedded_redis and "redis" not in stack.pids
        env = recorded_envs(fake_services)["tokenizer"]
        assert env["FAKE_EXTRA"] == "passed" and env["PIPESERVE_SHUTDOWN_GRACE_S"] == "1"
    assert redis.Redis.from_url(redis_url).ping()


def test_workers_zero_waits_for_no_heartbeat(fake_services, fake_models_file):
    with make_stack(fake_models_file, model_workers=0) as stack:
        assert "model-worker-1" not in stack.pids


def test_unreachable_redis_is_an_actionable_error(fake_services, fake_models_file, monkeypatch):
    monkeypatch.setattr(pipeserve.cli.stack, "REDIS_READY_TIMEOUT_S", 0.5)
    stack = make_stack(fake_models_file, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(StackError, match="cannot reach Redis .* use an embedded server"):
        stack.start()
    assert not stack.pids


def test_missing_models_file_says_how_to_build_one(tmp_path):
    with pytest.raises(StackError, match="pipeserve build-models"):
        make_stack(tmp_path / "nope.yaml").start()


def test_invalid_models_file_is_reported(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text("models: []\n")
    with pytest.raises(StackError, match="is not valid"):
        make_stack(path).start()


def test_a_busy_port_is_reported_before_anything_starts(fake_models_file):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        stack = make_stack(fake_models_file, gateway_listen=address)
        with pytest.raises(StackError, match=f"cannot listen on {address} for the gateway.*--gateway-listen"):
            stack.start()
    assert not stack.pids


@pytest.mark.parametrize(
    ("listen", "expected"),
    [("0.0.0.0:50051", "127.0.0.1:50051"), ("[::]:7", "[::1]:7"), ("10.0.0.2:80", "10.0.0.2:80")],
)
def test_connect_address(listen, expected):
    assert connect_address(listen) == expected


def test_a_bad_address_is_explained():
    with pytest.raises(StackError, match="not a host:port address"):
        connect_address("localhost")


def test_redact_hides_passwords():
    assert redact("redis://user:secret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_heartbeats_awaited_for_the_models_workers_serve():
    from pipeserve.cli.stack import models_served_by_workers
    from pipeserve.config import ModelSpec

    models = {
        "llama": ModelSpec(name="llama", path="llama"),
        "bert": ModelSpec(name="bert", path="bert", task="text-classification"),
        "speech": ModelSpec(name="speech", path="speech", task="text-to-audio"),
        "other": ModelSpec(name="other", path="other"),
    }
    assert models_served_by_workers(models, None) == ["llama", "bert", "other"]
    assert models_served_by_workers(models, " other , llama") == ["other", "llama"]


def child_envs(record_dir: Path) -> dict[str, list[dict]]:
    """The recorded environments by role; model workers start together, so theirs come in no set order."""
    return {
        role: [json.loads(path.read_text()) for path in record_dir.glob(f"{role}-*.json")]
        for role in ("gateway", "tokenizer", "model-worker")
    }


def test_metrics_ports_are_off_unless_a_base_is_given_and_workers_get_their_own_health_port(
    fake_services, fake_models_file
):
    stack = make_stack(fake_models_file, model_workers=2, env={"PIPESERVE_METRICS_PORT": "9090"})
    with stack:
        envs = child_envs(fake_services)
        ports = [env["PIPESERVE_METRICS_PORT"] for role_envs in envs.values() for env in role_envs]
        assert ports == ["0"] * 4, "one port for every child could only collide"
        health = {env["PIPESERVE_WORKER_HEALTH_LISTEN"] for env in envs["model-worker"]}
        assert set(stack.worker_health_addresses) == {"model-worker-1", "model-worker-2"}
        assert set(stack.worker_health_addresses.values()) == health and len(health) == 2
        assert stack.metrics_addresses == {}


def test_a_metrics_port_base_gives_each_child_the_next_port(fake_services, fake_models_file):
    base = consecutive_free_ports(4)
    with make_stack(fake_models_file, model_workers=2, metrics_port_base=base) as stack:
        envs = child_envs(fake_services)
        ports = {
            role: sorted(int(env["PIPESERVE_METRICS_PORT"]) for env in role_envs) for role, role_envs in envs.items()
        }
        assert ports == {"gateway": [base], "tokenizer": [base + 1], "model-worker": [base + 2, base + 3]}
        assert stack.metrics_addresses == {
            "gateway": f"127.0.0.1:{base}",
            "tokenizer": f"127.0.0.1:{base + 1}",
            "model-worker-1": f"127.0.0.1:{base + 2}",
            "model-worker-2": f"127.0.0.1:{base + 3}",
        }


def test_a_taken_metrics_port_is_reported_before_anything_starts(fake_services, fake_models_file):
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        stack = make_stack(fake_models_file, metrics_port_base=port - 1)
        with pytest.raises(StackError, match=f"metrics port {port} for the tokenizer is taken.*--metrics-port-base"):
            stack.start()
    assert not stack.pids
