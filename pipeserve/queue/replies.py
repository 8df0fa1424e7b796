"""Tokenizer side of the queue: read one request's reply chunks in order, cancel it, clean up."""

from __future__ import annotations

from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from pipeserve.errors import DeadlineExceeded, Unavailable
from pipeserve.internal.v1 import queue_pb2
from pipeserve.queue.cancel import raise_cancel_flag
from pipeserve.queue.keys import Keys
from pipeserve.queue.protocol import ALL_SEQUENCES, PAYLOAD_FIELD, decode_reply_chunk, now_ms


class ReplyStream:
    """The reply stream of one request, as its detokenizing reader sees it."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, request_id: str, *, key_ttl_s: int, block_ms: int = 1000):
        self._redis = redis
        self._keys = keys
        self._request_id = request_id
        self._stream = keys.reply_stream(request_id)
        self._key_ttl_s = key_ttl_s
        self._block_ms = block_ms

    async def chunks(self, deadline_unix_ms: int = 0) -> AsyncIterator[queue_pb2.ReplyChunk]:
        """Yield chunks in sequence order, each once, until the caller stops iterating.

        Chunks carry sequence numbers; one already seen (a worker that resumed
        a request republishing it) is dropped here.
        """
        last_id = "0-0"
        expected = 0
        while True:
            block = self._block_ms
            if deadline_unix_ms:
                remaining = deadline_unix_ms - now_ms()
                if remaining <= 0:
                    raise DeadlineExceeded("the request's deadline passed before generation finished")
                block = max(1, min(block, remaining))
            try:
                batches = await self._redis.xread({self._stream: last_id}, block=block, count=64)
            except RedisError as exc:
                raise Unavailable(f"lost the connection to the request queue (Redis): {exc}") from exc
            for _stream, entries in batches:
                for entry_id, fields in entries:
                    last_id = entry_id
                    chunk = decode_reply_chunk(fields[PAYLOAD_FIELD])
                    if chunk.sequence_number < expected:
                        continue
                    expected = chunk.sequence_number + 1
                    yield chunk

    async def cancel(self, index: str = ALL_SEQUENCES) -> None:
        """Tell the worker to stop one sequence (or all) at its next step."""
        await raise_cancel_flag(self._redis, self._keys, self._request_id, key_ttl_s=self._key_ttl_s, index=index)

    async def end(self, *, cancel: bool) -> None:
        """The request is over for its reader: raise its cancel flag when it was left unfinished, drop the stream."""
        if cancel:
            await self.cancel()
        await self.delete()

    async def delete(self) -> None:
        """Drop the reply stream once the request is over (its TTL covers a crash before this)."""
        try:
            await self._redis.delete(self._stream)
        except RedisError:
            pass
