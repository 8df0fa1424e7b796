"""Server assembly: health, reflection, draining, and the `python -m gateway` process."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys

import grpc
import pytest
from gateway_fakes import MODEL
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.__main__ import parse_args, settings_from_args
from gateway.config import GatewaySettings
from gateway.server import create_server
from pipeserve.v1 import generation_pb2, models_pb2, models_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_health_is_serving_for_every_service_after_start(gateway):
    health = health_pb2_grpc.HealthStub(gateway.channel)
    for service in ("", "pipeserve.v1.GenerationService", "pipeserve.v1.ModelsService"):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert response.status == SERVING, service


async def test_draining_turns_not_serving_and_lets_in_flight_calls_finish(gateway):
    gateway.tokenizer.stream_release = asyncio.Event()
    in_flight = gateway.generation.GenerateStream(
        generation_pb2.GenerateStreamRequest(model=MODEL, prompt="hi"), timeout=30
    )
    await asyncio.wait_for(gateway.tokenizer.stream_started.wait(), 5)
    watch = health_pb2_grpc.HealthStub(gateway.channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
    assert (await watch.read()).status == SERVING

    stopping = asyncio.create_task(gateway.gateway.stop(grace=10))
    assert (await watch.read()).status == NOT_SERVING
    watch.cancel()
    gateway.tokenizer.stream_release.set()

    assert "".join([message.text async for message in in_flight]) == "Hello!"
    await asyncio.wait_for(stopping, 5)


async def test_reflection_lists_the_public_services(gateway):
    stub = reflection_pb2_grpc.ServerReflectionStub(gateway.channel)
    call = stub.ServerReflectionInfo(timeout=5)
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    response = await call.read()
    await call.done_writing()
    names = {service.name for service in response.list_services_response.service}
    assert {"pipeserve.v1.GenerationService", "pipeserve.v1.ModelsService", "grpc.health.v1.Health"} <= names


async def test_create_server_binds_an_ephemeral_port(served_models_file, fake_tokenizer, redis_url, keys):
    _servicer, target = fake_tokenizer
    settings = GatewaySettings(
        models_file=served_models_file, tokenizer_target=target, redis_url=redis_url, key_prefix=keys.prefix
    )
    server, port = create_server(settings, "127.0.0.1:0")
    assert port > 0
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            response = await models_pb2_grpc.ModelsServiceStub(channel).ListModels(
                models_pb2.ListModelsRequest(), timeout=5
            )
        assert MODEL in [model.name for model in response.models]
    finally:
        await server.stop(None)


def test_flags_override_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PIPESERVE_GATEWAY_LISTEN", "0.0.0.0:1111")
    monkeypatch.setenv("PIPESERVE_TOKENIZER_TARGET", "env-tokenizer:50052")
    monkeypatch.setenv("PIPESERVE_MAX_QUEUE_DEPTH", "7")
    args = parse_args(["--listen", "127.0.0.1:2222", "--models-file", str(tmp_path / "m.yaml")])

    settings = settings_from_args(args)

    assert settings.listen == "127.0.0.1:2222"
    assert settings.models_file == tmp_path / "m.yaml"
    assert settings.tokenizer_target == "env-tokenizer:50052"
    assert settings.max_queue_depth == 7


def test_settings_defaults(monkeypatch):
    for name in list(os.environ):
        if name.startswith("PIPESERVE_") or name == "REDIS_URL":
            monkeypatch.delenv(name)
    settings = GatewaySettings()
    assert settings.listen == "0.0.0.0:50051"
    assert settings.tokenizer_target == "127.0.0.1:50052"
    assert settings.max_queue_depth == 256
    assert settings.max_new_tokens_limit == 4096
    assert settings.request_timeout_s == 600
    assert settings.worker_liveness_s == 15
    assert settings.max_message_bytes == 4 * 1024 * 1024


def test_help_explains_the_flags(capsys):
    with pytest.raises(SystemExit) as exited:
        parse_args(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--listen", "--models-file", "--tokenizer-target", "PIPESERVE_TOKENIZER_TARGET"):
        assert flag in text


async def test_the_process_serves_and_drains_on_sigterm(served_models_file, fake_tokenizer, redis_url, keys):
    _servicer, target = fake_tokenizer
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--models-file",
        str(served_models_file),
        "--tokenizer-target",
        target,
        env={**os.environ, "REDIS_URL": redis_url, "PIPESERVE_KEY_PREFIX": keys.prefix},
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        port = None
        while port is None:
            line = (await asyncio.wait_for(process.stderr.readline(), 20)).decode()
            assert line, "the gateway exited before serving"
            if match := re.search(r"gateway serving on 127\.0\.0\.1:(\d+)", line):
                port = int(match.group(1))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert response.status == SERVING

        process.send_signal(signal.SIGTERM)
        rest = (await asyncio.wait_for(process.stderr.read(), 20)).decode()
        assert await process.wait() == 0
        assert "gateway stopped" in rest
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_the_process_explains_a_missing_models_file(tmp_path):
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "--models-file",
        str(tmp_path / "missing.yaml"),
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 1
    assert "missing.yaml" in err.decode() and "--models-file" in err.decode()
