"""Readiness probes for the stack's processes, each bounded to about a second.

A probe answers "is it ready now?" and treats every failure to find out as
"not yet": the supervisor keeps polling until its own deadline.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

PROBE_TIMEOUT_S = 1.0


def grpc_serving(target: str) -> Callable[[], bool]:
    """The server at target reports grpc.health.v1 status SERVING for the whole server ("")."""

    def probe() -> bool:
        with grpc.insecure_channel(target) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=PROBE_TIMEOUT_S
                )
            except grpc.RpcError:
                return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    return probe


def redis_answers(url: str) -> Callable[[], bool]:
    """The Redis (or Valkey) at url answers PING."""

    def probe() -> bool:
        try:
            with _client(url) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    return probe


def workers_heartbeating(url: str, key: str, count: int, since: float) -> Callable[[], bool]:
    """At least count workers have written a heartbeat (unix time) into the zset key at or after since."""

    def probe() -> bool:
        try:
            with _client(url) as client:
                return client.zcount(key, since, "+inf") >= count
        except redis.RedisError:
            return False

    return probe


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=PROBE_TIMEOUT_S, socket_timeout=PROBE_TIMEOUT_S)
