"""The ``pipeserve`` command line: every subcommand, its options and their defaults.

Only the standard library is imported here, so ``pipeserve --help`` and a
typo's error come back at once; each subcommand's module (and grpc, torch,
rich behind it) is imported only when that subcommand runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeserve import __version__
from pipeserve.cli import defaults
from pipeserve.cli.services import SERVICE_MODULES

QUICKSTART_PROMPT = "Write a haiku about queues."

DESCRIPTION = """\
Hugging Face pipeline() and generate() served over gRPC: a gateway, tokenizer
workers and model workers, each its own process, around a Redis request queue.

first run:   pipeserve quickstart
by hand:     pipeserve build-models --out models
             pipeserve serve-all --models-file models/models.yaml
             pipeserve generate "def fibonacci(n):" --max-new-tokens 48
pipelines:   pipeserve build-models tiny-bert-sentiment  (then serve-all as above)
             pipeserve pipeline tiny-bert-sentiment "I loved it" "terrible"
"""

SERVICE_HELP = {
    "gateway": "run the public gRPC gateway alone (python -m gateway)",
    "tokenizer": "run the tokenizer service alone (python -m tokenizer_service)",
    "model-worker": "run a model worker alone (python -m model_service)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeserve", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"pipeserve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_build_models(commands)
    _add_serve_all(commands)
    _add_generate(commands)
    _add_pipeline(commands)
    _add_quickstart(commands)
    for command in SERVICE_MODULES:
        # Never parsed: main() hands these straight to the service (see services.py).
        commands.add_parser(
            command,
            help=f"{SERVICE_HELP[command]}; its options: pipeserve {command} --help",
            add_help=False,
        )
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line, parsed; `pipeline` intermixed, so options may sit between its texts (MODEL --task ner TEXT)."""
    parser = build_parser()
    if argv and argv[0] == "pipeline":
        (commands,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
        return commands.choices["pipeline"].parse_intermixed_args(argv[1:])
    return parser.parse_args(argv)


def _command(commands, name: str, module: str, summary: str, description: str) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name,
        help=summary,
        description=f"{summary}.\n\n{description}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=f"pipeserve.cli.{module}")
    return parser


def _add_build_models(commands) -> None:
    parser = _command(
        commands,
        "build-models",
        "build_models",
        "build the small local models the quickstart and the tests serve",
        "Trains a byte-level BPE tokenizer and saves a random-weight 4-layer Llama\n"
        "(tiny-llama, with a chat template) under --out, then writes the models file\n"
        "listing them and prints its path. No model hub is needed. Models already\n"
        "built are kept unless --force is given.",
    )
    parser.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help="models to build (default: tiny-llama), e.g. the pipeline tasks' tiny-bert-sentiment, tiny-bert-ner, "
        "tiny-bert-mlm, tiny-bert-nli, tiny-bert-embeddings, tiny-bert-qa, tiny-tapas, and tiny-t5 (summarization, "
        "translation)",
    )
    parser.add_argument("--out", type=Path, default=Path("models"), help="directory to build in (default: models)")
    parser.add_argument("--force", action="store_true", help="rebuild models that are already there")


def _add_serving_options(parser: argparse.ArgumentParser) -> None:
    """The stack's options, shared by serve-all and quickstart so both start it the same way."""
    group = parser.add_argument_group("stack")
    group.add_argument(
        "--gateway-listen",
        default=defaults.GATEWAY_LISTEN,
        metavar="HOST:PORT",
        help=f"gateway address; 0.0.0.0:PORT to accept other machines (default: {defaults.GATEWAY_LISTEN})",
    )
    group.add_argument(
        "--tokenizer-listen",
        default=defaults.TOKENIZER_LISTEN,
        metavar="HOST:PORT",
        help=f"tokenizer service address, dialled by the gateway (default: {defaults.TOKENIZER_LISTEN})",
    )
    group.add_argument(
        "--model-workers",
        type=_non_negative_int,
        default=1,
        metavar="N",
        help="model worker processes, each serving every text-generation model (default: 1)",
    )
    group.add_argument(
        "--tokenizers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="tokenizer service processes; the gateway balances over them and fails over between them (default: 1)",
    )
    group.add_argument(
        "--redis-url",
        metavar="URL",
        help="Redis holding the request queue (default: $REDIS_URL if set, else an embedded "
        "valkey-server on a free port, stopped with the stack)",
    )
    group.add_argument(
        "--ready-timeout",
        type=_positive_float,
        default=defaults.READY_TIMEOUT_S,
        metavar="SECONDS",
        help=f"give up (and stop everything) if the stack is not ready by then (default: {defaults.READY_TIMEOUT_S:g})",
    )
    group.add_argument(
        "--metrics-port-base",
        type=_port,
        metavar="PORT",
        help="serve Prometheus metrics from every process on consecutive ports: the gateway on PORT, the "
        "tokenizer on PORT+1, model worker N on PORT+1+N (default: no metrics)",
    )
    group.add_argument(
        "--stop-timeout",
        type=_positive_float,
        default=defaults.STOP_TIMEOUT_S,
        metavar="SECONDS",
        help=f"grace per stop stage after SIGTERM before a process is killed (default: {defaults.STOP_TIMEOUT_S:g})",
    )


