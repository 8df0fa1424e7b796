"""Beam search beside the batch, on the real tiny Llama and tiny T5: output equals model.generate with the same
options, a cancel stops it within a step, a failure fails its request alone, and the batch keeps decoding."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict

import pytest
import torch
from test_engine_parity import engine_for, generate_alone
from transformers import AutoModelForSeq2SeqLM

from model_service.engine.beam_search import MAX_WAITING, POLL_INTERVAL_S, BeamSearchRunner
from model_service.engine.encoder_decoder import EncoderDecoderBatcher
from model_service.engine.interface import (
    FinishReason,
    GenerationRequest,
    RequestFailed,
    SamplingOptions,
    SequenceUpdate,
)
from pipeserve.errors import InvalidArgument
from pipeserve.local_models import TINY_T5, build_tiny_t5

TIMEOUT_S = 60.0
LLAMA_EOS = frozenset({0, 2})
T5_EOS = frozenset({1})


def reference(model, prompt: list[int], options: SamplingOptions, *, encoder_decoder: bool = False) -> list[list[int]]:
    """generate's sequences, best first, each up to and including its first end-of-sequence token."""
    with torch.inference_mode():
        output = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False,
            num_beams=options.num_beams,
            num_return_sequences=options.num_return_sequences,
            max_new_tokens=options.max_new_tokens,
            min_new_tokens=options.min_new_tokens,
            length_penalty=options.length_penalty,
            early_stopping=options.early_stopping,
            no_repeat_ngram_size=options.no_repeat_ngram_size,
            repetition_penalty=options.repetition_penalty,
            eos_token_id=sorted(options.eos_token_ids),
        )
    sequences = []
    for row in output[:, 1 if encoder_decoder else len(prompt) :].tolist():
        ends = [position for position, token in enumerate(row) if token in options.eos_token_ids]
        sequences.append(row[: ends[0] + 1] if ends else row)
    return sequences


def run(runner: BeamSearchRunner, *requests: GenerationRequest) -> dict[tuple[str, int], SequenceUpdate]:
    """Add the requests and step until all is done; the finishing update of every sequence (tokens all in it)."""
    for request in requests:
        runner.add(request)
    ended: dict[tuple[str, int], SequenceUpdate] = {}
    deadline = time.monotonic() + TIMEOUT_S
    while runner.has_work:
        assert time.monotonic() < deadline, "the beam search did not end"
        for event in runner.step():
            assert isinstance(event, SequenceUpdate), event
            ended[event.request_id, event.index] = event
        time.sleep(runner.due_in_s or 0)
    return ended


def beams(max_new_tokens: int, eos: frozenset[int], **options) -> SamplingOptions:
    return SamplingOptions(max_new_tokens=max_new_tokens, eos_token_ids=eos, **options)


@pytest.fixture
def runner(tiny_llama):
    runner = BeamSearchRunner(engine_for(tiny_llama), tiny_llama.model, device="cpu")
    yield runner
    runner.close()


LLAMA_CASES = [
    dict(num_beams=2),
    dict(num_beams=4, num_return_sequences=4, length_penalty=0.5),
    dict(num_beams=3, num_return_sequences=2, length_penalty=-1.0, early_stopping=True),
    dict(num_beams=4, num_return_sequences=3, early_stopping="never", no_repeat_ngram_size=2, min_new_tokens=5),
    dict(num_beams=5, num_return_sequences=5, length_penalty=2.0, repetition_penalty=1.3),
]


def end_token_for_mixed_finishes(model, prompt: list[int]) -> int:
    """A token that some but not all of the unconstrained beams switch to along the way: as an end token, some
    sequences end with it (at different steps, so generate pads them) and others run to the length limit."""
    free = reference(model, prompt, beams(16, LLAMA_EOS, num_beams=6, num_return_sequences=6))
    counts = Counter(token for sequence in free for token in set(sequence[1:]) - {sequence[0]})
    return max((token for token, count in counts.items() if count < len(free)), key=lambda t: (counts[t], t))


@pytest.fixture(scope="module")
def mixed_eos(tiny_llama, prompts) -> frozenset[int]:
    return frozenset({end_token_for_mixed_finishes(tiny_llama.model, prompts[4]), *LLAMA_EOS})


