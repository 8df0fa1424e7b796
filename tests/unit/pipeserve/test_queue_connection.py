"""Redis clients survive the way grpc cancels handlers: no connection leaks, no cancellation is lost."""

from __future__ import annotations

import asyncio
import random

from pipeserve.queue.connection import async_client

CALLERS = 40
ROUNDS = 25


async def test_callers_cancelled_mid_command_get_cancelled_and_leak_no_connection(redis_url, key_prefix):
    """What the soak did to the tokenizer: streams read by blocking XREADs, cancelled at any moment, often twice.

    With redis-py's own asyncio client this loses cancellations (the caller
    keeps running) and leaks pool connections until every command fails
    with "Too many connections".
    """
    client = async_client(redis_url)
    rng = random.Random(0)
    not_stopped = 0

    async def read_until_cancelled(stream: str) -> None:
        try:
            while True:
                await client.xread({stream: "0-0"}, block=20)
        finally:
            await client.delete(stream)  # cleanup that awaits Redis, as a handler's finally does

    async def caller(index: int) -> None:
        nonlocal not_stopped
        for _ in range(ROUNDS):
            task = asyncio.create_task(read_until_cancelled(f"{key_prefix}:stream-{index}"))
            await asyncio.sleep(rng.random() * 0.03)
            task.cancel()
            if rng.random() < 0.5:  # grpc cancels again while the handler cleans up
                await asyncio.sleep(rng.random() * 0.001)
                task.cancel()
            done, _ = await asyncio.wait([task], timeout=2)
            not_stopped += not done

    try:
        await asyncio.gather(*(caller(index) for index in range(CALLERS)))
        await asyncio.sleep(0.3)  # a shielded read ends within its block time
        assert not_stopped == 0, "cancelled callers kept running"
        assert len(client.connection_pool._in_use_connections) == 0, "connections leaked from the pool"
    finally:
        await client.aclose()
