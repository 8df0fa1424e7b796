"""Cancel flags: raised by the gateway (client gone) or the tokenizer (stop string hit),
read by the model worker between decode steps (consumer.WorkConsumer.cancelled)."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from pipeserve.queue.keys import Keys
from pipeserve.queue.protocol import ALL_SEQUENCES


async def raise_cancel_flag(
    redis: aioredis.Redis, keys: Keys, request_id: str, *, key_ttl_s: int, index: str = ALL_SEQUENCES
) -> None:
    """Mark one sequence of a request (or all of them) cancelled; best effort.

    A failure is swallowed: whoever cancels has nobody to tell, and the
    worker still stops at max_new_tokens while the keys' TTLs bound the rest.
    """
    key = keys.cancel(request_id)
    try:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.sadd(key, index)
            pipe.expire(key, key_ttl_s)
            await pipe.execute()
    except RedisError:
        pass
