"""The encoder-decoder engine on a real tiny T5: greedy output equals model.generate, whatever shares the step."""

from __future__ import annotations

import random
from collections import defaultdict

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM

from model_service.config import WorkerSettings
from model_service.engine import create_engine
from model_service.engine.encoder_decoder import EncoderDecoderBatcher
from model_service.engine.interface import FinishReason, GenerationRequest, SamplingOptions, SequenceUpdate
from model_service.resume import PublishedReply, continuation_requests
from pipeserve.errors import InvalidArgument
from pipeserve.internal.v1 import queue_pb2
from pipeserve.local_models import build_tiny_t5

MAX_NEW_TOKENS = 12
SOURCE_LENGTHS = [40, 1, 3, 17, 9, 25]
# Step at which each request arrives: three at once, the others while the first cohort decodes.
ARRIVALS = [0, 0, 0, 2, 5, 5]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return AutoModelForSeq2SeqLM.from_pretrained(build_tiny_t5(tmp_path_factory.mktemp("t5") / "tiny-t5")).eval()


@pytest.fixture(scope="module")
def sources(model) -> list[list[int]]:
    rng = random.Random(0)
    return [[rng.randrange(3, model.config.vocab_size) for _ in range(n)] for n in SOURCE_LENGTHS]


def generate_alone(model, source: list[int], max_new_tokens: int) -> list[int]:
    with torch.inference_mode():
        output = model.generate(
            torch.tensor([source]),
            attention_mask=torch.ones(1, len(source), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )
    return output[0, 1:].tolist()  # without the decoder start token


def greedy(request_id: str, source: list[int], max_new_tokens: int = MAX_NEW_TOKENS, **options) -> GenerationRequest:
    sampling = SamplingOptions(max_new_tokens=max_new_tokens, eos_token_ids=frozenset({1}), **options)
    return GenerationRequest(request_id, source, sampling)


def run_staggered(engine, requests, arrivals) -> tuple[dict, dict]:
    tokens, reasons = defaultdict(list), {}
    step = 0
    while step <= max(arrivals) or engine.has_work:
        for request, arrival in zip(requests, arrivals):
            if arrival == step:
                engine.add(request)
        for event in engine.step():
            assert isinstance(event, SequenceUpdate), event
            tokens[event.request_id, event.index].extend(event.token_ids)
            if event.finish_reason is not None:
                reasons[event.request_id, event.index] = event.finish_reason
        step += 1
    return tokens, reasons


def engine_for(model, max_batch_size: int = 8) -> EncoderDecoderBatcher:
    return EncoderDecoderBatcher(model, max_batch_size=max_batch_size, vocab_size=model.config.vocab_size, device="cpu")


def test_greedy_equals_generate_for_mixed_lengths_arriving_at_different_steps(model, sources):
    requests = [greedy(f"r{i}", source) for i, source in enumerate(sources)]
    engine = engine_for(model)
    tokens, reasons = run_staggered(engine, requests, ARRIVALS)
    said = set()
    for i, source in enumerate(sources):
        expected = generate_alone(model, source, MAX_NEW_TOKENS)
        said.update(expected)
        assert tokens[f"r{i}", 0] == expected, f"request {i} (source of {len(source)} tokens)"
        assert reasons[f"r{i}", 0] == (FinishReason.EOS if expected[-1] == 1 else FinishReason.LENGTH)
    assert len(said) > 5, "the model must say something, not repeat <pad>"
    assert not engine.has_work and engine.running_rows == 0


def test_rows_leave_as_they_finish_and_new_requests_start_their_own_cohort(model, sources):
    engine = engine_for(model)
    engine.add(greedy("long", sources[0], max_new_tokens=10))
    engine.add(greedy("short", sources[1], max_new_tokens=2))
    engine.step()
    assert engine.running_rows == 2
    engine.step()  # "short" has its 2 tokens
    assert engine.running_rows == 1
    engine.add(greedy("late", sources[2], max_new_tokens=3))
    events = engine.step()
    # The late request gets its first token in the step it is admitted, beside the running row's next one.
    assert {(e.request_id, len(e.token_ids)) for e in events} == {("long", 1), ("late", 1)}
    assert engine.running_rows == 2


def test_a_full_engine_keeps_requests_waiting_until_rows_free_up(model, sources):
    engine = engine_for(model, max_batch_size=2)
    engine.add(greedy("a", sources[0], max_new_tokens=3))
    engine.add(greedy("b", sources[1], max_new_tokens=3))
    engine.add(greedy("c", sources[2], max_new_tokens=3))
    assert engine.free_rows == -1
    engine.step()
    assert engine.running_rows == 2
    tokens, _ = run_staggered(engine, [], [0])
    assert tokens["c", 0] == generate_alone(model, sources[2], 3)


def test_cancel_ends_waiting_and_running_sequences(model, sources):
    engine = engine_for(model)
    engine.add(greedy("running", sources[0]))
    engine.step()
    engine.add(greedy("waiting", sources[1]))
    engine.cancel("running")
    engine.cancel("waiting")
    events = engine.step()
    assert {(e.request_id, e.finish_reason) for e in events} == {
        ("running", FinishReason.CANCELLED),
        ("waiting", FinishReason.CANCELLED),
    }
    assert not engine.has_work


def test_sampled_sequences_of_one_request_are_reproducible_with_a_seed(model, sources):
    def sample():
        engine = engine_for(model)
        request = greedy("s", sources[3], do_sample=True, top_k=50, num_return_sequences=3, seed=7)
        tokens, _ = run_staggered(engine, [request], [0])
        return [tokens["s", i] for i in range(3)]

    first = sample()
    assert all(len(t) <= MAX_NEW_TOKENS for t in first)
    assert sample() == first


def test_a_resumed_sequence_continues_exactly_where_its_dead_worker_stopped(model, sources):
    request = greedy("resumed", sources[0])
    expected = generate_alone(model, sources[0], MAX_NEW_TOKENS)
    published = PublishedReply.from_chunks(
        [queue_pb2.ReplyChunk(sequence_number=0, deltas=[queue_pb2.SequenceDelta(index=0, token_ids=expected[:5])])]
    )
    continuations = continuation_requests(request, published, encoder_decoder=True)
    (engine_id, (_index, continuation)), *_ = continuations.items()
    assert list(continuation.prompt_token_ids) == sources[0]
    engine = engine_for(model)
    # A fresh request beside it decodes in its own cohort, unaffected.
    tokens, _ = run_staggered(engine, [continuation, greedy("fresh", sources[1])], [0, 0])
    assert tokens[engine_id, 0] == expected[5:]
    assert tokens["fresh", 0] == generate_alone(model, sources[1], MAX_NEW_TOKENS)


def test_bad_requests_are_refused(model):
    engine = engine_for(model, max_batch_size=2)
    with pytest.raises(InvalidArgument, match="num_return_sequences"):
        engine.add(greedy("n", [5], num_return_sequences=3, do_sample=True))
    with pytest.raises(InvalidArgument, match="empty"):
        engine.add(greedy("e", []))


@pytest.mark.parametrize("kind", ["padded-kv", "transformers-cb"])
def test_an_encoder_decoder_model_gets_this_engine_whatever_engine_is_chosen(monkeypatch, model, kind):
    monkeypatch.setenv("PIPESERVE_ENGINE", kind)
    engine = create_engine(WorkerSettings().engine_settings(), model, vocab_size=model.config.vocab_size, device="cpu")
    assert isinstance(engine, EncoderDecoderBatcher)
