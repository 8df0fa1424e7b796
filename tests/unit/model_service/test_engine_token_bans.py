"""no_repeat_ngram_size and min_new_tokens in the batch engines: per row exactly transformers' NoRepeatNGram and
MinNewTokensLength logits processors, so output equals model.generate with the same options."""

from __future__ import annotations

import random

import pytest
import torch
from test_engine_parity import engine_for, run_staggered
from transformers import (
    AutoModelForSeq2SeqLM,
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from model_service.engine.encoder_decoder import EncoderDecoderBatcher
from model_service.engine.interface import GenerationRequest, SamplingOptions
from model_service.engine.sampling import SamplingRows
from model_service.resume import PublishedReply, continuation_requests
from pipeserve.local_models import TINY_T5, build_tiny_t5

VOCAB = 61
EOS = frozenset({3, 7})
STEPS = 12

ROW_OPTIONS = [
    SamplingOptions(max_new_tokens=STEPS),
    SamplingOptions(max_new_tokens=STEPS, no_repeat_ngram_size=1),
    SamplingOptions(max_new_tokens=STEPS, no_repeat_ngram_size=2, eos_token_ids=EOS, min_new_tokens=4),
    SamplingOptions(max_new_tokens=STEPS, no_repeat_ngram_size=3, repetition_penalty=1.4),
    SamplingOptions(max_new_tokens=STEPS, eos_token_ids=EOS, min_new_tokens=STEPS),
    SamplingOptions(
        max_new_tokens=STEPS, do_sample=True, temperature=0.6, top_k=20, top_p=0.8, no_repeat_ngram_size=2, seed=3
    ),
    SamplingOptions(max_new_tokens=STEPS, do_sample=True, eos_token_ids=EOS, min_new_tokens=5, seed=4),
    SamplingOptions(max_new_tokens=STEPS, no_repeat_ngram_size=2**31 - 1, eos_token_ids=EOS, min_new_tokens=1),
]


def transformers_processors(options: SamplingOptions, prompt_length: int) -> LogitsProcessorList:
    """What generate builds for these options, in its order."""
    processors = LogitsProcessorList()
    if options.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(options.repetition_penalty))
    if options.no_repeat_ngram_size:
        processors.append(NoRepeatNGramLogitsProcessor(options.no_repeat_ngram_size))
    if options.min_new_tokens:
        processors.append(
            MinNewTokensLengthLogitsProcessor(prompt_length, options.min_new_tokens, sorted(options.eos_token_ids))
        )
    if options.do_sample:
        if options.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(options.temperature))
        if options.top_k:
            processors.append(TopKLogitsWarper(options.top_k))
        if options.top_p < 1.0:
            processors.append(TopPLogitsWarper(options.top_p))
    return processors


@pytest.mark.parametrize("seed", range(4))
def test_processed_logits_equal_transformers_row_by_row_step_after_step(seed):
    """Short vocabulary and repetitive histories, so that n-grams recur and bans actually bite."""
    rng = random.Random(seed)
    histories = [[rng.randrange(8) for _ in range(rng.randint(1, 9))] for _ in ROW_OPTIONS]
    rows = SamplingRows.concat(
        [SamplingRows.for_request(o, h, 1, VOCAB, "cpu") for o, h in zip(ROW_OPTIONS, histories)]
    )
    prompt_lengths = [len(h) for h in histories]
    generator = torch.Generator().manual_seed(seed)
    banned_any = False
    for _ in range(STEPS):
        logits = torch.randn(len(ROW_OPTIONS), VOCAB, generator=generator) * 3
        logits[:, :8] += 6  # the few tokens the histories hold are the likely ones
        processed = rows.process(logits.clone())
        for row, (options, history) in enumerate(zip(ROW_OPTIONS, histories)):
            processors = transformers_processors(options, prompt_lengths[row])
            expected = processors(torch.tensor([history]), logits[row : row + 1].clone())[0]
            assert torch.equal(processed[row], expected), f"row {row} ({options}) differs after {history}"
            banned_any |= bool(torch.isinf(expected).any()) and options.no_repeat_ngram_size > 0
        tokens = rows.choose(logits.clone())
        assert all(torch.isfinite(processed[row, token]) for row, token in enumerate(tokens.tolist()))
        rows.record(tokens)
        for history, token in zip(histories, tokens.tolist()):
            history.append(token)
    assert banned_any, "no n-gram ban happened: the test shows nothing"


