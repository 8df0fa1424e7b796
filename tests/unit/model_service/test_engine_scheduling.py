"""Scheduling of the continuous batcher, on a fake model whose outputs are known in advance."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch
from model_fakes import VOCAB, FakeLM, reference_continuation

from model_service.engine.continuous import ContinuousBatcher
from model_service.engine.interface import (
    FinishReason,
    GenerationRequest,
    RequestFailed,
    SamplingOptions,
    SequenceUpdate,
)
from pipeserve.errors import InvalidArgument


def batcher(
    model: FakeLM, max_batch_size: int = 8, prefill_tokens_per_step: int = 4096, **options
) -> ContinuousBatcher:
    return ContinuousBatcher(
        model,
        max_batch_size=max_batch_size,
        prefill_tokens_per_step=prefill_tokens_per_step,
        vocab_size=VOCAB,
        device="cpu",
        **options,
    )


def request(request_id: str, prompt: list[int], max_new_tokens: int = 8, **options) -> GenerationRequest:
    return GenerationRequest(request_id, prompt, SamplingOptions(max_new_tokens=max_new_tokens, **options))


def updates_by_sequence(events) -> dict[tuple[str, int], list[SequenceUpdate]]:
    grouped = defaultdict(list)
    for event in events:
        grouped[event.request_id, event.index].append(event)
    return grouped


def run_until_idle(engine: ContinuousBatcher, max_steps: int = 1000) -> list:
    events = []
    for _ in range(max_steps):
        if not engine.has_work:
            return events
        events.extend(engine.step())
    raise AssertionError("the engine did not finish")


def test_staggered_requests_each_get_exactly_their_own_continuation():
    """Joins with longer and shorter prompts, early leavers and a batch cap: every row stays intact."""
    model = FakeLM()
    engine = batcher(model, max_batch_size=4)
    prompts = {f"r{i}": [(i * 7 + j) % VOCAB for j in range(length)] for i, length in enumerate([1, 40, 3, 17, 90, 2])}
    limits = {"r0": 30, "r1": 5, "r2": 12, "r3": 25, "r4": 3, "r5": 20}
    arrivals = {0: ["r0", "r1"], 2: ["r2"], 3: ["r3", "r4"], 7: ["r5"]}
    tokens = defaultdict(list)
    reasons = {}
    step = 0
    while step <= max(arrivals) or engine.has_work:
        for request_id in arrivals.get(step, []):
            engine.add(request(request_id, prompts[request_id], limits[request_id]))
        for event in engine.step():
            tokens[event.request_id].extend(event.token_ids)
            if event.finish_reason is not None:
                reasons[event.request_id] = event.finish_reason
        assert engine.running_rows <= 4
        step += 1
    for request_id, prompt in prompts.items():
        assert tokens[request_id] == reference_continuation(prompt, limits[request_id]), request_id
        assert reasons[request_id] is FinishReason.LENGTH
    assert engine.cache_width == 0


def test_a_new_request_gets_its_first_token_at_the_next_step_and_decodes_with_the_rest():
    model = FakeLM()
    engine = batcher(model)
    engine.add(request("long", [1, 2, 3], max_new_tokens=50))
    for _ in range(5):
        engine.step()
    model.calls.clear()
    engine.add(request("new", [9] * 30, max_new_tokens=10))
    events = updates_by_sequence(engine.step())
    assert [e.token_ids for e in events["new", 0]] == [reference_continuation([9] * 30, 1)]
    assert [e.token_ids for e in events["long", 0]] == [reference_continuation([1, 2, 3], 6)[-1:]]
    assert model.calls == [("decode", 1), ("prefill", 1)], "decode of the running row, then the newcomer alone"
    model.calls.clear()
    engine.step()
    assert model.calls == [("decode", 2)], "the newcomer joined the running batch"


def test_cancel_frees_the_row_at_the_next_step():
    model = FakeLM()
    engine = batcher(model, max_batch_size=2)
    engine.add(request("a", [1], max_new_tokens=50))
    engine.add(request("b", [2, 3], max_new_tokens=50))
    engine.add(request("waiting", [4], max_new_tokens=3))
    engine.step()
    engine.step()
    assert engine.running_rows == 2 and engine.free_rows == -1
    engine.cancel("b")
    model.calls.clear()
    events = updates_by_sequence(engine.step())
    assert events["b", 0] == [SequenceUpdate("b", 0, [], FinishReason.CANCELLED)]
    assert model.calls == [("decode", 1), ("prefill", 1)], "b left before the decode; the waiting request took its row"
    assert [e.token_ids for e in events["waiting", 0]] == [reference_continuation([4], 1)]
    assert engine.running_rows == 2


def test_cancelling_a_waiting_request_or_one_of_its_sequences():
    engine = batcher(FakeLM(), max_batch_size=2)
    engine.add(request("running", [1], max_new_tokens=20))
    engine.add(request("n3", [5, 6], max_new_tokens=4, do_sample=True, num_return_sequences=2))
    engine.add(request("gone", [7], max_new_tokens=4))
    engine.step()
    engine.cancel("gone")
    engine.cancel("n3", [1])
    events = updates_by_sequence(engine.step())
    assert events["gone", 0] == [SequenceUpdate("gone", 0, [], FinishReason.CANCELLED)]
    assert events["n3", 1] == [SequenceUpdate("n3", 1, [], FinishReason.CANCELLED)]
    assert ("n3", 0) in events, "the remaining sequence of n3 fits now and starts"
    rest = updates_by_sequence(run_until_idle(engine))
    assert ("n3", 1) not in rest and ("gone", 0) not in rest


def test_eos_ends_a_sequence_unless_ignored():
    prompt = [3, 1, 4]
    continuation = reference_continuation(prompt, 10)
    eos = continuation[3]
    assert eos not in continuation[:3]
    engine = batcher(FakeLM())
    engine.add(request("stops", prompt, max_new_tokens=10, eos_token_ids=frozenset({eos})))
    engine.add(request("ignores", prompt, max_new_tokens=10, eos_token_ids=frozenset({eos}), ignore_eos=True))
    events = updates_by_sequence(run_until_idle(engine))
    stops, ignores = events["stops", 0], events["ignores", 0]
    assert [t for e in stops for t in e.token_ids] == continuation[:4], "the EOS token itself is returned"
    assert stops[-1].finish_reason is FinishReason.EOS
    assert [t for e in ignores for t in e.token_ids] == continuation
    assert ignores[-1].finish_reason is FinishReason.LENGTH


def test_a_request_finishing_at_its_first_token_never_joins_the_batch():
    model = FakeLM()
    engine = batcher(model)
    engine.add(request("one", [8, 8], max_new_tokens=1))
    events = engine.step()
    assert events == [SequenceUpdate("one", 0, reference_continuation([8, 8], 1), FinishReason.LENGTH)]
    assert not engine.has_work and engine.running_rows == 0


def test_n_sequences_are_prefilled_once_and_decoded_as_separate_rows():
    model = FakeLM()
    engine = batcher(model)
    engine.add(request("n", [2, 7, 1], max_new_tokens=6, do_sample=True, num_return_sequences=3, seed=0))
    events = updates_by_sequence(run_until_idle(engine))
    assert model.calls[0] == ("prefill", 1) and model.calls[1] == ("decode", 3)
    # The fake model's distribution is one token with all the mass, so every draw follows it.
    for index in range(3):
        assert [t for e in events["n", index] for t in e.token_ids] == reference_continuation([2, 7, 1], 6)


def test_waiting_requests_start_in_arrival_order_as_rows_free_up():
    engine = batcher(FakeLM(), max_batch_size=2)
    for request_id, length in [("a", 2), ("b", 6), ("c", 3), ("d", 3)]:
        engine.add(request(request_id, [1], max_new_tokens=length))
    assert engine.free_rows == -2
    started = []
    while engine.has_work:
        for event in engine.step():
            if event.request_id not in started:
                started.append(event.request_id)
        assert engine.running_rows <= 2
    assert started == ["a", "b", "c", "d"]


def test_prefill_budget_spreads_a_burst_of_long_prompts_over_steps():
    model = FakeLM()
    engine = batcher(model, prefill_tokens_per_step=100)
    for request_id in "abc":
        engine.add(request(request_id, [5] * 60, max_new_tokens=5))
    engine.step()
    assert model.calls == [("prefill", 1)], "a second 60-token prompt would exceed the 100-token budget"
    engine.step()
    assert model.calls[1:] == [("decode", 1), ("prefill", 1)]


def test_rows_leaving_shrink_the_cache_to_the_longest_remaining_row():
    engine = batcher(FakeLM())
    engine.add(request("long-prompt", [1] * 200, max_new_tokens=2))
    engine.add(request("short", [2] * 5, max_new_tokens=20))
    engine.step()
    assert engine.cache_width == 200
    engine.step()  # long-prompt finishes here and leaves
    assert engine.cache_width == 5 + 1, "only the short row's prompt and first fed token remain"


def test_a_failed_decode_fails_the_running_requests_and_the_engine_keeps_serving():
    model = FakeLM()
    engine = batcher(model)
    engine.add(request("a", [1], max_new_tokens=10))
    engine.add(request("b", [2], max_new_tokens=10, do_sample=True, num_return_sequences=2))
    engine.step()
    model.fail_on = "decode"
    events = engine.step()
    assert sorted(e.request_id for e in events if isinstance(e, RequestFailed)) == ["a", "b"]
    assert engine.running_rows == 0
    engine.add(request("c", [3], max_new_tokens=4))
    tokens = [t for e in run_until_idle(engine) for t in e.token_ids]
    assert tokens == reference_continuation([3], 4)


def test_a_failed_prefill_fails_only_that_request():
    model = FakeLM()
    engine = batcher(model)
    engine.add(request("running", [1], max_new_tokens=6))
    engine.step()
    model.fail_on = "prefill"
    engine.add(request("broken", [2], max_new_tokens=6))
    events = engine.step()
    assert [e.request_id for e in events if isinstance(e, RequestFailed)] == ["broken"]
    tokens = [t for e in events + run_until_idle(engine) if e.request_id == "running" for t in e.token_ids]
    assert tokens == reference_continuation([1], 6)[1:]


def test_joins_and_leaves_write_into_the_cache_instead_of_copying_it_each_time():
    """Forty requests through eight rows: the whole cache is copied only a few times, not at every join or leave."""
    engine = batcher(FakeLM(), max_batch_size=8)
    prompts = {f"r{i}": [(i * 11 + j) % VOCAB for j in range(1 + (i * 7) % 40)] for i in range(40)}
    limits = {request_id: 5 + (i * 13) % 30 for i, request_id in enumerate(prompts)}
    tokens = defaultdict(list)
    for request_id, prompt in prompts.items():
        engine.add(request(request_id, prompt, limits[request_id]))
    for event in run_until_idle(engine):
        tokens[event.request_id].extend(event.token_ids)
    for request_id, prompt in prompts.items():
        assert tokens[request_id] == reference_continuation(prompt, limits[request_id]), request_id
    assert engine.relocations <= 3


def test_cache_memory_never_written_is_never_attended(monkeypatch):
    """The buffers are allocated uninitialized: fill them with NaN, and any padding left unwritten shows in the output.

    The fake model multiplies masked positions by zero, and NaN * 0 is NaN.
    """
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, size: torch.full(size, float("nan"), dtype=self.dtype))
    engine = batcher(FakeLM(), max_batch_size=4)
    prompts = {f"r{i}": [(i * 3 + j) % VOCAB for j in range(length)] for i, length in enumerate([3, 40, 1, 90, 7, 2])}
    limits = {"r0": 30, "r1": 4, "r2": 12, "r3": 6, "r4": 20, "r5": 9}
    arrivals = {0: ["r0"], 1: ["r1"], 3: ["r2", "r3"], 6: ["r4"], 9: ["r5"]}
    tokens = defaultdict(list)
    step = 0
    while step <= max(arrivals) or engine.has_work:
        for request_id in arrivals.get(step, []):
            engine.add(request(request_id, prompts[request_id], limits[request_id]))
        for event in engine.step():
            tokens[event.request_id].extend(event.token_ids)
        step += 1
    for request_id, prompt in prompts.items():
        assert tokens[request_id] == reference_continuation(prompt, limits[request_id]), request_id


def test_a_long_prompt_is_prefilled_in_chunks_while_the_running_rows_keep_decoding():
    model = FakeLM()
    engine = batcher(model, prefill_chunk_tokens=16)
    engine.add(request("running", [1, 2], max_new_tokens=30))
    engine.step()
    model.calls.clear()
    long_prompt = [(7 * i + 3) % VOCAB for i in range(50)]
    engine.add(request("long", long_prompt, max_new_tokens=6))
    firsts = []
    for _ in range(4):
        events = updates_by_sequence(engine.step())
        assert len(events["running", 0]) == 1, "the running row gets its token at every step"
        firsts.append(("long", 0) in events)
    assert firsts == [False, False, False, True], "16 + 16 + 16 + 2 prompt tokens, one chunk per step"
    assert model.calls == [("decode", 1), ("prefill", 1)] * 4
    rest = updates_by_sequence(run_until_idle(engine))
    long_tokens = [t for e in events["long", 0] + rest["long", 0] for t in e.token_ids]
    assert long_tokens == reference_continuation(long_prompt, 6)


def test_a_request_being_prefilled_in_chunks_can_be_cancelled():
    model = FakeLM()
    engine = batcher(model, prefill_chunk_tokens=8)
    engine.add(request("long", [4] * 40, max_new_tokens=6))
    engine.step()
    engine.cancel("long")
    assert engine.step() == [SequenceUpdate("long", 0, [], FinishReason.CANCELLED)]
    assert not engine.has_work


def test_with_a_kv_budget_requests_wait_until_they_fit_and_all_complete():
    # Each request needs 10 prompt + 20 new = 30 tokens per row; 70 tokens hold two rows (2 x 30), not three.
    engine = batcher(FakeLM(), kv_budget_tokens=70)
    prompts = {f"r{i}": [(i * 5 + j) % VOCAB for j in range(10)] for i in range(5)}
    assert engine.free_rows == 1, "nothing known yet: one request at a time until its size is"
    engine.add(request("r0", prompts["r0"], max_new_tokens=20))
    assert engine.free_rows == 1
    for request_id in ["r1", "r2", "r3", "r4"]:
        engine.add(request(request_id, prompts[request_id], max_new_tokens=20))
    assert engine.free_rows < 0, "the worker must not read more work"
    tokens = defaultdict(list)
    while engine.has_work:
        for event in engine.step():
            tokens[event.request_id].extend(event.token_ids)
        assert engine.running_rows <= 2
        assert engine.cache_tokens <= 70, "the buffers themselves stay within the budget"
    for request_id, prompt in prompts.items():
        assert tokens[request_id] == reference_continuation(prompt, 20), request_id
    assert engine.free_rows == 1


def test_a_request_larger_than_the_whole_kv_budget_is_refused():
    engine = batcher(FakeLM(), kv_budget_tokens=70)
    with pytest.raises(InvalidArgument, match="KV cache"):
        engine.add(request("huge", [1] * 60, max_new_tokens=20))
    with pytest.raises(InvalidArgument, match="KV cache"):
        engine.add(request("n3", [1] * 10, max_new_tokens=20, do_sample=True, num_return_sequences=3))
