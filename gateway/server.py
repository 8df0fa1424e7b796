"""Assemble the gateway's grpc.aio server and serve it until SIGTERM/SIGINT.

``build_gateway`` gives the server together with its health service and the
clients it owns, so ``serve`` (and tests) can report SERVING after start-up,
NOT_SERVING while draining, and close the clients afterwards.
``create_server`` is the plain (server, port) form of the same assembly.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway.clients import TokenizerClient
from gateway.config import GatewaySettings
from gateway.generation import GenerationFlow, GenerationServicer
from gateway.models import ModelsServicer
from gateway.validation import RequestLimits
from pipeserve.config import ModelSpec
from pipeserve.queue.connection import async_client
from pipeserve.queue.keys import Keys
from pipeserve.queue.producer import RequestQueue
from pipeserve.v1 import generation_pb2, generation_pb2_grpc, models_pb2, models_pb2_grpc

log = logging.getLogger(__name__)

PUBLIC_SERVICES = (
    generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name,
    models_pb2.DESCRIPTOR.services_by_name["ModelsService"].full_name,
)
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# Health reports the overall status ("") and each public service's.
HEALTH_CHECKED = ("", *PUBLIC_SERVICES)
REFLECTED_SERVICES = (*PUBLIC_SERVICES, HEALTH_SERVICE, reflection.SERVICE_NAME)


@dataclass
class Gateway:
    """A built gateway: its (not yet started) server and what must be closed with it."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    models: dict[str, ModelSpec]
    tokenizer: TokenizerClient
    redis: aioredis.Redis

    async def start(self) -> None:
        await self.server.start()
        for service in HEALTH_CHECKED:
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None) -> None:
        """NOT_SERVING first, so load balancers stop sending; then let in-flight calls finish within grace."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.tokenizer.close()
        await self.redis.aclose()


def build_gateway(settings: GatewaySettings, address: str | None = None) -> Gateway:
    """Read the models file, create the clients and bind ``address`` (default: settings.listen)."""
    models = settings.models()
    limits = RequestLimits.from_settings(settings)
    redis = async_client(settings.redis_url)
    queue = RequestQueue(
        redis,
        Keys(settings.key_prefix),
        max_depth=settings.max_queue_depth,
        worker_liveness_s=settings.worker_liveness_s,
        key_ttl_s=settings.key_ttl_s,
    )
    tokenizer = TokenizerClient(settings.tokenizer_target)
    flow = GenerationFlow(
        models=models, limits=limits, tokenizer=tokenizer, queue=queue, request_timeout_s=settings.request_timeout_s
    )

    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            # A second gateway on a taken port must fail, not silently share it.
            ("grpc.so_reuseport", 0),
        ]
    )
    generation_pb2_grpc.add_GenerationServiceServicer_to_server(GenerationServicer(flow), server)
    models_pb2_grpc.add_ModelsServiceServicer_to_server(
        ModelsServicer(models=models, limits=limits, tokenizer=tokenizer, request_timeout_s=settings.request_timeout_s),
        server,
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(REFLECTED_SERVICES, server)

    address = address or settings.listen
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {address}: {exc}; is another process using the port?") from exc
    return Gateway(server=server, port=port, health=health_servicer, models=models, tokenizer=tokenizer, redis=redis)


def create_server(settings: GatewaySettings, address: str | None = None) -> tuple[grpc.aio.Server, int]:
    """The gateway's grpc.aio server, bound but not started, and its port (address "127.0.0.1:0" picks one).

    Health then reports only the overall status (SERVING); ``build_gateway``
    also gives per-service health (set by ``Gateway.start``) and the clients
    to close on stop.
    """
    gateway = build_gateway(settings, address)
    return gateway.server, gateway.port


async def serve(settings: GatewaySettings) -> None:
    """Serve until SIGTERM or SIGINT, then drain for settings.shutdown_grace_s."""
    gateway = build_gateway(settings)
    await gateway.start()
    host, _, _ = settings.listen.rpartition(":")
    log.info(
        "gateway serving on %s:%d; tokenizer service %s; models %s",
        host,
        gateway.port,
        settings.tokenizer_target,
        ", ".join(gateway.models),
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    log.info("shutting down: NOT_SERVING, draining in-flight calls for up to %g s", settings.shutdown_grace_s)
    await gateway.stop(settings.shutdown_grace_s)
    log.info("gateway stopped")
