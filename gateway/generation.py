"""GenerationService: validate → preprocess → enqueue → relay the tokenizer's text stream.

Both RPCs run the same ``GenerationFlow``; GenerateStream numbers its
messages, Generate folds them into one Completion per sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import AsyncIterator

import grpc
from opentelemetry import trace

from gateway.clients import TokenizerClient
from gateway.deadline import Deadline
from gateway.request_log import RequestLog
from gateway.validation import RequestLimits, validate_generation_request
from pipeserve import tracing
from pipeserve.config import ModelSpec
from pipeserve.errors import ResourceExhausted, Unavailable, grpc_errors
from pipeserve.internal.v1 import queue_pb2, tokenizer_pb2
from pipeserve.queue import producer
from pipeserve.queue.producer import EnqueueTimeout, RequestQueue
from pipeserve.queue.protocol import now_ms
from pipeserve.request_context import REQUEST_ID_METADATA, bind_request_id
from pipeserve.v1 import generation_pb2, generation_pb2_grpc

log = logging.getLogger(__name__)

# Raising the cancel flag is best effort: a hung Redis must not hold a
# finished call open. The worker still stops at max_new_tokens or the deadline.
CANCEL_TIMEOUT_S = 2.0


class GenerationFlow:
    """The path one generation request takes through the gateway, shared by both RPCs."""

    def __init__(
        self,
        *,
        models: dict[str, ModelSpec],
        limits: RequestLimits,
        tokenizer: TokenizerClient,
        queue: RequestQueue,
        request_timeout_s: float,
    ):
        self._models = models
        self._limits = limits
        self._tokenizer = tokenizer
        self._queue = queue
        self._request_timeout_s = request_timeout_s

    async def texts(
        self, rpc: str, request, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tokenizer_pb2.StreamTextResponse]:
        """Yield the text deltas of one request; the caller must close this generator (contextlib.aclosing).

        Once the work item may be on the queue, any ending other than the
        tokenizer's stream running out (client gone, deadline, an error)
        raises the request's cancel flag so the worker frees its slot.

        The request id is bound for the rest of the call (grpc.aio gives each
        call its own task), so every log line of it, and the tokenizer calls'
        metadata, name it.
        """
        request_id = uuid.uuid4().hex
        bind_request_id(request_id)
        trace.get_current_span().set_attribute("pipeserve.request_id", request_id)
        deadline = Deadline.for_call(context, self._request_timeout_s)
        with RequestLog(rpc, request.model, served=self._models, deadline=deadline) as accounting:
            await context.send_initial_metadata(((REQUEST_ID_METADATA, request_id),))
            validate_generation_request(request, self._models, self._limits)
            preprocessed = await self._tokenizer.preprocess(request, deadline)
            item = queue_pb2.WorkItem(
                request_id=request_id,
                model=request.model,
                prompt_token_ids=preprocessed.prompt_token_ids,
                sampling=preprocessed.sampling,
                deadline_unix_ms=deadline.unix_ms,
                enqueued_unix_ms=now_ms(),
            )
            tracing.inject(item.trace_context)
            stream_request = tokenizer_pb2.StreamTextRequest(
                request_id=request_id,
                model=request.model,
                prompt_token_ids=preprocessed.prompt_token_ids,
                decode=preprocessed.decode,
            )
            may_hold_a_slot = True
            try:
                try:
                    await self._enqueue(item, deadline)
                except (ResourceExhausted, Unavailable):
                    # The queue refused the item, or Redis could not be reached: nothing to cancel.
                    may_hold_a_slot = False
                    raise
                async with contextlib.aclosing(self._tokenizer.stream_text(stream_request, deadline)) as texts:
                    async for text in texts:
                        accounting.streamed(text.index, len(text.token_ids))
                        yield text
                may_hold_a_slot = False
            finally:
                if may_hold_a_slot:
                    await self._cancel(request_id)

    async def _enqueue(self, item: queue_pb2.WorkItem, deadline: Deadline) -> None:
        try:
            await self._queue.enqueue(
                item, timeout_s=min(producer.ENQUEUE_TIMEOUT_S, deadline.timeout_for("enqueueing"))
            )
        except EnqueueTimeout:
            if deadline.expired():
                raise deadline.exceeded("enqueueing") from None
            raise

    async def _cancel(self, request_id: str) -> None:
        """Shielded: grpc may cancel the handler again while this runs, and the flag must still go up."""
        try:
            await asyncio.shield(asyncio.wait_for(self._queue.cancel(request_id), CANCEL_TIMEOUT_S))
        except TimeoutError:
            log.warning("request_id=%s: could not raise the cancel flag within %g s", request_id, CANCEL_TIMEOUT_S)


class _CompletionParts:
    """One sequence of a unary Generate, gathered delta by delta (joined once, not concatenated per delta)."""

    def __init__(self, index: int):
        self.index = index
        self.texts: list[str] = []
        self.token_ids: list[int] = []
        self.finish_reason = 0

    def add(self, delta: tokenizer_pb2.StreamTextResponse) -> None:
        self.texts.append(delta.text)
        self.token_ids.extend(delta.token_ids)
        if delta.finish_reason:
            self.finish_reason = delta.finish_reason

    def to_pb(self) -> generation_pb2.Completion:
        return generation_pb2.Completion(
            index=self.index, text="".join(self.texts), token_ids=self.token_ids, finish_reason=self.finish_reason
        )


class GenerationServicer(generation_pb2_grpc.GenerationServiceServicer):
    def __init__(self, flow: GenerationFlow):
        self._flow = flow

    @grpc_errors
    async def Generate(self, request: generation_pb2.GenerateRequest, context) -> generation_pb2.GenerateResponse:
        completions: dict[int, _CompletionParts] = {}
        response = generation_pb2.GenerateResponse(model=request.model)
        async with contextlib.aclosing(self._flow.texts("Generate", request, context)) as texts:
            async for delta in texts:
                completions.setdefault(delta.index, _CompletionParts(delta.index)).add(delta)
                if delta.HasField("usage"):
                    response.usage.CopyFrom(delta.usage)
        response.completions.extend(completions[index].to_pb() for index in sorted(completions))
        return response

    @grpc_errors
    async def GenerateStream(
        self, request: generation_pb2.GenerateStreamRequest, context
    ) -> AsyncIterator[generation_pb2.GenerateStreamResponse]:
        sequence_numbers = itertools.count()
        async with contextlib.aclosing(self._flow.texts("GenerateStream", request, context)) as texts:
            async for delta in texts:
                yield generation_pb2.GenerateStreamResponse(
                    sequence_number=next(sequence_numbers),
                    index=delta.index,
                    text=delta.text,
                    token_ids=delta.token_ids,
                    finish_reason=delta.finish_reason,
                    usage=delta.usage if delta.HasField("usage") else None,
                )
