"""Generation engines behind one interface (``interface.GenerationEngine``), chosen by name in the settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from model_service.engine.continuous import ContinuousBatcher
from model_service.engine.encoder_decoder import EncoderDecoderBatcher
from model_service.engine.interface import GenerationEngine
from model_service.engine.kv_batch import kv_bytes_per_token
from model_service.engine.transformers_cb import TransformersCBEngine

EngineKind = Literal["padded-kv", "transformers-cb"]


@dataclass(frozen=True)
class EngineSettings:
    """What an engine is built with; WorkerSettings.engine_settings() fills it from PIPESERVE_* (defaults there)."""

    kind: EngineKind
    max_batch_size: int
    prefill_tokens_per_step: int
    prefill_chunk_tokens: int
    kv_cache_budget_mb: float
    """0: no budget."""
    torch_threads: int
    """0: torch's default (one per core)."""
    cb_num_blocks: int
    cb_page_size: int
    cb_max_batch_tokens: int


def create_engine(settings: EngineSettings, model, *, vocab_size: int, device) -> GenerationEngine:
    """The engine an operator chose (PIPESERVE_ENGINE) around a loaded model (encoder-decoder models: their own).

    Also applies PIPESERVE_TORCH_THREADS: torch's thread pool is the
    process's, and the engine is what uses it.
    """
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    if getattr(model.config, "is_encoder_decoder", False):
        # Both engines below are decoder-only: an encoder-decoder model always gets the cohort engine.
        return EncoderDecoderBatcher(
            model, max_batch_size=settings.max_batch_size, vocab_size=vocab_size, device=device
        )
    if settings.kind == "padded-kv":
        budget = None
        if settings.kv_cache_budget_mb:
            budget = int(settings.kv_cache_budget_mb * 2**20) // kv_bytes_per_token(model)
        return ContinuousBatcher(
            model,
            max_batch_size=settings.max_batch_size,
            prefill_tokens_per_step=settings.prefill_tokens_per_step,
            prefill_chunk_tokens=settings.prefill_chunk_tokens,
            kv_budget_tokens=budget,
            vocab_size=vocab_size,
            device=device,
        )
    if settings.kind == "transformers-cb":
        return TransformersCBEngine(
            model,
            max_batch_size=settings.max_batch_size,
            num_blocks=settings.cb_num_blocks,
            page_size=settings.cb_page_size,
            max_batch_tokens=settings.cb_max_batch_tokens,
        )
    raise ValueError(f"unknown engine {settings.kind!r}; choose one of: padded-kv, transformers-cb")
