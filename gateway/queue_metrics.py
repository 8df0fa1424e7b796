"""Queue depth, lag and pending count per model, sampled from Redis on a timer.

The gateway samples rather than counting per request: the numbers are
Redis's own (XLEN and the consumer group's lag and pending count, as KEDA
reads them), correct whichever gateway enqueued and whatever the workers
did, at one pipelined round trip per interval however busy the service is.
Every gateway reports the same streams; aggregate with max, not sum.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from pipeserve.metrics import QUEUE_DEPTH, QUEUE_LAG, QUEUE_PENDING
from pipeserve.queue.keys import CONSUMER_GROUP, Keys

log = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 5.0
# A sample is one round trip; one that takes this long means Redis is wedged.
SAMPLE_TIMEOUT_S = 5.0


class QueueSampler:
    def __init__(self, redis: aioredis.Redis, keys: Keys, models: Iterable[str]):
        self._redis = redis
        self._keys = keys
        self._models = list(models)
        self._failing = False

    async def sample(self) -> None:
        """Set the gauges from one pipelined round trip; raises RedisError when Redis does not answer."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for model in self._models:
                stream = self._keys.request_stream(model)
                pipe.xlen(stream)
                pipe.xinfo_groups(stream)
            results = await pipe.execute(raise_on_error=False)
        for model, depth, groups in zip(self._models, results[::2], results[1::2]):
            if isinstance(depth, Exception):
                raise depth
            QUEUE_DEPTH.labels(model).set(depth)
            if isinstance(groups, ResponseError):
                continue  # no stream yet: no worker has created its group, so nothing is lagging or pending
            if isinstance(groups, Exception):
                raise groups
            for group in groups:
                if _text(group["name"]) != CONSUMER_GROUP:
                    continue
                QUEUE_PENDING.labels(model).set(group["pending"])
                # None when Redis cannot tell (entries deleted past the group's position); keep the last value then.
                if group.get("lag") is not None:
                    QUEUE_LAG.labels(model).set(group["lag"])

    async def run(self, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        """Sample every ``interval_s`` until cancelled; a Redis failure is logged once, then retried quietly."""
        while True:
            try:
                async with asyncio.timeout(SAMPLE_TIMEOUT_S):
                    await self.sample()
            except (RedisError, TimeoutError) as exc:
                if not self._failing:
                    log.warning("cannot sample the queue metrics from Redis (%s); retrying every %g s", exc, interval_s)
                self._failing = True
            else:
                if self._failing:
                    log.info("queue metrics sampled again")
                self._failing = False
            await asyncio.sleep(interval_s)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@contextlib.asynccontextmanager
async def sampling_queue_metrics(redis: aioredis.Redis, keys: Keys, models: Iterable[str]) -> AsyncIterator[None]:
    """Run a QueueSampler in the background while the block runs."""
    task = asyncio.create_task(QueueSampler(redis, keys, models).run(), name="queue-metrics")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
