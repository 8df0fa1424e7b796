"""Generation engines behind one interface (``interface.GenerationEngine``), chosen by name in the settings."""

from __future__ import annotations

from typing import Literal

from model_service.engine.continuous import ContinuousBatcher
from model_service.engine.interface import GenerationEngine

EngineKind = Literal["padded-kv"]


def create_engine(
    kind: EngineKind, model, *, max_batch_size: int, prefill_tokens_per_step: int, vocab_size: int, device
) -> GenerationEngine:
    """The engine an operator chose (PIPESERVE_ENGINE) around a loaded model."""
    if kind == "padded-kv":
        return ContinuousBatcher(
            model,
            max_batch_size=max_batch_size,
            prefill_tokens_per_step=prefill_tokens_per_step,
            vocab_size=vocab_size,
            device=device,
        )
    raise ValueError(f"unknown engine {kind!r}; choose one of: padded-kv")
