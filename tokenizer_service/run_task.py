"""One forward-only pipeline request, start to end, inside the tokenizer service.

preprocess -> one work item on the model's stream -> wait for its one reply
chunk -> postprocess. The state between preprocess and postprocess (offset
mappings, word ids, which rows belong to which item) stays in this call and
this process; only token-id rows go to the worker and only output tensors
come back. Enqueueing here rather than in the gateway saves a hop (the
tensors go worker -> tokenizer, never through the gateway) and keeps the
state where it was made.

However the call ends before its reply (caller gone, deadline, Redis
lost), the request's cancel flag goes up so a worker that has not run it
yet never will, and its reply stream is deleted. A forward is idempotent,
so the gateway may simply call again (another tokenizer, a new request id).
"""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis

from pipeserve import tracing
from pipeserve.errors import InvalidArgument, PipeserveError
from pipeserve.internal.v1 import queue_pb2
from pipeserve.queue.forward_rows import forward_work, outputs_of
from pipeserve.queue.keys import Keys
from pipeserve.queue.producer import RequestQueue
from pipeserve.queue.protocol import now_ms
from pipeserve.queue.replies import ReplyStream
from pipeserve.v1 import pipelines_pb2
from tokenizer_service.tasks.forward import ForwardTask
from tokenizer_service.text_stream import worker_error
from tokenizer_service.worker_thread import timed_in_thread


class TaskRunner:
    def __init__(self, redis: aioredis.Redis, keys: Keys, queue: RequestQueue, *, key_ttl_s: int, max_rows: int):
        self._redis = redis
        self._keys = keys
        self._queue = queue
        self._key_ttl_s = key_ttl_s
        self._max_rows = max_rows

    async def run(
        self, handler: ForwardTask, request_id: str, request: pipelines_pb2.PipelineRequest, deadline_unix_ms: int
    ) -> pipelines_pb2.PipelineResponse:
        if request.WhichOneof("input") != handler.input_field:
            raise InvalidArgument(
                f"task {handler.task!r} takes the {handler.input_field} input, "
                f"but the request sets {request.WhichOneof('input') or 'none'}"
            )
        input_msg = getattr(request, handler.input_field)
        prepared = await timed_in_thread("preprocess", handler.preprocess, input_msg)
        if len(prepared.rows) > self._max_rows:
            # The gateway counted texts; windows of long texts (stride, doc_stride) are only known here.
            raise InvalidArgument(
                f"{handler.input_field} becomes {len(prepared.rows)} model rows (long texts are cut into windows); "
                f"at most {self._max_rows} are accepted per request (PIPESERVE_MAX_PIPELINE_ROWS): send fewer or "
                "shorter texts, or a smaller stride"
            )
        item = queue_pb2.WorkItem(
            request_id=request_id,
            model=request.model,
            deadline_unix_ms=deadline_unix_ms,
            enqueued_unix_ms=now_ms(),
            forward=forward_work(prepared.rows, handler.output_names, handler.token_outputs),
        )
        tracing.inject(item.trace_context)
        chunk = await self._forward(item)
        outputs = outputs_of(chunk.forward)
        if len(outputs) != len(prepared.rows):
            raise PipeserveError(f"the worker returned {len(outputs)} output rows for {len(prepared.rows)} rows")
        output = await timed_in_thread("postprocess", handler.postprocess, input_msg, prepared.state, outputs)
        response = pipelines_pb2.PipelineResponse(model=request.model, task=handler.task)
        getattr(response, handler.input_field).CopyFrom(output)
        return response

    async def _forward(self, item: queue_pb2.WorkItem) -> queue_pb2.ReplyChunk:
        """Enqueue the item and wait for its one reply chunk; a worker's error becomes this call's status."""
        replies = ReplyStream(self._redis, self._keys, item.request_id, key_ttl_s=self._key_ttl_s)
        answered = False
        enqueued = False
        try:
            await self._queue.enqueue(item)
            enqueued = True
            async with contextlib.aclosing(replies.chunks(item.deadline_unix_ms)) as chunks:
                async for chunk in chunks:
                    answered = True
                    if chunk.HasField("error"):
                        raise worker_error(chunk.error)
                    return chunk
            raise PipeserveError("the reply stream ended without a reply")
        finally:
            if enqueued:
                # Shielded: grpc may cancel the handler again while this runs, and the cleanup must still happen.
                await asyncio.shield(replies.end(cancel=not answered))
