"""Sampling options at the float32 limits (found by the gateway fuzzing) draw a token instead of failing on NaN.

That ordinary values are untouched is test_engine_sampling's equality with transformers."""

from __future__ import annotations

import pytest
import torch

from model_service.engine.interface import SamplingOptions
from model_service.engine.sampling import SamplingRows

VOCAB = 97


@pytest.mark.parametrize(
    "options",
    [
        SamplingOptions(max_new_tokens=2, do_sample=True, temperature=1e-45),
        SamplingOptions(max_new_tokens=2, do_sample=True, temperature=1e-38, top_p=1e-45),
        SamplingOptions(max_new_tokens=2, do_sample=True, repetition_penalty=1e-45),
        SamplingOptions(max_new_tokens=2, do_sample=True, repetition_penalty=3.4e38, top_k=2**31 - 1),
    ],
    ids=["temperature-1e-45", "temperature-1e-38-top-p-1e-45", "penalty-1e-45", "penalty-3.4e38-top-k-max"],
)
def test_extreme_options_still_draw_a_token(options):
    """The tokenizer service turns such temperatures into greedy decoding; the engine must not fail on them anyway."""
    logits = torch.randn(1, VOCAB, generator=torch.Generator().manual_seed(0)) * 4
    rows = SamplingRows.for_request(options, [5, 6], rows=1, vocab_size=VOCAB, device="cpu")
    assert 0 <= rows.choose(logits).item() < VOCAB