@pytest.mark.parametrize("options", LLAMA_CASES, ids=[str(case) for case in LLAMA_CASES])
def test_beam_search_equals_generate_on_the_tiny_llama(tiny_llama, prompts, runner, mixed_eos, options):
    prompt = prompts[4]
    eos = mixed_eos
    sampling = beams(16, eos, **options)
    expected = reference(tiny_llama.model, prompt, sampling)
    ended = run(runner, GenerationRequest("beams", prompt, sampling))
    assert [ended["beams", i].token_ids for i in range(len(expected))] == expected
    assert len(ended) == sampling.num_return_sequences
    for i, tokens in enumerate(expected):
        reason = FinishReason.EOS if tokens[-1] in eos else FinishReason.LENGTH
        assert ended["beams", i].finish_reason is reason
        assert reason is FinishReason.EOS or len(tokens) == 16


def test_sequences_ending_at_different_steps_come_without_generate_s_padding(tiny_llama, prompts, runner, mixed_eos):
    sampling = beams(16, mixed_eos, num_beams=6, num_return_sequences=6)
    ended = run(runner, GenerationRequest("mixed", prompts[4], sampling))
    assert [ended["mixed", i].token_ids for i in range(6)] == reference(tiny_llama.model, prompts[4], sampling)
    reasons = {update.finish_reason for update in ended.values()}
    lengths = {len(update.token_ids) for update in ended.values() if update.finish_reason is FinishReason.EOS}
    assert reasons == {FinishReason.EOS, FinishReason.LENGTH} and len(lengths) > 1, "the case shows nothing"


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    return AutoModelForSeq2SeqLM.from_pretrained(build_tiny_t5(tmp_path_factory.mktemp("t5") / TINY_T5)).eval()


# t5-small's summarization and translation parameters (pipeserve.local_models.T5_TASK_PARAMS), and more.
T5_CASES = [
    dict(num_beams=4, length_penalty=2.0, early_stopping=True, no_repeat_ngram_size=3, min_new_tokens=29),
    dict(num_beams=4, early_stopping=True),
    dict(num_beams=3, num_return_sequences=3, length_penalty=0.0, early_stopping="never"),
]


@pytest.mark.parametrize("options", T5_CASES, ids=[str(case) for case in T5_CASES])
def test_beam_search_equals_generate_on_the_tiny_t5(t5, options):
    source = [37, 5, 912, 44, 5, 88, 1]
    sampling = beams(40, T5_EOS, **options)
    expected = reference(t5, source, sampling, encoder_decoder=True)
    runner = BeamSearchRunner(
        EncoderDecoderBatcher(t5, max_batch_size=4, vocab_size=t5.config.vocab_size, device="cpu"), t5, device="cpu"
    )
    try:
        ended = run(runner, GenerationRequest("t5", source, sampling))
    finally:
        runner.close()
    assert [ended["t5", i].token_ids for i in range(len(expected))] == expected


class ForwardCounter:
    """Counts the model's forward passes (one per generate step) and says when the search is well under way."""

    def __init__(self, model, started_after: int = 5):
        self.count = 0
        self.started = threading.Event()
        self._after = started_after
        self._handle = model.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.count += 1
        if self.count >= self._after:
            self.started.set()

    def remove(self):
        self._handle.remove()


def long_search(prompt: list[int]) -> GenerationRequest:
    """A search that cannot end early: the end tokens are banned for all its 1500 tokens."""
    return GenerationRequest("long", prompt, beams(1500, LLAMA_EOS, num_beams=4, min_new_tokens=1500))


def test_a_cancel_stops_a_running_search_within_one_step(tiny_llama, prompts, runner):
    counter = ForwardCounter(tiny_llama.model)
    try:
        runner.add(long_search(prompts[2]))
        assert counter.started.wait(TIMEOUT_S)
        runner.cancel("long")
        at_cancel = counter.count
        ended = run(runner)
    finally:
        counter.remove()
    # The step in flight when the cancel came may finish; no other one runs.
    assert counter.count <= at_cancel + 1
    assert ended == {("long", 0): SequenceUpdate("long", 0, [], FinishReason.CANCELLED)}


