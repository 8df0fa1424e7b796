"""Model-worker side of the queue (blocking; the engine loop is synchronous).

One WorkConsumer per (worker, model): it reads work items through the
consumer group, publishes reply chunks, reads cancel flags, and acknowledges
an entry only once its reply is final, so a worker that dies leaves its
entries pending for another to claim.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

import redis
from redis.exceptions import ResponseError

from pipeserve.internal.v1 import queue_pb2
from pipeserve.queue.keys import CONSUMER_GROUP, Keys
from pipeserve.queue.protocol import ALL_SEQUENCES, PAYLOAD_FIELD, PUBLISH_SCRIPT, decode_work_item, encode

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
        self._publish = client.register_script(PUBLISH_SCRIPT)

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
        return [item for _stream, entries in response or [] for item in self._decode(entries)]

    def _decode(self, entries) -> list[tuple[str, queue_pb2.WorkItem]]:
        items = []
        for entry_id, fields in entries:
            entry = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            try:
                items.append((entry, decode_work_item(fields[PAYLOAD_FIELD])))
            except Exception:  # noqa: BLE001 - any undecodable entry is dropped the same way
                log.error("dropping malformed work item %s on %s", entry, self._stream)
                self.finish([entry])
        return items

    def publish(self, chunks: Iterable[tuple[str, queue_pb2.ReplyChunk]]) -> None:
        """Append reply chunks to their requests' reply streams in one round trip.

        A chunk of a request cancelled as a whole is dropped (PUBLISH_SCRIPT):
        its client is gone and its reply stream deleted, which a late chunk
        would only bring back until the TTL.
        """
        pipe = self._redis.pipeline(transaction=False)
        count = 0
        for request_id, chunk in chunks:
            keys = [self._keys.reply_stream(request_id), self._keys.cancel(request_id)]
            self._publish(keys=keys, args=[encode(chunk), self._key_ttl_s], client=pipe)
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

    def finish(self, entry_ids: Iterable[str], ended_requests: Iterable[str] = ()) -> None:
        """Acknowledge and delete entries whose reply is final (the queue depth counts the rest).

        The cancel flags of ended_requests go too: a stop string's flag has
        done its job once the request is over, and need not wait for its TTL.
        """
        ids = list(entry_ids)
        if ids:
            pipe = self._redis.pipeline(transaction=False)
            pipe.xack(self._stream, CONSUMER_GROUP, *ids)
            pipe.xdel(self._stream, *ids)
            flags = [self._keys.cancel(request_id) for request_id in ended_requests]
            if flags:
                pipe.delete(*flags)
            pipe.execute()


def read_any(consumers: Sequence[WorkConsumer], block_ms: int) -> dict[str, list[tuple[str, queue_pb2.WorkItem]]]:
    """Wait on the streams of several models at once: one XREADGROUP, at most one new item per stream.

    A worker serving several models blocks here when idle, so work for any
    of them wakes it at once (blocking on each stream in turn would leave one
    model's requests waiting out the others' block times). The consumers
    share one Redis client and consumer name (one worker process).
    """
    first = consumers[0]
    by_stream = {consumer._stream: consumer for consumer in consumers}
    response = first._redis.xreadgroup(
        CONSUMER_GROUP, first._consumer, {stream: ">" for stream in by_stream}, count=1, block=block_ms
    )
    items: dict[str, list[tuple[str, queue_pb2.WorkItem]]] = {}
    for stream, entries in response or []:
        consumer = by_stream[stream.decode() if isinstance(stream, bytes) else stream]
        items[consumer._model] = consumer._decode(entries)
    return items
