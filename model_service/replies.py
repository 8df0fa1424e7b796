"""Chunked reply publishing: when a request's new tokens become a ReplyChunk.

Publishing every token costs a Redis round trip (and a gRPC message
downstream) per token per request; publishing rarely hurts streaming. So a
request's tokens are held back and flushed as one chunk when the first
token arrives (time to first token is never traded away), when any sequence
has ``flush_tokens`` pending, when ``flush_interval_s`` has passed since the
last chunk, and always when the request ends.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from model_service.engine.interface import FinishReason, SequenceUpdate
from pipeserve.internal.v1 import queue_pb2
from pipeserve.v1 import types_pb2

FINISH_REASONS = {
    FinishReason.EOS: types_pb2.FINISH_REASON_EOS,
    FinishReason.LENGTH: types_pb2.FINISH_REASON_LENGTH,
}


def error_chunk(code: grpc.StatusCode, message: str, sequence_number: int = 0) -> queue_pb2.ReplyChunk:
    return queue_pb2.ReplyChunk(
        sequence_number=sequence_number, error=queue_pb2.ReplyError(code=code.value[0], message=message)
    )


class ReplyBuffer:
    """The not-yet-published output of one request, with its chunk numbering.

    A resumed request (see model_service.resume) passes the sequences still
    open and the chunk number to continue from; its first chunk from this
    worker goes out at once, like a new request's.
    """

    def __init__(
        self,
        request_id: str,
        sequences: int,
        *,
        flush_tokens: int,
        flush_interval_s: float,
        now: float,
        open_indexes: Iterable[int] | None = None,
        next_sequence_number: int = 0,
    ):
        self.request_id = request_id
        self._flush_tokens = flush_tokens
        self._flush_interval_s = flush_interval_s
        indexes = range(sequences) if open_indexes is None else open_indexes
        self._pending: dict[int, list[int]] = {index: [] for index in indexes}
        self._finished: dict[int, FinishReason] = {}
        self._newly_finished: list[int] = []
        self._unfinished = len(self._pending)
        self._error: queue_pb2.ReplyError | None = None
        self._forward: queue_pb2.ForwardResult | None = None
        self._next_sequence_number = next_sequence_number
        self._taken_any = False
        self._last_flush = now

    @property
    def done(self) -> bool:
        """Every sequence has finished, or the request failed: the next chunk is the last."""
        return self._unfinished == 0 or self._error is not None

    def add(self, update: SequenceUpdate) -> None:
        """Note a sequence's new tokens; a cancelled sequence ends without a word.

        Cancelled means its reader stopped it (a stop string, a client gone)
        or its deadline passed: nobody reads on, so its last tokens and its
        finish are not published, and a request whose sequences all ended
        that way has no final chunk (``take`` returns an empty one).
        """
        if update.index in self._finished:
            return
        if update.finish_reason is FinishReason.CANCELLED:
            self._pending[update.index] = []
            self._finished[update.index] = update.finish_reason
            self._unfinished -= 1
            return
        self._pending[update.index].extend(update.token_ids)
        if update.finish_reason is not None:
            self._finished[update.index] = update.finish_reason
            self._newly_finished.append(update.index)
            self._unfinished -= 1

    def complete(self, result: queue_pb2.ForwardResult) -> None:
        """End a forward-only request with its outputs: they go out as its one and only chunk."""
        self._forward = result
        self._unfinished = 0

    def fail(self, code: grpc.StatusCode, message: str) -> None:
        """End the request with an error; tokens still pending go out with it."""
        if self._error is None:
            self._error = queue_pb2.ReplyError(code=code.value[0], message=message)

    def due(self, now: float) -> bool:
        if self.done:
            return True
        pending = max(len(tokens) for tokens in self._pending.values())
        if not pending and not self._newly_finished:
            return False
        return (
            not self._taken_any
            or bool(self._newly_finished)
            or pending >= self._flush_tokens
            or now - self._last_flush >= self._flush_interval_s
        )

    def take(self, now: float) -> queue_pb2.ReplyChunk:
        """The chunk of everything pending (and the error, if any), numbered 0, 1, 2, ... per request."""
        chunk = queue_pb2.ReplyChunk(sequence_number=self._next_sequence_number)
        for index, tokens in self._pending.items():
            newly_finished = index in self._newly_finished
            if tokens or newly_finished:
                delta = chunk.deltas.add(index=index, token_ids=tokens)
                if newly_finished:
                    delta.finish_reason = FINISH_REASONS[self._finished[index]]
                self._pending[index] = []
        self._newly_finished = []
        if self._error is not None:
            chunk.error.CopyFrom(self._error)
        elif self._forward is not None:
            chunk.forward.CopyFrom(self._forward)
        self._next_sequence_number += 1
        self._taken_any = True
        self._last_flush = now
        return chunk
