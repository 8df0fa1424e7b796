"""``python -m model_service``: load the models and serve their Redis queues."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

import yaml
from pydantic import ValidationError

from model_service.config import WorkerSettings
from model_service.health import WorkerHealth
from model_service.loader import ModelLoadError, load_model
from model_service.worker import Worker, create_lane
from pipeserve.errors import PipeserveError
from pipeserve.logsetup import configure_logging
from pipeserve.metrics import start_metrics_server
from pipeserve.queue.connection import sync_client
from pipeserve.tracing import configure_tracing

log = logging.getLogger("model_service")

DESCRIPTION = """\
The pipeserve model worker: loads text-generation models and serves their
Redis request streams with continuous batching.

It reads work items (token ids) from <prefix>:requests:<model> through the
consumer group "model-workers", generates, and publishes token-id chunks to
each request's reply stream. Once every model is loaded it heartbeats into
<prefix>:workers:<model>; that heartbeat is the readiness signal (gateways
refuse work for a model with no live worker). Run as many workers as you
like: they share the queue.

Every setting can also come from the environment; flags win over it:
  PIPESERVE_MODELS_FILE, PIPESERVE_WORKER_MODELS (comma-separated names),
  REDIS_URL (or PIPESERVE_REDIS_URL), PIPESERVE_KEY_PREFIX, PIPESERVE_KEY_TTL_S,
  PIPESERVE_WORKER_ID (default hostname-pid), PIPESERVE_ENGINE (padded-kv),
  PIPESERVE_MAX_BATCH_SIZE (32), PIPESERVE_PREFILL_TOKENS_PER_STEP (4096),
  PIPESERVE_FLUSH_TOKENS (4), PIPESERVE_FLUSH_INTERVAL_MS (30),
  PIPESERVE_HEARTBEAT_INTERVAL_S (2), PIPESERVE_IDLE_BLOCK_MS (500),
  PIPESERVE_DRAIN_TIMEOUT_S (30), PIPESERVE_LOG_LEVEL.
Recovery (README "Failure behaviour"): PIPESERVE_CLAIM_IDLE_MS (10000; a
  queue entry untouched this long belonged to a dead worker and is taken over
  and resumed), PIPESERVE_MAX_DELIVERIES (3; a request that took down this
  many workers goes to <prefix>:dead-letter:<model> and fails with INTERNAL).
Observability (README "Observability"): PIPESERVE_WORKER_HEALTH_LISTEN
  (0.0.0.0:50053; grpc.health.v1 for probes: NOT_SERVING until every model is
  loaded and warmed up, SERVING after, NOT_SERVING from SIGTERM on),
  PIPESERVE_METRICS_PORT (9090; 0 = off), PIPESERVE_LOG_FORMAT (json, text),
  OTEL_TRACES_EXPORTER (none, otlp, console) and the SDK's other OTEL_* variables.

SIGTERM or SIGINT: no new work is read and in-flight requests get
PIPESERVE_DRAIN_TIMEOUT_S seconds to finish (a second signal cuts that
short); unfinished ones stay unacknowledged in the queue, and another worker
takes them over after PIPESERVE_CLAIM_IDLE_MS. Exit status 0.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m model_service", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-file", metavar="PATH", help="YAML file listing the served models (models.yaml)")
    parser.add_argument(
        "--models",
        metavar="NAME,...",
        dest="worker_models",
        help="serve only these models from the file (default: every text-generation model in it)",
    )
    parser.add_argument(
        "--redis-url", metavar="URL", help="Redis holding the request queue (default redis://127.0.0.1:6379/0)"
    )
    parser.add_argument("--worker-id", metavar="ID", help="this worker's consumer name (default hostname-pid)")
    parser.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO (default), WARNING or ERROR")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> WorkerSettings:
    """Environment first, then the flags that were given on top."""
    overrides = {name: value for name, value in vars(args).items() if value is not None}
    return WorkerSettings(**overrides)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        sys.exit(f"pipeserve model worker: invalid settings: {exc}")
    configure_logging("model-worker", settings.log_level, settings.log_format)
    try:
        configure_tracing("model-worker", settings.traces_exporter)
        start_metrics_server(settings.metrics_port)
        health = WorkerHealth(settings.health_listen)
    except (OSError, ValueError) as exc:
        sys.exit(f"pipeserve model worker: {exc}")
    # Answering (NOT_SERVING) while the models load: "alive, not ready yet".
    health.start()
    log.info("health checks on %s:%d", settings.health_listen.rpartition(":")[0], health.port)

    stop, abort, serving = threading.Event(), threading.Event(), threading.Event()

    def on_signal(signum, _frame):
        if not serving.is_set():
            # Still loading: nothing is in flight, so there is nothing to drain.
            raise SystemExit(0)
        if stop.is_set():
            abort.set()
        else:
            health.draining()
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        specs = settings.served_models(settings.models())
        loaded = []
        for number, spec in enumerate(specs, 1):
            log.info("loading model %r (%d of %d) from %s", spec.name, number, len(specs), spec.path)
            loaded.append(load_model(spec))
    except FileNotFoundError as exc:
        sys.exit(f"pipeserve model worker: {exc}; pass --models-file or set PIPESERVE_MODELS_FILE")
    except (ModelLoadError, ValueError, yaml.YAMLError) as exc:
        sys.exit(f"pipeserve model worker: {exc}")
    except PipeserveError as exc:
        sys.exit(f"pipeserve model worker: {exc.message}")

    client = sync_client(settings.redis_url)
    lanes = [create_lane(model, client, settings) for model in loaded]
    try:
        for lane in lanes:
            lane.warm_up()
    except ModelLoadError as exc:
        sys.exit(f"pipeserve model worker: {exc}")
    health.serving()
    serving.set()
    Worker(lanes, settings).run(stop, abort)
    health.stop()


if __name__ == "__main__":
    main()
