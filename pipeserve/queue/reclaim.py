"""Recovering work from dead model workers (worker side, blocking).

A work item stays in the consumer group's pending entries list (PEL) from
the moment a worker reads it until that worker acknowledges it. Every live
worker re-claims its own in-flight entries to itself at each heartbeat
(XCLAIM ... JUSTID, which resets their idle time without counting a
delivery), so only the entries of a worker that stopped heartbeating grow
idle. Live workers sweep the PEL with XAUTOCLAIM for entries idle longer than
``claim_idle_ms`` and resume them from what their reply stream already holds.
Each claim counts a delivery; an entry delivered more than ``max_deliveries``
times has taken down that many workers, so it is moved to the model's
dead-letter stream and its client gets an error instead of another worker
dying.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis

from pipeserve.internal.v1 import queue_pb2
from pipeserve.queue.keys import CONSUMER_GROUP, Keys
from pipeserve.queue.protocol import PAYLOAD_FIELD, decode_reply_chunk, decode_work_item, encode

log = logging.getLogger(__name__)

# Dead letters are for an operator to inspect, not an archive: keep the newest.
DEAD_LETTER_MAXLEN = 10_000

# Reset the idle time of the entries this consumer still owns; report the ones it
# lost (claimed by another worker, or gone with a Redis that restarted empty).
# Checking the owner first means a worker that stalled never steals an entry back.
# KEYS[1] request stream; ARGV[1] group, ARGV[2] consumer, ARGV[3..] entry ids
KEEP_OWNED_SCRIPT = """
local lost = {}
for i = 3, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if pending[1] and pending[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
"""

# XAUTOCLAIM, plus each claimed entry's delivery count (the claim included).
# KEYS[1] request stream; ARGV[1] group, ARGV[2] consumer, ARGV[3] min idle ms, ARGV[4] cursor, ARGV[5] count
CLAIM_SCRIPT = """
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local entries = {}
for i, entry in ipairs(claimed[2]) do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)
  local deliveries = 0
  if pending[1] then deliveries = pending[1][4] end
  entries[i] = {entry[1], entry[2], deliveries}
end
return {claimed[1], entries}
"""


@dataclass(frozen=True)
class ClaimedEntry:
    entry_id: str
    item: queue_pb2.WorkItem
    deliveries: int
    """Times the entry was handed to a worker, this claim included."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class PendingWork:
    """One worker's view of its model's pending entries: keep its own, take over the dead's."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        model: str,
        consumer: str,
        *,
        key_ttl_s: int,
        claim_idle_ms: int,
        max_deliveries: int,
    ):
        self._redis = client
        self._keys = keys
        self._model = model
        self._consumer = consumer
        self._stream = keys.request_stream(model)
        self._key_ttl_s = key_ttl_s
        self._claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self._cursor = "0-0"
        self._keep_owned = client.register_script(KEEP_OWNED_SCRIPT)
        self._claim = client.register_script(CLAIM_SCRIPT)

    def keep_owned(self, entry_ids: list[str]) -> set[str]:
        """Reset the idle time of these entries; return those this worker no longer owns."""
        if not entry_ids:
            return set()
        lost = self._keep_owned(keys=[self._stream], args=[CONSUMER_GROUP, self._consumer, *entry_ids])
        return {_text(entry_id) for entry_id in lost}

    def claim(self, count: int) -> list[ClaimedEntry]:
        """Take over up to count entries idle longer than claim_idle_ms, continuing the sweep where the last ended.

        An entry that does not parse is acknowledged and dropped, as on read.
        """
        cursor, entries = self._claim(
            keys=[self._stream],
            args=[CONSUMER_GROUP, self._consumer, self._claim_idle_ms, self._cursor, count],
        )
        self._cursor = _text(cursor)
        claimed = []
        for entry_id, fields, deliveries in entries:
            entry = _text(entry_id)
            values = dict(zip(fields[::2], fields[1::2]))
            try:
                item = decode_work_item(values[PAYLOAD_FIELD])
            except Exception:  # noqa: BLE001 - any undecodable entry is dropped the same way
                log.error("dropping malformed work item %s on %s", entry, self._stream)
                self._acknowledge(entry)
                continue
            claimed.append(ClaimedEntry(entry, item, int(deliveries)))
        return claimed

    def published(self, request_id: str) -> list[queue_pb2.ReplyChunk]:
        """Every chunk already on a request's reply stream: where a resumed request picks up."""
        entries = self._redis.xrange(self._keys.reply_stream(request_id))
        return [decode_reply_chunk(fields[PAYLOAD_FIELD]) for _entry_id, fields in entries]

    def dead_letter(self, entry: ClaimedEntry, reason: str, reply: queue_pb2.ReplyChunk) -> None:
        """Move an entry to the dead-letter stream and end its request with ``reply``, all at once.

        One MULTI: a worker dying half-way cannot leave the entry both
        dead-lettered and pending, or acknowledged with no word to its client.
        """
        reply_stream = self._keys.reply_stream(entry.item.request_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.xadd(
            self._keys.dead_letter(self._model),
            {
                PAYLOAD_FIELD: encode(entry.item),
                "request_id": entry.item.request_id,
                "entry_id": entry.entry_id,
                "deliveries": entry.deliveries,
                "error": reason,
                "dead_lettered_by": self._consumer,
                "at_unix_ms": int(time.time() * 1000),
            },
            maxlen=DEAD_LETTER_MAXLEN,
            approximate=True,
        )
        pipe.xadd(reply_stream, {PAYLOAD_FIELD: encode(reply)})
        pipe.expire(reply_stream, self._key_ttl_s)
        pipe.xack(self._stream, CONSUMER_GROUP, entry.entry_id)
        pipe.xdel(self._stream, entry.entry_id)
        pipe.execute()

    def _acknowledge(self, entry_id: str) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.xack(self._stream, CONSUMER_GROUP, entry_id)
        pipe.xdel(self._stream, entry_id)
        pipe.execute()
