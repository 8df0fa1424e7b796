"""Redis clients configured the same way in every process.

Timeouts are bounded so that a dead Redis surfaces as an error the caller
maps to UNAVAILABLE, never as a hang; blocking reads pass their own
timeouts on top of these.
"""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

CONNECT_TIMEOUT_S = 5.0
# Blocking XREAD/XREADGROUP calls wait up to their own block time plus this.
SOCKET_TIMEOUT_S = 30.0


def async_client(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S, health_check_interval=30
    )


def sync_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S, health_check_interval=30
    )
