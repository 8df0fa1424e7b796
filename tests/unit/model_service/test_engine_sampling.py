"""Per-row sampling in one batch equals transformers' logits processors applied to each row alone."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from model_service.engine.interface import SamplingOptions
from model_service.engine.sampling import SamplingRows

VOCAB = 503

# One batch mixing every option, including the "disabled" values generate skips.
ROW_OPTIONS = [
    SamplingOptions(max_new_tokens=8),
    SamplingOptions(max_new_tokens=8, repetition_penalty=1.3),
    SamplingOptions(max_new_tokens=8, do_sample=True, temperature=0.7, top_k=50, top_p=0.9, seed=1),
    SamplingOptions(max_new_tokens=8, do_sample=True, temperature=1.0, top_k=0, top_p=1.0),
    SamplingOptions(max_new_tokens=8, do_sample=True, temperature=1.3, top_k=7, repetition_penalty=0.8),
    SamplingOptions(max_new_tokens=8, do_sample=True, top_p=0.35, repetition_penalty=1.15, seed=5),
    SamplingOptions(max_new_tokens=8, do_sample=True, top_k=1),
    SamplingOptions(max_new_tokens=8, do_sample=True, temperature=0.5, top_k=VOCAB + 10, top_p=0.999),
]


def transformers_processors(options: SamplingOptions) -> LogitsProcessorList:
    """What generate builds for these options, in its order."""
    processors = LogitsProcessorList()
    if options.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(options.repetition_penalty))
    if options.do_sample:
        if options.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(options.temperature))
        if options.top_k != 0:
            processors.append(TopKLogitsWarper(options.top_k))
        if options.top_p < 1.0:
            processors.append(TopPLogitsWarper(options.top_p))
    return processors


def batch_for(histories: list[list[int]]) -> SamplingRows:
    return SamplingRows.concat(
        [
            SamplingRows.for_request(options, history, rows=1, vocab_size=VOCAB, device="cpu")
            for options, history in zip(ROW_OPTIONS, histories)
        ]
    )


@pytest.mark.parametrize("seed", range(5))
def test_processed_logits_equal_transformers_row_by_row(seed):
    generator = torch.Generator().manual_seed(seed)
    histories = [torch.randint(0, VOCAB, (int(n),), generator=generator).tolist() for n in range(1, 9)]
    logits = torch.randn(len(ROW_OPTIONS), VOCAB, generator=generator) * 4
    processed = batch_for(histories).process(logits.clone())
    for row, (options, history) in enumerate(zip(ROW_OPTIONS, histories)):
        expected = transformers_processors(options)(torch.tensor([history]), logits[row : row + 1].clone())
        assert torch.equal(processed[row], expected[0]), f"row {row} ({options}) differs"


def test_generated_tokens_count_for_the_repetition_penalty():
    rows = SamplingRows.for_request(SamplingOptions(max_new_tokens=4, repetition_penalty=2.0), [3], 1, VOCAB, "cpu")
    logits = torch.zeros(1, VOCAB)
    logits[0, 10] = 4.0
    logits[0, 11] = 3.0
    assert rows.choose(logits).tolist() == [10]
    rows.record(torch.tensor([10]))
    assert rows.choose(logits).tolist() == [11], "token 10 was generated, so it is penalized now (4/2 < 3)"
    expected = RepetitionPenaltyLogitsProcessor(2.0)(torch.tensor([[3, 10]]), logits.clone())
    assert torch.equal(rows.process(logits), expected)


def test_greedy_rows_take_the_argmax_and_sampled_rows_follow_their_seed():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(len(ROW_OPTIONS), VOCAB, generator=generator)
    histories = [[1, 2, 3]] * len(ROW_OPTIONS)
    rows = batch_for(histories)
    tokens = rows.choose(logits.clone())
    processed = rows.process(logits.clone())
    assert tokens[0] == processed[0].argmax() and tokens[1] == processed[1].argmax()
    assert tokens[6] == processed[6].argmax(), "top_k=1 leaves one candidate"
    # A seeded row draws from its own generator: the same seed gives the same token whatever its neighbours.
    seeded = torch.multinomial(processed[2].softmax(-1)[None], 1, generator=torch.Generator().manual_seed(1))
    assert tokens[2] == seeded.item()


def test_a_request_s_rows_share_one_seeded_generator_and_are_reproducible():
    options = SamplingOptions(max_new_tokens=4, do_sample=True, temperature=1.5, seed=42)
    logits = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(3))

    def draw():
        alone = SamplingRows.for_request(options, [5], 3, VOCAB, "cpu")
        noise = SamplingRows.for_request(SamplingOptions(max_new_tokens=4, do_sample=True), [5], 2, VOCAB, "cpu")
        mixed = SamplingRows.concat([noise, alone])
        return mixed.choose(torch.cat([torch.randn(2, VOCAB), logits]))[2:].tolist()

    first = draw()
    assert draw() == first
    assert len(set(first)) > 1, "the three sequences are drawn independently, not copied"


def test_rows_can_be_selected_and_concatenated_keeping_their_options():
    histories = [[row] for row in range(len(ROW_OPTIONS))]
    rows = batch_for(histories)
    keep = [1, 4, 5]
    selected = rows.select(keep)
    logits = torch.randn(len(ROW_OPTIONS), VOCAB, generator=torch.Generator().manual_seed(9))
    assert torch.equal(selected.process(logits[keep].clone()), rows.process(logits.clone())[keep])
