"""The Redis request queue: one module per role, all built on ``keys`` and ``protocol``.

- ``producer`` (gateway, asyncio): bounded enqueue, cancel flags, worker liveness.
- ``replies`` (tokenizer service, asyncio): read a request's reply stream in order.
- ``consumer`` (model worker, blocking): consumer group reads, acks, reply publishing.
"""
