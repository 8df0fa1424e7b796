"""In-process gateway against a fake tokenizer service (a real grpc.aio server) and the real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import yaml
from gateway_fakes import MODEL, OTHER_MODEL, FakeTokenizer, RunningGateway, heartbeat

from gateway.config import GatewaySettings
from gateway.server import build_gateway
from pipeserve.internal.v1 import tokenizer_pb2_grpc


@pytest.fixture
async def fake_tokenizer() -> AsyncIterator[tuple[FakeTokenizer, str]]:
    servicer = FakeTokenizer()
    server = grpc.aio.server()
    tokenizer_pb2_grpc.add_TokenizerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(None)


@pytest.fixture
def served_models_file(tmp_path: Path) -> Path:
    """A models file naming two models; the gateway only reads names and tasks, so no weights are needed."""
    path = tmp_path / "models.yaml"
    models = [
        {"name": MODEL, "path": "tiny-llama", "task": "text-generation"},
        {"name": OTHER_MODEL, "path": "tiny-classifier", "task": "text-classification"},
    ]
    path.write_text(yaml.safe_dump({"models": models}))
    return path


@pytest.fixture
async def start_gateway(fake_tokenizer, redis_url, keys, served_models_file):
    """Start a gateway with settings overrides; the default one has a live worker to feed."""
    servicer, target = fake_tokenizer
    running: list[RunningGateway] = []

    async def start(**overrides) -> RunningGateway:
        values = {
            "redis_url": redis_url,
            "key_prefix": keys.prefix,
            "models_file": served_models_file,
            "tokenizer_target": target,
            **overrides,
        }
        settings = GatewaySettings(**values)
        gateway = build_gateway(settings, "127.0.0.1:0")
        await gateway.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
        running.append(RunningGateway(gateway, channel, settings, servicer))
        return running[-1]

    yield start
    for item in running:
        await item.channel.close()
        await item.gateway.stop(None)


@pytest.fixture
async def gateway(start_gateway, redis, keys) -> RunningGateway:
    await heartbeat(redis, keys)
    return await start_gateway()