def test_waiting_searches_run_in_turn_and_a_cancelled_one_never_runs(tiny_llama, prompts, runner):
    counter = ForwardCounter(tiny_llama.model)
    try:
        runner.add(long_search(prompts[2]))
        short = beams(6, LLAMA_EOS, num_beams=2, num_return_sequences=2)
        for name in ("first", "dropped", "second"):
            runner.add(GenerationRequest(name, prompts[1], short))
        assert runner.free_rows == 1 + MAX_WAITING - 4, "every search held counts against the rows to read"
        assert counter.started.wait(TIMEOUT_S)
        runner.cancel("dropped")
        assert runner.step() == [SequenceUpdate("dropped", i, [], FinishReason.CANCELLED) for i in range(2)]
        runner.cancel("long")
        ended = run(runner)
    finally:
        counter.remove()
    expected = reference(tiny_llama.model, prompts[1], short)
    assert [ended["first", i].token_ids for i in range(2)] == expected
    assert [ended["second", i].token_ids for i in range(2)] == expected
    assert ("dropped", 0) not in ended
    assert runner.free_rows == 8, "nothing held: the batch's free rows (max_batch_size 8), uncapped"


def test_a_failing_search_fails_its_request_alone(tiny_llama, prompts, runner):
    # An id past the embedding: generate itself raises (the worker refuses such prompts before they get here).
    bad = GenerationRequest("bad", [tiny_llama.input_vocab_size + 7], beams(4, LLAMA_EOS, num_beams=2))
    good = GenerationRequest("good", prompts[1], beams(4, LLAMA_EOS, num_beams=2))
    runner.add(bad)
    runner.add(good)
    events = []
    deadline = time.monotonic() + TIMEOUT_S
    while runner.has_work:
        assert time.monotonic() < deadline
        events.extend(runner.step())
        time.sleep(runner.due_in_s or 0)
    failed = [event for event in events if isinstance(event, RequestFailed)]
    assert [event.request_id for event in failed] == ["bad"]
    assert "beam search failed" in failed[0].message and "IndexError" in failed[0].message
    good_events = [event for event in events if isinstance(event, SequenceUpdate)]
    assert [event.token_ids for event in good_events] == reference(tiny_llama.model, prompts[1], good.sampling)[:1]


def test_the_batch_keeps_decoding_while_a_search_runs(tiny_llama, prompts, runner):
    counter = ForwardCounter(tiny_llama.model)
    greedy = GenerationRequest("greedy", prompts[4], SamplingOptions(max_new_tokens=12))
    tokens, finished = defaultdict(list), set()
    try:
        runner.add(long_search(prompts[2]))
        assert counter.started.wait(TIMEOUT_S)
        runner.add(greedy)
        assert runner.due_in_s == 0.0, "the batch has work: the worker must not wait"
        deadline = time.monotonic() + TIMEOUT_S
        while "greedy" not in finished:
            assert time.monotonic() < deadline
            for event in runner.step():
                tokens[event.request_id].extend(event.token_ids)
                if event.finish_reason is not None:
                    finished.add(event.request_id)
        assert finished == {"greedy"}, "the search was still running when the greedy request finished"
        assert runner.due_in_s == POLL_INTERVAL_S, "only the search runs: the worker polls for its end"
        runner.cancel("long")
        run(runner)
    finally:
        counter.remove()
    expected = generate_alone(tiny_llama.model, prompts[4], 12, do_sample=False)
    assert tokens["greedy"] == expected
    assert runner.due_in_s is None and not runner.has_work


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(num_beams=2, do_sample=True), "beam sampling, which is not served"),
        (dict(num_beams=2, ignore_eos=True), "ignore_eos is not served with beam search"),
        (dict(num_beams=2, num_return_sequences=3), "must be at most num_beams"),
        (dict(num_beams=2, length_penalty=float("nan")), "length_penalty must be a finite number"),
    ],
)
def test_a_search_it_cannot_run_is_refused_at_add(runner, options, message):
    with pytest.raises(InvalidArgument, match=message):
        runner.add(GenerationRequest("x", [5], beams(4, LLAMA_EOS, **options)))
    assert not runner.has_work
