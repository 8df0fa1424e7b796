"""The model worker's grpc.health.v1 server, answered from threads of its own.

The engine loop is synchronous and one step of a large batch can hold the
main thread for seconds; probes are answered by this server's thread pool,
so a busy worker still answers. The overall status ("") is NOT_SERVING
until every model is loaded and warmed up, SERVING after, and NOT_SERVING
again from SIGTERM on (draining). Redis plays no part: the loop retries a
Redis hiccup, and a probe failing for it would get a healthy worker
restarted.
"""

from __future__ import annotations

from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

OVERALL = ""
# Probes are few and cheap; a couple of threads answer them while others wait on Watch streams.
HEALTH_THREADS = 4


class WorkerHealth:
    def __init__(self, listen: str):
        """Bind ``listen`` (host:port; port 0 picks a free one) with the status NOT_SERVING; raises OSError."""
        self._servicer = health.HealthServicer()
        self._servicer.set(OVERALL, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=HEALTH_THREADS, thread_name_prefix="health"),
            # A second worker on a taken port must fail, not silently share it.
            options=[("grpc.so_reuseport", 0)],
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, self._server)
        try:
            self.port = self._server.add_insecure_port(listen)
        except RuntimeError as exc:
            raise OSError(
                f"cannot serve health checks on {listen} ({exc}); is another process using the port? "
                "Set PIPESERVE_WORKER_HEALTH_LISTEN to a free address"
            ) from None

    def start(self) -> None:
        self._server.start()

    def serving(self) -> None:
        """Every model is loaded and warmed up."""
        self._servicer.set(OVERALL, health_pb2.HealthCheckResponse.SERVING)

    def draining(self) -> None:
        """NOT_SERVING from now on, whatever is set later. Safe from a signal handler (the lock is re-entrant)."""
        self._servicer.enter_graceful_shutdown()

    def stop(self) -> None:
        self._server.stop(grace=None).wait()
