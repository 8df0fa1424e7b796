"""Settings for a model worker under test."""

from __future__ import annotations

import uuid

from model_service.config import WorkerSettings


def worker_settings(redis_url: str, key_prefix: str, models_file, *, role: str = "test", **overrides) -> WorkerSettings:
    """Its own worker id and key prefix; chunks flushed every 4 tokens and never on a timer, so tests see them."""
    return WorkerSettings(
        redis_url=redis_url,
        key_prefix=key_prefix,
        models_file=models_file,
        worker_id=f"{role}-worker-{uuid.uuid4().hex[:6]}",
        flush_tokens=4,
        flush_interval_ms=60_000,
        **overrides,
    )
