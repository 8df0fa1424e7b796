"""The tokenizer service's gRPC server: TokenizerService, grpc.health.v1 and reflection.

Tokenizers are loaded before the server is built, so health reports SERVING
from the first moment the port answers; SIGTERM turns it NOT_SERVING and
drains in-flight streams for ``shutdown_grace_s``.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pipeserve import tracing
from pipeserve.call_context import IncomingCallContext
from pipeserve.internal.v1 import tokenizer_pb2, tokenizer_pb2_grpc
from pipeserve.queue.connection import async_client
from pipeserve.queue.keys import Keys
from pipeserve.queue.producer import RequestQueue
from pipeserve.tls import add_port, server_credentials
from tokenizer_service.config import TokenizerSettings
from tokenizer_service.registry import ModelRegistry
from tokenizer_service.run_task import TaskRunner
from tokenizer_service.servicer import TokenizerServicer

log = logging.getLogger(__name__)

SERVICE_NAME = tokenizer_pb2.DESCRIPTOR.services_by_name["TokenizerService"].full_name
# Token id lists of long prompts are large; the gateway allows the same size (gateway.clients).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def create_server(
    settings: TokenizerSettings,
    address: str | None = None,
    *,
    registry: ModelRegistry | None = None,
    redis: aioredis.Redis | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A server bound to address (default settings.listen) and ready to start; returns it and its port.

    registry defaults to loading settings' models file (blocking: tokenizers
    and configs are read here); redis defaults to a client of
    settings.redis_url that lives as long as the process.
    """
    server, port, _health = _build_server(settings, address, registry, redis)
    return server, port


def _build_server(
    settings: TokenizerSettings,
    address: str | None,
    registry: ModelRegistry | None,
    redis: aioredis.Redis | None,
) -> tuple[grpc.aio.Server, int, _ServingHealth]:
    credentials = server_credentials(
        cert_file=settings.tls_cert_file,
        key_file=settings.tls_key_file,
        client_ca_file=settings.tls_client_ca_file,
        settings_prefix="PIPESERVE_TOKENIZER_TLS_",
    )
    registry = registry or ModelRegistry.load(settings.models())
    redis = redis or async_client(settings.redis_url)
    server = grpc.aio.server(
        # Continue the gateway's trace and name its request id in this call's log lines.
        interceptors=[IncomingCallContext(tracing.TOKENIZER, trust_request_id=True)],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    keys = Keys(settings.key_prefix)
    queue = RequestQueue(
        redis,
        keys,
        max_depth=settings.max_queue_depth,
        worker_liveness_s=settings.worker_liveness_s,
        key_ttl_s=settings.key_ttl_s,
    )
    tasks = TaskRunner(redis, keys, queue, key_ttl_s=settings.key_ttl_s, max_rows=settings.max_pipeline_rows)
    servicer = TokenizerServicer(registry, redis, keys, tasks, key_ttl_s=settings.key_ttl_s)
    tokenizer_pb2_grpc.add_TokenizerServiceServicer_to_server(servicer, server)
    health_servicer = _ServingHealth(("", SERVICE_NAME))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    port = add_port(server, address or settings.listen, credentials)
    return server, port, health_servicer


def _health_only_server(health_servicer: _ServingHealth, address: str) -> tuple[grpc.aio.Server, int]:
    """Plaintext grpc.health.v1 for probes that cannot speak TLS (Kubernetes' gRPC probes)."""
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    return server, add_port(server, address, None)


class _ServingHealth(health.aio.HealthServicer):
    """grpc's asyncio health servicer, SERVING from the start for the named services.

    The server is built only once the tokenizers are loaded, so there is
    nothing left to wait for; the public set() is a coroutine, which a
    synchronous create_server cannot await, hence the direct initial state.
    """

    def __init__(self, services: tuple[str, ...]):
        super().__init__()
        for service in services:
            self._server_status[service] = health_pb2.HealthCheckResponse.SERVING


async def serve(settings: TokenizerSettings) -> None:
    """Run until SIGTERM or SIGINT, then report NOT_SERVING and drain for settings.shutdown_grace_s."""
    redis = async_client(settings.redis_url)
    try:
        server, port, health_servicer = _build_server(settings, None, None, redis)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await server.start()
        log.info(
            "tokenizer service listening on %s:%d (%s)",
            settings.listen.rsplit(":", 1)[0],
            port,
            "mutual TLS" if settings.tls_client_ca_file else "TLS" if settings.tls_cert_file else "plaintext",
        )
        health_server = None
        if settings.health_listen:
            health_server, health_port = _health_only_server(health_servicer, settings.health_listen)
            await health_server.start()
            log.info("plaintext health checks on %s:%d", settings.health_listen.rsplit(":", 1)[0], health_port)
        await stop.wait()
        log.info("shutting down: draining in-flight calls for up to %g s", settings.shutdown_grace_s)
        await health_servicer.enter_graceful_shutdown()
        await server.stop(settings.shutdown_grace_s)
        if health_server is not None:
            await health_server.stop(None)
    finally:
        await redis.aclose()
    log.info("tokenizer service stopped")