def test_end_of_sequence_waits_for_min_new_tokens_in_the_batch(tiny_llama, prompts):
    prompt = prompts[2]
    free_run = run_staggered(engine_for(tiny_llama), [GenerationRequest("free", prompt, SamplingOptions(12))], [0])
    eos = free_run["free", 0][0]  # without the minimum, the very first token would end it
    options = SamplingOptions(12, eos_token_ids=frozenset({eos}), min_new_tokens=6)
    expected = generate(tiny_llama.model, prompt, 12, eos_token_id=[eos], min_new_tokens=6)
    got = run_staggered(engine_for(tiny_llama), [GenerationRequest("min", prompt, options)], [0])
    assert got["min", 0] == expected
    assert len(expected) >= 6 and eos not in expected[:6]


@pytest.mark.parametrize("size", [1, 2, 3])
def test_greedy_output_with_n_gram_bans_equals_generate_beside_other_requests(tiny_llama, prompts, size):
    options = SamplingOptions(24, no_repeat_ngram_size=size, min_new_tokens=4, eos_token_ids=frozenset({0, 2}))
    banned = [GenerationRequest(f"ngram{i}", prompts[i], options) for i in (1, 2, 3)]
    plain = [GenerationRequest(f"plain{i}", prompts[i], SamplingOptions(24)) for i in (4, 5)]
    got = run_staggered(engine_for(tiny_llama), [*banned, *plain], [0, 0, 2, 0, 3])
    for request in banned:
        prompt = list(request.prompt_token_ids)
        expected = generate(tiny_llama.model, prompt, 24, no_repeat_ngram_size=size, min_new_tokens=4)
        assert got[request.request_id, 0] == expected, request.request_id
    for request in plain:
        prompt = list(request.prompt_token_ids)
        assert got[request.request_id, 0] == generate(tiny_llama.model, prompt, 24, eos_token_id=None, pad_token_id=0)


def generate(model, prompt: list[int], max_new_tokens: int, **options) -> list[int]:
    with torch.inference_mode():
        output = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            **options,
        )
    return output[0, len(prompt) :].tolist()


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    return AutoModelForSeq2SeqLM.from_pretrained(build_tiny_t5(tmp_path_factory.mktemp("t5") / TINY_T5)).eval()


def test_the_encoder_decoder_engine_bans_as_generate_does_and_resumes_with_the_rest_of_the_minimum(t5):
    """The decoder start token counts as history for the n-grams, as in generate's decoder input ids."""
    source = [37, 5, 912, 44, 5, 1]
    options = SamplingOptions(20, no_repeat_ngram_size=2, min_new_tokens=12, eos_token_ids=frozenset({1}))
    with torch.inference_mode():
        output = t5.generate(
            torch.tensor([source]), max_new_tokens=20, do_sample=False, no_repeat_ngram_size=2, min_new_tokens=12
        )
    expected = output[0, 1:].tolist()
    expected = expected[: expected.index(1) + 1] if 1 in expected else expected
    engine = EncoderDecoderBatcher(t5, max_batch_size=4, vocab_size=t5.config.vocab_size, device="cpu")
    request = GenerationRequest("t5", source, options)
    assert run_staggered(engine, [request], [0])["t5", 0] == expected
    # A resumed sequence keeps the n-grams it published and owes only the rest of its minimum.
    published = PublishedReply(next_sequence_number=1, tokens={0: expected[:5]})
    ((engine_id, (_, continuation)),) = continuation_requests(request, published, encoder_decoder=True).items()
    assert continuation.sampling.min_new_tokens == 7
    assert run_staggered(engine, [continuation], [0])[engine_id, 0] == expected[5:]
