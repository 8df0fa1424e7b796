"""The batcher on the real tiny Llama: output equals model.generate, whatever else shares the batch."""

from __future__ import annotations

import random
from collections import defaultdict

import pytest
import torch

from model_service.engine.continuous import ContinuousBatcher
from model_service.engine.interface import GenerationRequest, SamplingOptions

MAX_NEW_TOKENS = 16
# Step at which each prompt arrives: two at once, others while the batch is decoding.
ARRIVALS = [0, 0, 2, 3, 3, 7, 11, 16]


def generate_alone(model, prompt: list[int], max_new_tokens: int, **options) -> list[int]:
    with torch.inference_mode():
        output = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            eos_token_id=None,
            pad_token_id=0,
            **options,
        )
    return output[0, len(prompt) :].tolist()


def run_staggered(engine, requests: list[GenerationRequest], arrivals: list[int]) -> dict[tuple[str, int], list[int]]:
    tokens = defaultdict(list)
    step = 0
    while step <= max(arrivals) or engine.has_work:
        for request, arrival in zip(requests, arrivals):
            if arrival == step:
                engine.add(request)
        for event in engine.step():
            tokens[event.request_id, event.index].extend(event.token_ids)
        step += 1
    return tokens


def engine_for(loaded, max_batch_size: int = 8) -> ContinuousBatcher:
    return ContinuousBatcher(
        loaded.model,
        max_batch_size=max_batch_size,
        prefill_tokens_per_step=4096,
        vocab_size=loaded.output_vocab_size,
        device=loaded.device,
    )


@pytest.mark.parametrize("repetition_penalty", [1.0, 1.3])
def test_greedy_output_equals_generate_alone_with_joins_and_early_leavers(tiny_llama, prompts, repetition_penalty):
    # Different lengths, so rows leave at different steps while others are still joining.
    limits = [MAX_NEW_TOKENS - 5 * (i % 3) for i in range(len(prompts))]
    requests = [
        GenerationRequest(str(i), prompt, SamplingOptions(max_new_tokens=limit, repetition_penalty=repetition_penalty))
        for i, (prompt, limit) in enumerate(zip(prompts, limits))
    ]
    got = run_staggered(engine_for(tiny_llama), requests, ARRIVALS)
    for i, (prompt, limit) in enumerate(zip(prompts, limits)):
        expected = generate_alone(
            tiny_llama.model, prompt, limit, do_sample=False, repetition_penalty=repetition_penalty
        )
        assert got[str(i), 0] == expected, f"prompt {i} ({len(prompt)} tokens) diverged"


def test_greedy_output_equals_generate_when_stopping_at_eos(tiny_llama, prompts):
    prompt = prompts[3]
    free_run = generate_alone(tiny_llama.model, prompt, MAX_NEW_TOKENS, do_sample=False)
    eos = free_run[5]
    expected = free_run[: free_run.index(eos) + 1]
    engine = engine_for(tiny_llama)
    stopping = GenerationRequest("eos", prompt, SamplingOptions(MAX_NEW_TOKENS, eos_token_ids=frozenset({eos})))
    companion = GenerationRequest("other", prompts[0], SamplingOptions(MAX_NEW_TOKENS))
    got = run_staggered(engine, [companion, stopping], [0, 1])
    assert got["eos", 0] == expected


def test_seeded_sampling_does_not_depend_on_the_rest_of_the_batch(tiny_llama, prompts):
    options = SamplingOptions(
        max_new_tokens=10, do_sample=True, temperature=0.9, top_k=40, top_p=0.95, num_return_sequences=2, seed=123
    )
    seeded = GenerationRequest("seeded", prompts[2], options)
    alone = run_staggered(engine_for(tiny_llama), [seeded], [0])
    others = [
        GenerationRequest(f"other{i}", prompt, SamplingOptions(10, do_sample=True, temperature=1.2))
        for i, prompt in enumerate(prompts[4:6])
    ]
    crowded = run_staggered(engine_for(tiny_llama), [*others, seeded], [0, 2, 1])
    assert crowded["seeded", 0] == alone["seeded", 0]
    assert crowded["seeded", 1] == alone["seeded", 1]
    assert len(alone["seeded", 0]) == 10


def test_a_burst_of_similar_prompts_is_prefilled_in_one_forward_and_still_equals_generate(tiny_llama, monkeypatch):
    rng = random.Random(1)
    lengths = [40, 44, 38, 41, 43, 39]
    burst = [[rng.randrange(3, tiny_llama.input_vocab_size) for _ in range(n)] for n in lengths]
    requests = [
        GenerationRequest(str(i), p, SamplingOptions(max_new_tokens=MAX_NEW_TOKENS)) for i, p in enumerate(burst)
    ]
    engine = engine_for(tiny_llama)
    for request in requests:
        engine.add(request)
    forward = tiny_llama.model.forward
    calls = []
    monkeypatch.setattr(tiny_llama.model, "forward", lambda *a, **kw: calls.append(1) or forward(*a, **kw))
    tokens = defaultdict(list)
    for event in engine.step():
        tokens[event.request_id].extend(event.token_ids)
    assert len(calls) == 1, "the burst's prompts, all within 25 % of each other's length, share one prefill forward"
    monkeypatch.undo()
    while engine.has_work:
        for event in engine.step():
            tokens[event.request_id].extend(event.token_ids)
    for i, prompt in enumerate(burst):
        assert tokens[str(i)] == generate_alone(tiny_llama.model, prompt, MAX_NEW_TOKENS, do_sample=False)
