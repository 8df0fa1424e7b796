"""python -m tokenizer_service: run the tokenizer service until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import sys

from pipeserve.logsetup import configure_logging
from pipeserve.metrics import start_metrics_server
from pipeserve.tracing import configure_tracing
from tokenizer_service.config import TokenizerSettings
from tokenizer_service.server import serve

DESCRIPTION = """\
pipeserve tokenizer service: the pipeline's preprocess and postprocess steps.

Serves pipeserve.internal.v1.TokenizerService to the gateway: renders chat
templates, tokenizes, resolves generation options against each model's
generation_config.json, and streams generated text (incremental
detokenization, stop strings) read from each request's Redis reply stream.
It loads tokenizers and configs only, never model weights.

Settings come from the environment (PIPESERVE_<FIELD>, e.g.
PIPESERVE_TOKENIZER_LISTEN, PIPESERVE_MODELS_FILE, REDIS_URL or
PIPESERVE_REDIS_URL, PIPESERVE_KEY_PREFIX, PIPESERVE_KEY_TTL_S,
PIPESERVE_SHUTDOWN_GRACE_S, PIPESERVE_LOG_LEVEL); flags override them.
TLS to the gateways: PIPESERVE_TOKENIZER_TLS_CERT_FILE and _KEY_FILE, plus
PIPESERVE_TOKENIZER_TLS_CLIENT_CA_FILE to require client certificates;
PIPESERVE_TOKENIZER_HEALTH_LISTEN serves plaintext health checks for probes.
Observability (README "Observability"): PIPESERVE_METRICS_PORT (9090; 0 = off),
PIPESERVE_LOG_FORMAT (json, text; default: JSON unless stderr is a terminal),
OTEL_TRACES_EXPORTER (none, otlp, console) and the SDK's other OTEL_* variables.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tokenizer_service",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--listen", help="host:port to bind (default 0.0.0.0:50052)")
    parser.add_argument("--models-file", help="YAML file listing the served models (default models.yaml)")
    parser.add_argument("--redis-url", help="Redis holding the request queue (default redis://127.0.0.1:6379/0)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    overrides = {name: value for name, value in vars(args).items() if value is not None}
    settings = TokenizerSettings(**overrides)
    configure_logging("tokenizer", settings.log_level, settings.log_format)
    try:
        configure_tracing("tokenizer", settings.traces_exporter)
        start_metrics_server(settings.metrics_port)
        asyncio.run(serve(settings))
    except (OSError, ValueError) as exc:
        # A TLS setting naming a missing or non-PEM file, a port in use, an unknown
        # OTEL_TRACES_EXPORTER: say which, without a traceback.
        sys.exit(f"pipeserve tokenizer: {exc}")


if __name__ == "__main__":
    main()
