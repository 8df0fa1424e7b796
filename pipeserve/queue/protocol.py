"""What crosses Redis, and how: stream field names, payload codec, TTLs.

Both ends import this module, so a work item or reply chunk is encoded in
exactly one way. Payloads are protobuf bytes (pipeserve.internal.v1).
"""

from __future__ import annotations

import time

from pipeserve.internal.v1 import queue_pb2

PAYLOAD_FIELD = b"p"
ALL_SEQUENCES = "*"

# Atomic bounded enqueue: the depth check and the XADD happen in one step, so
# a full queue never half-accepts a request. Depth counts entries not yet
# deleted; workers XDEL an entry once its reply is final.
# KEYS[1] request stream, KEYS[2] workers zset
# ARGV[1] max depth, ARGV[2] payload, ARGV[3] oldest acceptable heartbeat (0 = don't check)
ENQUEUE_SCRIPT = """
if tonumber(ARGV[3]) > 0 and redis.call('ZCOUNT', KEYS[2], ARGV[3], '+inf') == 0 then
  return {-2, 0}
end
local depth = redis.call('XLEN', KEYS[1])
if depth >= tonumber(ARGV[1]) then
  return {-1, depth}
end
local id = redis.call('XADD', KEYS[1], '*', 'p', ARGV[2])
return {id, depth}
"""

# Append a reply chunk unless the whole request was cancelled (nobody reads it,
# and the stream was deleted), and keep the stream's TTL.
# KEYS[1] reply stream, KEYS[2] cancel flags; ARGV[1] payload, ARGV[2] TTL in seconds
PUBLISH_SCRIPT = """
if redis.call('SISMEMBER', KEYS[2], '*') == 1 then
  return 0
end
redis.call('XADD', KEYS[1], '*', 'p', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


def now_ms() -> int:
    return int(time.time() * 1000)


def encode(message) -> bytes:
    return message.SerializeToString()


def decode_work_item(payload: bytes) -> queue_pb2.WorkItem:
    item = queue_pb2.WorkItem()
    item.ParseFromString(payload)
    return item


def decode_reply_chunk(payload: bytes) -> queue_pb2.ReplyChunk:
    chunk = queue_pb2.ReplyChunk()
    chunk.ParseFromString(payload)
    return chunk
