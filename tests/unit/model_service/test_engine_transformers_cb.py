"""transformers' ContinuousBatchingManager behind our engine interface: greedy output equals model.generate."""

from __future__ import annotations

from collections import defaultdict

import pytest
from test_engine_parity import ARRIVALS, generate_alone, run_staggered

from model_service.engine.interface import FinishReason, GenerationRequest, RequestFailed, SamplingOptions
from model_service.engine.transformers_cb import TransformersCBEngine
from pipeserve.errors import InvalidArgument


@pytest.fixture
def engine(tiny_llama):
    # 40 blocks of 16 tokens hold 640 tokens: less than the prompts below together, so requests also queue for blocks.
    engine = TransformersCBEngine(tiny_llama.model, max_batch_size=8, num_blocks=40, page_size=16, max_batch_tokens=128)
    yield engine
    engine.close()


def run_until_idle(engine, max_steps: int = 10_000) -> list:
    events = []
    for _ in range(max_steps):
        if not engine.has_work:
            return events
        events.extend(engine.step())
    raise AssertionError("the engine did not finish")


def test_greedy_output_equals_generate_with_staggered_arrivals(engine, tiny_llama, prompts):
    limits = [16 - 5 * (i % 3) for i in range(len(prompts))]
    requests = [
        GenerationRequest(str(i), prompt, SamplingOptions(max_new_tokens=limit))
        for i, (prompt, limit) in enumerate(zip(prompts, limits))
    ]
    got = run_staggered(engine, requests, ARRIVALS)
    for i, (prompt, limit) in enumerate(zip(prompts, limits)):
        assert got[str(i), 0] == generate_alone(tiny_llama.model, prompt, limit, do_sample=False), f"prompt {i}"


def test_eos_ends_a_request_as_generate_does(engine, tiny_llama, prompts):
    free_run = generate_alone(tiny_llama.model, prompts[3], 16, do_sample=False)
    eos = free_run[5]
    engine.add(GenerationRequest("eos", prompts[3], SamplingOptions(16, eos_token_ids=frozenset({eos}))))
    engine.add(
        GenerationRequest("ignores", prompts[3], SamplingOptions(16, eos_token_ids=frozenset({eos}), ignore_eos=True))
    )
    tokens, reasons = defaultdict(list), {}
    for event in run_until_idle(engine):
        tokens[event.request_id].extend(event.token_ids)
        if event.finish_reason is not None:
            reasons[event.request_id] = event.finish_reason
    assert tokens["eos"] == free_run[: free_run.index(eos) + 1] and reasons["eos"] is FinishReason.EOS
    assert tokens["ignores"] == free_run and reasons["ignores"] is FinishReason.LENGTH


def test_cancel_ends_a_request_with_cancelled_and_nothing_after(engine, prompts):
    engine.add(GenerationRequest("long", prompts[0], SamplingOptions(max_new_tokens=300, ignore_eos=True)))
    seen = []
    while not seen:
        seen = engine.step()
    engine.cancel("long")
    events = run_until_idle(engine)
    assert [(e.token_ids, e.finish_reason) for e in events] == [([], FinishReason.CANCELLED)]
    assert engine.free_rows == 8


def test_sampling_options_it_cannot_honour_are_refused(engine, prompts):
    for options in [
        SamplingOptions(max_new_tokens=4, do_sample=True, seed=1),
        SamplingOptions(max_new_tokens=4, repetition_penalty=1.2),
    ]:
        with pytest.raises(InvalidArgument, match="PIPESERVE_ENGINE=padded-kv"):
            engine.add(GenerationRequest("refused", prompts[1], options))
    assert not engine.has_work


def test_a_request_larger_than_the_paged_cache_is_refused_and_a_full_cache_reads_no_more(engine, prompts):
    with pytest.raises(InvalidArgument, match="whole paged KV cache"):
        engine.add(GenerationRequest("huge", prompts[0], SamplingOptions(max_new_tokens=341)))
    engine.add(GenerationRequest("big", prompts[0], SamplingOptions(max_new_tokens=340)))
    assert engine.free_rows == 0, "300 + 340 tokens reserve all 640 of the cache"
    run_until_idle(engine)
    assert engine.free_rows == 8


def test_when_the_manager_loop_stops_its_requests_fail_and_the_next_request_restarts_it(engine, tiny_llama, prompts):
    engine.add(GenerationRequest("lost", prompts[2], SamplingOptions(max_new_tokens=200, ignore_eos=True)))
    engine._manager.stop(block=True, hard_stop=True)
    events = run_until_idle(engine)
    assert [e.request_id for e in events if isinstance(e, RequestFailed)] == ["lost"]
    engine.add(GenerationRequest("after", prompts[3], SamplingOptions(max_new_tokens=6)))
    tokens = [t for e in run_until_idle(engine) for t in e.token_ids]
    assert tokens == generate_alone(tiny_llama.model, prompts[3], 6, do_sample=False)