def _add_serve_all(commands) -> None:
    parser = _command(
        commands,
        "serve-all",
        "serve_all",
        "run the whole stack on this machine until Ctrl-C",
        "Starts Redis (embedded unless a URL is given), the tokenizer service, the model\n"
        "workers and the gateway as separate processes, waits until every one is ready\n"
        "(health checks SERVING, worker heartbeats in Redis), prints a 'pipeserve ready:'\n"
        "line and serves. If any process exits, the others are stopped and the command\n"
        "exits 1 naming it. Ctrl-C or SIGTERM stops the gateway, then the workers, then\n"
        "the tokenizer, then Redis. Environment: REDIS_URL, PIPESERVE_MODELS_FILE,\n"
        "PIPESERVE_KEY_PREFIX and every service's own PIPESERVE_* settings pass through,\n"
        "except two that must differ per process: each model worker answers health checks\n"
        "on a free loopback port (PIPESERVE_WORKER_HEALTH_LISTEN), and metrics ports come\n"
        "from --metrics-port-base (PIPESERVE_METRICS_PORT is ignored).",
    )
    parser.add_argument(
        "--models-file",
        type=Path,
        metavar="PATH",
        help="YAML file listing the served models (default: $PIPESERVE_MODELS_FILE if set, else models/models.yaml)",
    )
    _add_serving_options(parser)
    parser.add_argument(
        "--ready-file",
        type=Path,
        metavar="PATH",
        help='once ready, write {"gateway": "host:port", "redis_url": ..., "models": [...], "metrics": '
        '{child: "host:port"}, "worker_health": {child: "host:port"}} there as JSON (atomically); removed again '
        "on shutdown",
    )


def _add_generate(commands) -> None:
    parser = _command(
        commands,
        "generate",
        "generate",
        "stream a completion from a running gateway to the terminal",
        "Prints the text as it is generated; then the finish reason, token usage, time\n"
        "to first token and tokens/s on stderr. Unset generation options are the\n"
        "model's generation_config.json defaults. On a gRPC error prints\n"
        "'error: <CODE>: <details>' and exits 1.\n\n"
        "examples:\n"
        '  pipeserve generate "def fibonacci(n):" --max-new-tokens 48\n'
        '  pipeserve generate --chat "Write a haiku about queues" --temperature 0.8 --seed 1\n'
        "  git diff | pipeserve generate --chat --system 'Review this patch.'",
    )
    parser.add_argument("prompt", nargs="?", metavar="PROMPT", help='the prompt; "-" or none reads it from stdin')
    parser.add_argument(
        "--chat", action="store_true", help="send PROMPT as a user message, rendered with the model's chat template"
    )
    parser.add_argument("--system", metavar="TEXT", help="a system message before the user's (implies --chat)")
    parser.add_argument(
        "--model", metavar="NAME", help="model name (default: the first text-generation model the gateway lists)"
    )
    _add_gateway_options(parser)
    options = parser.add_argument_group("generation options (unset: the model's default)")
    options.add_argument("--max-new-tokens", type=int, metavar="N")
    options.add_argument(
        "--do-sample",
        action=argparse.BooleanOptionalAction,
        help="sample instead of greedy decoding (default: on when --temperature, --top-k or --top-p is given)",
    )
    options.add_argument("--temperature", type=float, metavar="T")
    options.add_argument("--top-k", type=int, metavar="K", help="0 disables top-k filtering")
    options.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling mass, in (0, 1]")
    options.add_argument("--repetition-penalty", type=float, metavar="R", help="1.0 disables it")
    options.add_argument("--seed", type=int, metavar="S", help="makes sampling reproducible")
    options.add_argument(
        "--stop",
        action="append",
        metavar="S",
        help="stop before this string (not included in the output); repeat for several",
    )
    parser.add_argument(
        "--no-stream", action="store_true", help="use the unary Generate call and print the text when it is complete"
    )


