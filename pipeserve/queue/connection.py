"""Redis clients configured the same way in every process.

Timeouts are bounded so that a dead Redis surfaces as an error the caller
maps to UNAVAILABLE, never as a hang; blocking reads pass their own
timeouts on top of these.
"""

from __future__ import annotations

import asyncio

import redis
import redis.asyncio as aioredis

CONNECT_TIMEOUT_S = 5.0
# Blocking XREAD/XREADGROUP calls wait up to their own block time plus this.
SOCKET_TIMEOUT_S = 30.0


class CancelSafeRedis(aioredis.Redis):
    """An asyncio client whose commands run to the end even when their caller is cancelled.

    grpc cancels a handler when its client leaves, and may cancel it again
    while it cleans up. A command cancelled inside redis-py can leave its
    connection marked in use (the pool is released from awaiting cleanup code);
    under a steady stream of client cancellations the pool (100 connections
    by default) filled up in the soak and every command then failed with
    "Too many connections". A shielded command finishes on its own (a
    blocking read within its block time) and hands its connection back, while
    the caller gets its CancelledError at once.
    """

    async def execute_command(self, *args, **options):
        command = asyncio.ensure_future(super().execute_command(*args, **options))
        command.add_done_callback(_retrieve_exception)
        return await asyncio.shield(command)


def _retrieve_exception(command: asyncio.Future) -> None:
    """A shielded command whose caller left may fail unseen; its error is no one's to handle."""
    if not command.cancelled():
        command.exception()


def async_client(url: str) -> aioredis.Redis:
    return CancelSafeRedis.from_url(
        url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S, health_check_interval=30
    )


def sync_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S, health_check_interval=30
    )
