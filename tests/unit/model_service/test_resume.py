"""The resume point of a taken-over request, and the engine requests that continue it."""

from __future__ import annotations

from model_service.engine.interface import GenerationRequest, SamplingOptions
from model_service.resume import PublishedReply, continuation_requests
from pipeserve.internal.v1 import queue_pb2
from pipeserve.v1 import types_pb2


def chunk(number: int, *deltas, error: bool = False) -> queue_pb2.ReplyChunk:
    reply = queue_pb2.ReplyChunk(sequence_number=number, deltas=deltas)
    if error:
        reply.error.code = 13
    return reply


def delta(index: int, tokens: list[int], finish: int = 0) -> queue_pb2.SequenceDelta:
    return queue_pb2.SequenceDelta(index=index, token_ids=tokens, finish_reason=finish)


def test_a_chunk_published_twice_counts_once():
    published = PublishedReply.from_chunks(
        [chunk(0, delta(0, [1])), chunk(1, delta(0, [2, 3])), chunk(1, delta(0, [2, 3]))]
    )
    assert (published.next_sequence_number, published.tokens, published.started) == (2, {0: [1, 2, 3]}, True)


def test_nothing_is_left_to_do_once_every_sequence_finished_or_an_error_ended_it():
    length = types_pb2.FINISH_REASON_LENGTH
    assert PublishedReply.from_chunks([chunk(0, delta(0, [1], length), delta(1, [2]))]).unfinished(2) == [1]
    assert PublishedReply.from_chunks([chunk(0, delta(0, [1]), error=True)]).unfinished(1) == []
    assert not PublishedReply().started


def test_each_open_sequence_continues_from_its_own_tokens_with_the_rest_of_the_budget():
    options = SamplingOptions(max_new_tokens=10, do_sample=True, num_return_sequences=3, seed=42)
    request = GenerationRequest("req", [5, 6], options)
    published = PublishedReply.from_chunks([chunk(0, delta(0, [1, 2, 3]), delta(1, [4], types_pb2.FINISH_REASON_EOS))])
    continuations = continuation_requests(request, published)
    assert set(continuations) == {"req/0", "req/2"}
    index, first = continuations["req/0"]
    assert (index, list(first.prompt_token_ids), first.sampling.max_new_tokens) == (0, [5, 6, 1, 2, 3], 7)
    assert first.sampling.num_return_sequences == 1 and first.request_id == "req/0"
    _, third = continuations["req/2"]
    assert (list(third.prompt_token_ids), third.sampling.max_new_tokens) == ([5, 6], 10)
    assert first.sampling.seed != third.sampling.seed != 42, "each continuation draws afresh"
    again = continuation_requests(request, published)
    assert again["req/0"][1].sampling.seed == first.sampling.seed, "the same resume point gives the same draw"


def test_greedy_and_unseeded_continuations_keep_their_seed():
    request = GenerationRequest("req", [5], SamplingOptions(max_new_tokens=4))
    [(_index, greedy)] = continuation_requests(request, PublishedReply.from_chunks([chunk(0, delta(0, [1]))])).values()
    assert greedy.sampling.seed is None and not greedy.sampling.do_sample
