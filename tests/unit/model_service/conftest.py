"""Model-worker fixtures: the tiny Llama, loaded once through the worker's own loading path."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import redis

from model_service.loader import LoadedModel, load_model
from pipeserve.config import ModelSpec
from pipeserve.local_models import TINY_LLAMA

PROMPT_LENGTHS = [300, 1, 3, 17, 45, 8, 120, 64]
"""The engine tests' prompts: one past a prefill chunk, single tokens, and lengths between."""


@pytest.fixture(scope="session")
def tiny_llama(tiny_llama_dir) -> LoadedModel:
    return load_model(ModelSpec(name=TINY_LLAMA, path=str(tiny_llama_dir)))


@pytest.fixture
def client(redis_url, key_prefix) -> Iterator[redis.Redis]:
    """A blocking Redis client, as the worker uses; the test's keys are deleted afterwards."""
    client = redis.Redis.from_url(redis_url)
    yield client
    keys = list(client.scan_iter(match=f"{key_prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="module")
def prompts(tiny_llama) -> list[list[int]]:
    """Seeded prompts of PROMPT_LENGTHS tokens for the tiny Llama."""
    rng = random.Random(0)
    return [[rng.randrange(3, tiny_llama.input_vocab_size) for _ in range(n)] for n in PROMPT_LENGTHS]
