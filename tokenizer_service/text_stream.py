"""StreamText without gRPC: one request's reply chunks in, text deltas out.

Each sequence of the request has its own detokenizer and stop-string
matcher. Tokens are fed one at a time, so a stop string is attributed to
the token that completed it: that token is the last one returned and
counted, and the sequence's cancel flag goes up at once so the worker frees
its slot at its next step.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence

import grpc

from pipeserve.errors import InvalidArgument, PipeserveError, StatusError, status_code_from_int
from pipeserve.internal.v1 import queue_pb2, tokenizer_pb2
from pipeserve.metrics import TOKENIZER_SECONDS
from pipeserve.v1 import types_pb2
from tokenizer_service.detokenizer import DecodeTraits, IncrementalDetokenizer
from tokenizer_service.stop_strings import StopStringMatcher

FINISH = types_pb2.FinishReason
CancelSequence = Callable[[str], Awaitable[None]]
"""Raises the cancel flag of one sequence, given its index as the flag's member (ReplyStream.cancel)."""


class SequenceText:
    """The text of one generated sequence, delta by delta."""

    def __init__(
        self,
        index: int,
        tokenizer,
        prompt_ids: Sequence[int],
        options: tokenizer_pb2.DecodeOptions,
        traits: DecodeTraits,
        prompt_text: str,
    ):
        self.index = index
        self._detokenizer = IncrementalDetokenizer(
            tokenizer, prompt_ids, skip_special_tokens=options.skip_special_tokens, traits=traits
        )
        self._stops = StopStringMatcher(options.stop)
        # Prepended to this sequence's first message (return_full_text).
        self._lead = prompt_text
        self.consumed_tokens = 0
        self.finished = False

    def apply(self, delta: queue_pb2.SequenceDelta) -> tokenizer_pb2.StreamTextResponse | None:
        """Consume one worker delta; None when it gives the client nothing new."""
        texts: list[str] = []
        token_ids: list[int] = []
        finish_reason = FINISH.FINISH_REASON_UNSPECIFIED
        for token_id in delta.token_ids:
            token_ids.append(token_id)
            released, stopped = self._stops.push(self._detokenizer.push(token_id))
            texts.append(released)
            if stopped:
                finish_reason = FINISH.FINISH_REASON_STOP
                break
        else:
            if delta.finish_reason != FINISH.FINISH_REASON_UNSPECIFIED:
                released, stopped = self._stops.push(self._detokenizer.finish())
                texts.append(released)
                if stopped:
                    finish_reason = FINISH.FINISH_REASON_STOP
                else:
                    texts.append(self._stops.flush())
                    finish_reason = delta.finish_reason
        self.consumed_tokens += len(token_ids)
        self.finished = finish_reason != FINISH.FINISH_REASON_UNSPECIFIED
        text = "".join(texts)
        if not (text or token_ids or self.finished):
            return None
        text, self._lead = self._lead + text, ""
        return tokenizer_pb2.StreamTextResponse(
            index=self.index, text=text, token_ids=token_ids, finish_reason=finish_reason
        )


async def stream_text(
    tokenizer,
    prompt_ids: Sequence[int],
    options: tokenizer_pb2.DecodeOptions,
    chunks: AsyncIterable[queue_pb2.ReplyChunk],
    cancel_sequence: CancelSequence,
    *,
    traits: DecodeTraits | None = None,
    continues_prompt: bool = True,
) -> AsyncIterator[tokenizer_pb2.StreamTextResponse]:
    """Text deltas of every sequence, in chunk order; the last one carries usage.

    ``continues_prompt`` is False for encoder-decoder models: their output is
    decoded on its own (``decode(generated)``), not as the prompt's continuation.

    Stops reading as soon as every sequence has finished. A chunk carrying an
    error ends the stream with the worker's status code.
    """
    if any(not stop for stop in options.stop):
        raise InvalidArgument("decode.stop holds an empty string; stop strings must not be empty")
    traits = traits or DecodeTraits.of(tokenizer)
    prompt_text = (
        tokenizer.decode(list(prompt_ids), skip_special_tokens=options.skip_special_tokens)
        if options.return_full_text
        else ""
    )
    # Created on their first delta: a request's sequence count is the caller's word, not an allocation.
    count = max(options.num_sequences, 1)
    sequences: dict[int, SequenceText] = {}
    finished = 0
    detokenize_seconds = TOKENIZER_SECONDS.labels("detokenize")
    async for chunk in chunks:
        if chunk.HasField("error"):
            raise worker_error(chunk.error)
        for delta in chunk.deltas:
            if delta.index >= count:
                raise PipeserveError(f"the model worker replied for sequence {delta.index} of a request with {count}")
            sequence = sequences.get(delta.index)
            if sequence is None:
                sequence = sequences[delta.index] = SequenceText(
                    delta.index, tokenizer, prompt_ids if continues_prompt else (), options, traits, prompt_text
                )
            if sequence.finished:
                continue
            started = time.perf_counter()
            response = sequence.apply(delta)
            detokenize_seconds.observe(time.perf_counter() - started)
            if response is None:
                continue
            if sequence.finished:
                finished += 1
                if response.finish_reason == FINISH.FINISH_REASON_STOP:
                    await cancel_sequence(str(delta.index))
                if finished == count:
                    response.usage.CopyFrom(
                        types_pb2.Usage(
                            prompt_tokens=len(prompt_ids),
                            completion_tokens=sum(s.consumed_tokens for s in sequences.values()),
                        )
                    )
            yield response
            if finished == count:
                return
    raise PipeserveError(f"the reply stream ended with {count - finished} of {count} sequences unfinished")


def worker_error(error: queue_pb2.ReplyError) -> StatusError:
    code = status_code_from_int(error.code)
    if code == grpc.StatusCode.OK:
        code = grpc.StatusCode.UNKNOWN
    return StatusError(code, error.message or f"the model worker failed with {code.name}")
