"""Gateway side of the queue: bounded enqueue, cancellation, queue depth."""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from pipeserve.errors import ResourceExhausted, Unavailable
from pipeserve.internal.v1 import queue_pb2
from pipeserve.queue.cancel import raise_cancel_flag
from pipeserve.queue.keys import Keys
from pipeserve.queue.protocol import ENQUEUE_SCRIPT, encode

log = logging.getLogger(__name__)

ENQUEUE_TIMEOUT_S = 5.0
"""Redis answers in milliseconds: an enqueue this slow means it is wedged, so UNAVAILABLE now, not at the deadline."""


class EnqueueTimeout(Unavailable):
    """Redis did not answer the enqueue in time (a wedged server, or the caller's shorter deadline)."""


class RequestQueue:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        *,
        max_depth: int,
        worker_liveness_s: float,
        key_ttl_s: int,
    ):
        """worker_liveness_s: reject with UNAVAILABLE when no worker of the model
        sent a heartbeat this recently (0 disables the check, e.g. when an
        autoscaler starts workers from zero on queue depth)."""
        self._redis = redis
        self._keys = keys
        self._max_depth = max_depth
        self._worker_liveness_s = worker_liveness_s
        self._key_ttl_s = key_ttl_s
        self._enqueue = redis.register_script(ENQUEUE_SCRIPT)
        # Cancel flags of timed-out enqueues, raised without holding their callers (referenced until done).
        self._late_cancels: set[asyncio.Task] = set()

    async def enqueue(self, item: queue_pb2.WorkItem, *, timeout_s: float | None = None) -> str:
        """Add a work item to its model's stream, or raise without adding anything.

        EnqueueTimeout when Redis does not answer within timeout_s (default ENQUEUE_TIMEOUT_S).
        The command still runs (Redis commands are shielded from cancellation,
        see connection.CancelSafeRedis), so a slow Redis may add the item after
        all: its cancel flag goes up in the background, and a worker that reads
        it drops it before running anything.
        """
        timeout_s = ENQUEUE_TIMEOUT_S if timeout_s is None else timeout_s
        oldest_heartbeat = time.time() - self._worker_liveness_s if self._worker_liveness_s > 0 else 0
        try:
            async with asyncio.timeout(timeout_s):
                entry_id, depth = await self._enqueue(
                    keys=[self._keys.request_stream(item.model), self._keys.workers(item.model)],
                    args=[self._max_depth, encode(item), oldest_heartbeat],
                )
        except TimeoutError:
            cancel = asyncio.create_task(self._cancel_late(item.request_id))
            self._late_cancels.add(cancel)
            cancel.add_done_callback(self._late_cancels.discard)
            raise EnqueueTimeout(
                f"the request queue (Redis) did not answer within {timeout_s:g} s; retry later"
            ) from None
        except RedisError as exc:
            raise Unavailable(f"the request queue (Redis) is unavailable: {exc}") from exc
        if entry_id == -1:
            raise ResourceExhausted(
                f"model {item.model!r} has {depth} requests queued (limit {self._max_depth}); retry later"
            )
        if entry_id == -2:
            raise Unavailable(f"no model worker for {item.model!r} is alive; retry once one has started")
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    async def cancel(self, request_id: str) -> None:
        """End a request its client left: raise its cancel flag, so the worker drops it at its next step.

        Its reply stream goes too: no StreamText will resume the request now
        (a tokenizer whose call was cancelled leaves the stream for one), and
        the worker publishes nothing more for a cancelled request. Best effort,
        like the flag; the key TTL covers a failure.
        """
        await raise_cancel_flag(self._redis, self._keys, request_id, key_ttl_s=self._key_ttl_s)
        try:
            await self._redis.delete(self._keys.reply_stream(request_id))
        except RedisError:
            pass

    async def _cancel_late(self, request_id: str) -> None:
        try:
            async with asyncio.timeout(ENQUEUE_TIMEOUT_S):
                await self.cancel(request_id)
        except TimeoutError:
            log.warning("request %s: could not raise the cancel flag of its timed-out enqueue either", request_id)

    async def depth(self, model: str) -> int:
        return await self._redis.xlen(self._keys.request_stream(model))
