"""Model-worker side of the queue (blocking; the engine loop is synchronous).

One WorkConsumer per (worker, model): it reads work items through the
consumer group, publishes reply chunks, reads cancel flags, and acknowledges
an entry only once its reply is final, so a worker that dies leaves its
entries pending for another to claim.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import redis
from redis.exceptions import ResponseError

from pipeserve.internal.v1 import queue_pb2
from pipeserve.queue.keys import CONSUMER_GROUP, Keys
from pipeserve.queue.protocol import ALL_SEQUENCES, PAYLOAD_FIELD, decode_work_item, encode

log = logging.getLogger(__name__)

Cancelled = dict[str, set[int] | None]
"""request id -> cancelled sequence indexes, or None when every sequence is cancelled."""


class WorkConsumer:
    def __init__(self, client: redis.Redis, keys: Keys, model: str, consumer: str, *, key_ttl_s: int):
        self._redis = client
        self._keys = keys
        self._model = model
        self._consumer = consumer
        self._stream = keys.request_stream(model)
        self._key_ttl_s = key_ttl_s

    @property
    def consumer(self) -> str:
        return self._consumer

    def ensure_group(self) -> None:
        try:
            self._redis.xgroup_create(self._stream, CONSUMER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def heartbeat(self) -> None:
        """Tell gateways this worker is alive (they refuse work for a model with none)."""
        self._redis.zadd(self._keys.workers(self._model), {self._consumer: time.time()})

    def leave(self) -> None:
        self._redis.zrem(self._keys.workers(self._model), self._consumer)

    def read(self, count: int, block_ms: int | None) -> list[tuple[str, queue_pb2.WorkItem]]:
        """New work items for this consumer; block_ms=None returns at once.

        An entry that does not parse is acknowledged and dropped (it has no
        request id to answer), so it cannot wedge the stream.
        """
        response = self._redis.xreadgroup(
            CONSUMER_GROUP, self._consumer, {self._stream: ">"}, count=count, block=block_ms
        )
        items = []
        for _stream, entries in response or []:
            for entry_id, fields in entries:
                entry = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                try:
                    items.append((entry, decode_work_item(fields[PAYLOAD_FIELD])))
                except Exception:  # noqa: BLE001 - any undecodable entry is dropped the same way
                    log.error("dropping malformed work item %s on %s", entry, self._stream)
                    self.finish([entry])
        return items

    def publish(self, chunks: Iterable[tuple[str, queue_pb2.ReplyChunk]]) -> None:
        """Append reply chunks to their requests' reply streams in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        count = 0
        for request_id, chunk in chunks:
            stream = self._keys.reply_stream(request_id)
            pipe.xadd(stream, {PAYLOAD_FIELD: encode(chunk)})
            pipe.expire(stream, self._key_ttl_s)
            count += 1
        if count:
            pipe.execute()

    def cancelled(self, request_ids: Iterable[str]) -> Cancelled:
        """Cancel flags raised for any of these requests, in one round trip."""
        ids = list(request_ids)
        if not ids:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for request_id in ids:
            pipe.smembers(self._keys.cancel(request_id))
        result: Cancelled = {}
        for request_id, members in zip(ids, pipe.execute()):
            if not members:
                continue
            flags = {m.decode() if isinstance(m, bytes) else m for m in members}
            result[request_id] = None if ALL_SEQUENCES in flags else {int(f) for f in flags if f.isdigit()}
        return result

    def finish(self, entry_ids: Iterable[str]) -> None:
        """Acknowledge and delete entries whose reply is final (the queue depth counts the rest)."""
        ids = list(entry_ids)
        if ids:
            pipe = self._redis.pipeline(transaction=False)
            pipe.xack(self._stream, CONSUMER_GROUP, *ids)
            pipe.xdel(self._stream, *ids)
            pipe.execute()
