"""``python -m gateway``: run the public gRPC server."""

from __future__ import annotations

import argparse
import asyncio
import sys

import yaml

from gateway.config import GatewaySettings
from gateway.server import serve
from pipeserve.logsetup import configure_logging
from pipeserve.metrics import start_metrics_server
from pipeserve.tracing import configure_tracing

DESCRIPTION = """\
The pipeserve gateway: the public gRPC API (pipeserve.v1 GenerationService and
ModelsService, plus grpc.health.v1 and server reflection).

Each request is validated here, preprocessed by the tokenizer service,
enqueued on its model's Redis stream for a model worker, and its text is
streamed back from the tokenizer service. Start Redis, the tokenizer service
and at least one model worker as well.

Every setting can also come from the environment; flags win over it:
  PIPESERVE_GATEWAY_LISTEN, PIPESERVE_MODELS_FILE, PIPESERVE_TOKENIZER_TARGET,
  REDIS_URL (or PIPESERVE_REDIS_URL), PIPESERVE_KEY_PREFIX,
  PIPESERVE_MAX_QUEUE_DEPTH, PIPESERVE_MAX_NEW_TOKENS_LIMIT,
  PIPESERVE_REQUEST_TIMEOUT_S, PIPESERVE_WORKER_LIVENESS_S,
  PIPESERVE_MAX_MESSAGE_BYTES, PIPESERVE_SHUTDOWN_GRACE_S, PIPESERVE_LOG_LEVEL.
Security (README "Security"): PIPESERVE_API_KEYS_FILE; PIPESERVE_TLS_CERT_FILE,
  PIPESERVE_TLS_KEY_FILE, PIPESERVE_TLS_CLIENT_CA_FILE (mutual TLS),
  PIPESERVE_GATEWAY_HEALTH_LISTEN (plaintext health for probes);
  PIPESERVE_TOKENIZER_TLS_CA_FILE, PIPESERVE_TOKENIZER_CLIENT_CERT_FILE,
  PIPESERVE_TOKENIZER_CLIENT_KEY_FILE (TLS to the tokenizer service);
  PIPESERVE_REDIS_PASSWORD_FILE.
Observability (README "Observability"): PIPESERVE_METRICS_PORT (9090; 0 = off),
  PIPESERVE_LOG_FORMAT (json, text; default: JSON unless stderr is a terminal),
  OTEL_TRACES_EXPORTER (none, otlp, console) and the SDK's other OTEL_* variables.

SIGTERM or SIGINT: health turns NOT_SERVING, in-flight calls get
PIPESERVE_SHUTDOWN_GRACE_S seconds to finish, then the process exits.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m gateway", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--listen", metavar="HOST:PORT", help="address to serve on (default 0.0.0.0:50051)")
    parser.add_argument(
        "--models-file", metavar="PATH", help="YAML file listing the served models, the same file the workers read"
    )
    parser.add_argument(
        "--tokenizer-target",
        metavar="TARGET",
        help="gRPC target of the tokenizer service (default 127.0.0.1:50052; "
        "in Kubernetes dns:///tokenizer-headless:50052, balanced round-robin)",
    )
    parser.add_argument(
        "--redis-url", metavar="URL", help="Redis holding the request queue (default redis://127.0.0.1:6379/0)"
    )
    parser.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO (default), WARNING or ERROR")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> GatewaySettings:
    """Environment first, then the flags that were given on top."""
    overrides = {name: value for name, value in vars(args).items() if value is not None}
    return GatewaySettings(**overrides)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        settings = settings_from_args(args)
        configure_logging("gateway", settings.log_level, settings.log_format)
        configure_tracing("gateway", settings.traces_exporter)
        start_metrics_server(settings.metrics_port)
        asyncio.run(serve(settings))
    except FileNotFoundError as exc:
        sys.exit(f"pipeserve gateway: {exc}; pass --models-file or set PIPESERVE_MODELS_FILE")
    except (OSError, ValueError, yaml.YAMLError) as exc:
        # Bad settings, a malformed models file or a port already taken: say so without a traceback.
        sys.exit(f"pipeserve gateway: {exc}")


if __name__ == "__main__":
    main()
