"""When a request's tokens become a reply chunk (first at once, then every N tokens or T ms, always at the end)."""

from __future__ import annotations

import grpc

from model_service.engine.interface import FinishReason, SequenceUpdate
from model_service.replies import ReplyBuffer
from pipeserve.v1 import types_pb2


def buffer(sequences: int = 1) -> ReplyBuffer:
    return ReplyBuffer("r", sequences, flush_tokens=3, flush_interval_s=0.05, now=0.0)


def test_first_token_goes_out_at_once_then_every_n_tokens():
    reply = buffer()
    assert not reply.due(0.0)
    reply.add(SequenceUpdate("r", 0, [11]))
    assert reply.due(0.0)
    first = reply.take(0.0)
    assert (first.sequence_number, list(first.deltas[0].token_ids)) == (0, [11])
    reply.add(SequenceUpdate("r", 0, [12]))
    reply.add(SequenceUpdate("r", 0, [13]))
    assert not reply.due(0.01)
    reply.add(SequenceUpdate("r", 0, [14]))
    assert reply.due(0.01)
    second = reply.take(0.01)
    assert (second.sequence_number, list(second.deltas[0].token_ids)) == (1, [12, 13, 14])
    assert not second.deltas[0].finish_reason


def test_pending_tokens_go_out_once_the_interval_has_passed():
    reply = buffer()
    reply.add(SequenceUpdate("r", 0, [1]))
    reply.take(1.0)
    reply.add(SequenceUpdate("r", 0, [2]))
    assert not reply.due(1.04)
    assert reply.due(1.05)


def test_a_finished_sequence_is_flushed_at_once_with_its_reason_and_ends_the_request():
    reply = buffer(sequences=2)
    reply.add(SequenceUpdate("r", 0, [1]))
    reply.add(SequenceUpdate("r", 1, [2]))
    reply.take(0.0)
    reply.add(SequenceUpdate("r", 1, [], FinishReason.LENGTH))
    assert reply.due(0.0) and not reply.done
    chunk = reply.take(0.0)
    assert [(d.index, list(d.token_ids), d.finish_reason) for d in chunk.deltas] == [
        (1, [], types_pb2.FINISH_REASON_LENGTH)
    ]
    reply.add(SequenceUpdate("r", 0, [3, 4], FinishReason.EOS))
    assert reply.done and reply.due(0.0)
    last = reply.take(0.0)
    assert last.sequence_number == 2
    assert [(d.index, list(d.token_ids), d.finish_reason) for d in last.deltas] == [
        (0, [3, 4], types_pb2.FINISH_REASON_EOS)
    ]


def test_a_failure_ends_the_request_with_an_error_and_whatever_was_pending():
    reply = buffer()
    reply.add(SequenceUpdate("r", 0, [5]))
    reply.fail(grpc.StatusCode.INTERNAL, "broken")
    assert reply.done and reply.due(0.0)
    chunk = reply.take(0.0)
    assert list(chunk.deltas[0].token_ids) == [5]
    assert (chunk.error.code, chunk.error.message) == (13, "broken")


def test_a_resumed_request_continues_the_numbering_and_waits_only_for_its_open_sequences():
    reply = ReplyBuffer(
        "r", 3, flush_tokens=3, flush_interval_s=0.05, now=0.0, open_indexes=[1, 2], next_sequence_number=5
    )
    reply.add(SequenceUpdate("r", 1, [7]))
    assert reply.due(0.0), "the first chunk after a take-over goes out at once"
    assert reply.take(0.0).sequence_number == 5
    reply.add(SequenceUpdate("r", 1, [8], FinishReason.LENGTH))
    assert not reply.done
    reply.add(SequenceUpdate("r", 2, [9], FinishReason.EOS))
    assert reply.done and reply.take(0.0).sequence_number == 6


def test_a_cancelled_sequence_ends_without_a_word_and_a_fully_cancelled_request_with_an_empty_chunk():
    reply = buffer(sequences=2)
    reply.add(SequenceUpdate("r", 0, [1]))
    reply.add(SequenceUpdate("r", 1, [2]))
    reply.take(0.0)
    reply.add(SequenceUpdate("r", 1, [3]))
    reply.add(SequenceUpdate("r", 1, [], FinishReason.CANCELLED))
    assert not reply.due(0.01), "its reader stopped it: nothing to tell"
    reply.add(SequenceUpdate("r", 0, [4], FinishReason.CANCELLED))
    assert reply.done and reply.due(0.01)
    last = reply.take(0.01)
    assert not last.deltas and not last.HasField("error")
