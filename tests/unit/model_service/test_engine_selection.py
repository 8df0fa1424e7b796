"""PIPESERVE_* settings choose and configure the engine a worker builds."""

from __future__ import annotations

import pytest
import torch

from model_service.config import WorkerSettings
from model_service.engine import create_engine
from model_service.engine.continuous import ContinuousBatcher
from model_service.engine.interface import GenerationRequest, SamplingOptions
from model_service.engine.kv_batch import kv_bytes_per_token
from model_service.engine.transformers_cb import TransformersCBEngine
from pipeserve.errors import InvalidArgument


def build(loaded):
    return create_engine(
        WorkerSettings().engine_settings(), loaded.model, vocab_size=loaded.output_vocab_size, device=loaded.device
    )


def test_the_kv_budget_is_read_in_mib_and_counted_in_the_model_s_tokens(monkeypatch, tiny_llama):
    # 4 layers x 2 KV heads x 64 dims x (key + value) x 4 bytes.
    assert kv_bytes_per_token(tiny_llama.model) == 4096
    monkeypatch.setenv("PIPESERVE_KV_CACHE_BUDGET_MB", "1")
    monkeypatch.setenv("PIPESERVE_PREFILL_CHUNK_TOKENS", "128")
    engine = build(tiny_llama)
    assert isinstance(engine, ContinuousBatcher)
    engine.add(GenerationRequest("fits", [5] * 200, SamplingOptions(max_new_tokens=56)))
    with pytest.raises(InvalidArgument, match="256 tokens"):
        engine.add(GenerationRequest("too-big", [5] * 200, SamplingOptions(max_new_tokens=57)))


def test_transformers_cb_is_selected_by_name(monkeypatch, tiny_llama):
    monkeypatch.setenv("PIPESERVE_ENGINE", "transformers-cb")
    monkeypatch.setenv("PIPESERVE_CB_NUM_BLOCKS", "16")
    engine = build(tiny_llama)
    try:
        assert isinstance(engine, TransformersCBEngine)
    finally:
        engine.close()


def test_torch_threads_setting_sets_the_process_pool(monkeypatch, tiny_llama):
    threads = torch.get_num_threads()
    monkeypatch.setenv("PIPESERVE_TORCH_THREADS", "1")
    try:
        build(tiny_llama)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
