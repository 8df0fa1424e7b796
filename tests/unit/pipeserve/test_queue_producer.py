"""RequestQueue.enqueue against a Redis that answers late: the caller is not held, and nothing runs for nobody."""

from __future__ import annotations

import asyncio
import contextlib
import time
from urllib.parse import urlparse

import pytest

from pipeserve.internal.v1 import queue_pb2
from pipeserve.queue.connection import async_client
from pipeserve.queue.producer import EnqueueTimeout, RequestQueue
from pipeserve.queue.protocol import ENQUEUE_SCRIPT, PAYLOAD_FIELD, decode_work_item

MODEL = "m"
REPLY_DELAY_S = 0.5


@pytest.fixture
async def slow_redis_url(redis_url):
    """A proxy in front of the test Redis that passes commands at once and holds every reply REPLY_DELAY_S."""
    upstream = urlparse(redis_url)

    async def pipe(reader, writer, delay_s: float) -> None:
        try:
            while data := await reader.read(65536):
                await asyncio.sleep(delay_s)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def connect(client_reader, client_writer) -> None:
        redis_reader, redis_writer = await asyncio.open_connection(upstream.hostname, upstream.port)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(pipe(client_reader, redis_writer, 0), pipe(redis_reader, client_writer, REPLY_DELAY_S))

    server = await asyncio.start_server(connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"redis://127.0.0.1:{port}{upstream.path}"
    server.close()


async def test_an_enqueue_that_lands_after_its_timeout_has_its_cancel_flag_raised(slow_redis_url, redis, keys):
    await redis.zadd(keys.workers(MODEL), {"worker-1": time.time()})
    await redis.script_load(ENQUEUE_SCRIPT)  # cached, as after a service's first enqueue: one EVALSHA does it all
    client = async_client(slow_redis_url)
    queue = RequestQueue(client, keys, max_depth=10, worker_liveness_s=30, key_ttl_s=60)
    item = queue_pb2.WorkItem(request_id="late", model=MODEL, prompt_token_ids=[1, 2])

    started = time.monotonic()
    with pytest.raises(EnqueueTimeout, match="did not answer within 0.2 s"):
        await queue.enqueue(item, timeout_s=0.2)
    assert time.monotonic() - started < REPLY_DELAY_S  # the caller was not held for the late answer

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        entries = await redis.xrange(keys.request_stream(MODEL))
        if entries and await redis.exists(keys.cancel("late")):
            break
        await asyncio.sleep(0.05)
    assert [decode_work_item(fields[PAYLOAD_FIELD]).request_id for _, fields in entries] == ["late"]
    assert await redis.smembers(keys.cancel("late")), "the late item's cancel flag is not raised"
    assert 0 < await redis.ttl(keys.cancel("late")) <= 60
    await client.aclose()
