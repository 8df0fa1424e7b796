"""Model-worker fixtures: the tiny Llama, loaded once through the worker's own loading path."""

from __future__ import annotations

import pytest

from model_service.loader import LoadedModel, load_model
from pipeserve.config import ModelSpec
from pipeserve.local_models import TINY_LLAMA


@pytest.fixture(scope="session")
def tiny_llama(tiny_llama_dir) -> LoadedModel:
    return load_model(ModelSpec(name=TINY_LLAMA, path=str(tiny_llama_dir)))