def _add_pipeline(commands) -> None:
    parser = _command(
        commands,
        "pipeline",
        "pipeline",
        "run a pipeline task (classification, NER, fill-mask, embeddings, QA, ...) on a running gateway",
        "What `pipeline(task, model=MODEL)(TEXT, ...)` does in a notebook, through the\n"
        "gateway's PipelineService.Run. The texts fill the task's input items; --options\n"
        "sets the rest of the task's input message (protos/pipeserve/v1/pipelines.proto)\n"
        "as JSON, in protobuf's JSON mapping. Prints the result as JSON, one entry per\n"
        "text, packed tensors as nested lists. On a gRPC error prints\n"
        "'error: <CODE>: <details>' and exits 1.\n\n"
        "examples:\n"
        '  pipeserve pipeline tiny-bert-sentiment "I loved it" "terrible" --options \'{"top_k": 0}\'\n'
        '  pipeserve pipeline tiny-bert-ner "John lives in Paris" --options \'{"aggregation_strategy": "AGGREGATION_STRATEGY_SIMPLE"}\'\n'
        '  pipeserve pipeline tiny-bert-nli "The match ended 2-1." --options \'{"candidate_labels": ["sports", "politics"]}\'\n'
        '  pipeserve pipeline tiny-bert-qa --options \'{"items": [{"question": "Who?", "context": "Guido wrote it."}]}\'\n'
        '  pipeserve pipeline tiny-tapas "How many stars?" --options \'{"columns": [{"header": "Stars", "cells": ["36542"]}]}\'\n'
        "  cat reviews.txt | pipeserve pipeline tiny-bert-sentiment -",
    )
    parser.add_argument("model", metavar="MODEL", help="a model the gateway serves, e.g. tiny-bert-sentiment")
    parser.add_argument(
        "texts", nargs="*", metavar="TEXT", help='texts to run the task on; "-" reads them from stdin, one per line'
    )
    parser.add_argument(
        "--task", metavar="TASK", help="a task or alias, e.g. sentiment-analysis, ner (default: the model's task)"
    )
    parser.add_argument(
        "--options",
        metavar="JSON",
        default="{}",
        help="the task input's other fields as a JSON object, e.g. '{\"top_k\": 0}' (question-answering: its items)",
    )
    _add_gateway_options(parser)


def _add_gateway_options(parser: argparse.ArgumentParser) -> None:
    """Where the gateway is, how to authenticate to it, and the call's deadline (the client commands)."""
    parser.add_argument(
        "--target",
        default=defaults.GATEWAY_LISTEN,
        metavar="HOST:PORT",
        help=f"the gateway (default: {defaults.GATEWAY_LISTEN})",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=300.0,
        metavar="SECONDS",
        help="deadline for the whole call (default: 300)",
    )
    security = parser.add_argument_group("security (a gateway with API keys or TLS)")
    security.add_argument(
        "--api-key", metavar="KEY", help="sent as 'authorization: Bearer KEY' (default: $PIPESERVE_API_KEY)"
    )
    security.add_argument("--tls-ca", type=Path, metavar="PEM", help="dial over TLS, trusting this CA bundle")
    security.add_argument(
        "--tls-cert", type=Path, metavar="PEM", help="client certificate, for a gateway that requires mutual TLS"
    )
    security.add_argument("--tls-key", type=Path, metavar="PEM", help="private key of --tls-cert")


def _add_quickstart(commands) -> None:
    parser = _command(
        commands,
        "quickstart",
        "quickstart",
        "build the local models, start the stack, stream one chat completion, stop",
        "What `make quickstart` runs. Builds the local models into --models-dir unless\n"
        "its models.yaml exists, starts the stack exactly as serve-all does (embedded\n"
        "Redis unless REDIS_URL or --redis-url is given), streams one chat completion\n"
        "to the terminal, then stops everything; with --keep-serving it stays up until\n"
        "Ctrl-C, for `pipeserve generate` from another terminal. The services log\n"
        "warnings and errors only, unless PIPESERVE_LOG_LEVEL is set.",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=Path("models"),
        metavar="DIR",
        help="where the models and their models.yaml are, or are built (default: models)",
    )
    parser.add_argument(
        "--prompt",
        default=QUICKSTART_PROMPT,
        metavar="TEXT",
        help=f"the user message to send (default: {QUICKSTART_PROMPT!r})",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=48, metavar="N", help="length of the completion (default: 48)"
    )
    parser.add_argument("--keep-serving", action="store_true", help="keep the stack up after the completion")
    _add_serving_options(parser)


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _port(text: str) -> int:
    value = _non_negative_int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"must be a port between 1 and 65535, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value
