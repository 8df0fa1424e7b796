"""Assemble the gateway's grpc.aio server and serve it until SIGTERM/SIGINT.

``build_gateway`` gives the server together with its health service and the
clients it owns, so ``serve`` (and tests) can report SERVING after start-up,
NOT_SERVING while draining, and close the clients afterwards.
``create_server`` is the plain (server, port) form of the same assembly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway.auth import ApiKeyInterceptor, ApiKeys
from gateway.clients import TokenizerClient
from gateway.config import GatewaySettings
from gateway.decoding import UndecodableRequestInterceptor
from gateway.generation import GenerationFlow, GenerationServicer
from gateway.models import ModelsServicer
from gateway.pipelines import PipelineServicer
from gateway.queue_metrics import sampling_queue_metrics
from gateway.validation import RequestLimits
from pipeserve import tracing
from pipeserve.call_context import IncomingCallContext
from pipeserve.config import ModelSpec
from pipeserve.queue.connection import async_client
from pipeserve.queue.keys import Keys
from pipeserve.queue.producer import RequestQueue
from pipeserve.tls import add_port, channel_credentials, server_credentials
from pipeserve.v1 import (
    generation_pb2,
    generation_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    pipelines_pb2,
    pipelines_pb2_grpc,
)

log = logging.getLogger(__name__)

PUBLIC_SERVICES = (
    generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name,
    models_pb2.DESCRIPTOR.services_by_name["ModelsService"].full_name,
    pipelines_pb2.DESCRIPTOR.services_by_name["PipelineService"].full_name,
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
    # Plaintext grpc.health.v1 only, for probes that cannot speak TLS (settings.health_listen).
    health_server: grpc.aio.Server | None = None
    health_port: int | None = None

    async def start(self) -> None:
        await self.server.start()
        if self.health_server is not None:
            await self.health_server.start()
        for service in HEALTH_CHECKED:
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None) -> None:
        """NOT_SERVING first, so load balancers stop sending; then let in-flight calls finish within grace."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self.health_server is not None:
            await self.health_server.stop(None)
        await self.tokenizer.close()
        await self.redis.aclose()


def build_gateway(settings: GatewaySettings, address: str | None = None) -> Gateway:
    """Read the models file, create the clients and bind ``address`` (default: settings.listen).

    TLS (mutual when a client CA is given) and API keys come from settings;
    their files are read here, so a bad one stops start-up with its setting named.
    """
    models = settings.models()
    credentials = server_credentials(
        cert_file=settings.tls_cert_file,
        key_file=settings.tls_key_file,
        client_ca_file=settings.tls_client_ca_file,
        settings_prefix="PIPESERVE_TLS_",
    )
    tokenizer_credentials = channel_credentials(
        ca_file=settings.tokenizer_tls_ca_file,
        cert_file=settings.tokenizer_client_cert_file,
        key_file=settings.tokenizer_client_key_file,
        settings=(
            "PIPESERVE_TOKENIZER_TLS_CA_FILE",
            "PIPESERVE_TOKENIZER_CLIENT_CERT_FILE",
            "PIPESERVE_TOKENIZER_CLIENT_KEY_FILE",
        ),
    )
    # Keys are checked first, so an unauthenticated call costs no decoding.
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if settings.api_keys_file is not None:
        interceptors.append(ApiKeyInterceptor(ApiKeys(settings.api_keys_file)))
    interceptors.append(UndecodableRequestInterceptor())
    # A server span per call, continuing the client's traceparent; request ids are the gateway's own.
    interceptors.append(IncomingCallContext(tracing.GATEWAY, trust_request_id=False))
    limits = RequestLimits.from_settings(settings)
    redis = async_client(settings.redis_url)
    queue = RequestQueue(
        redis,
        Keys(settings.key_prefix),
        max_depth=settings.max_queue_depth,
        worker_liveness_s=settings.worker_liveness_s,
        key_ttl_s=settings.key_ttl_s,
    )
    tokenizer = TokenizerClient(settings.tokenizer_target, tokenizer_credentials)
    flow = GenerationFlow(
        models=models, limits=limits, tokenizer=tokenizer, queue=queue, request_timeout_s=settings.request_timeout_s
    )

    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            # A second gateway on a taken port must fail, not silently share it.
            ("grpc.so_reuseport", 0),
        ],
    )
    generation_pb2_grpc.add_GenerationServiceServicer_to_server(GenerationServicer(flow), server)
    models_pb2_grpc.add_ModelsServiceServicer_to_server(
        ModelsServicer(models=models, limits=limits, tokenizer=tokenizer, request_timeout_s=settings.request_timeout_s),
        server,
    )
    pipelines_pb2_grpc.add_PipelineServiceServicer_to_server(
        PipelineServicer(
            models=models, limits=limits, tokenizer=tokenizer, request_timeout_s=settings.request_timeout_s
        ),
        server,
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(REFLECTED_SERVICES, server)

    port = add_port(server, address or settings.listen, credentials)
    health_server, health_port = None, None
    if settings.health_listen:
        health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        health_port = add_port(health_server, settings.health_listen, None)
    return Gateway(
        server=server,
        port=port,
        health=health_servicer,
        models=models,
        tokenizer=tokenizer,
        redis=redis,
        health_server=health_server,
        health_port=health_port,
    )


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
        "gateway serving on %s:%d (%s, API keys %s); tokenizer service %s (%s); models %s",
        host,
        gateway.port,
        "mutual TLS" if settings.tls_client_ca_file else "TLS" if settings.tls_cert_file else "plaintext",
        "required" if settings.api_keys_file else "off",
        settings.tokenizer_target,
        "TLS" if settings.tokenizer_tls_ca_file or settings.tokenizer_client_cert_file else "plaintext",
        ", ".join(gateway.models),
    )
    if gateway.health_port is not None:
        log.info("plaintext health checks on %s:%d", settings.health_listen.rpartition(":")[0], gateway.health_port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    # The queue gauges are sampled only where /metrics is served.
    sampler = sampling_queue_metrics(gateway.redis, Keys(settings.key_prefix), gateway.models)
    async with sampler if settings.metrics_port else contextlib.nullcontext():
        await stopping.wait()
    log.info("shutting down: NOT_SERVING, draining in-flight calls for up to %g s", settings.shutdown_grace_s)
    await gateway.stop(settings.shutdown_grace_s)
    log.info("gateway stopped")
