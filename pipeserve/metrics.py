"""Every Prometheus metric pipeserve exports, defined here once so names and labels stay consistent.

Each process imports them all but updates only its own: a labelled metric
with no label values yet exports nothing, so a gateway's /metrics shows
gateway series, a worker's worker series. Every metric is labelled, and
label values come from bounded sets (served model names, RPC names, status
codes, finish reasons), never from what a client typed.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

NO_MODEL = "-"
"""The model label of calls that name no served model (ListModels, an unknown name)."""

# Latency buckets (seconds) spanning what each measures: a whole call can
# last minutes, a token arrives in milliseconds, a tokenizer call in microseconds.
_CALL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_FIRST_TOKEN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5)
_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_TOKENIZER_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)

# Gateway: one count and duration per public call (gateway.request_log), token timing of generation calls.
REQUESTS = Counter(
    "pipeserve_requests", "Public gRPC calls by how they ended (status code name)", ["rpc", "model", "code"]
)
REQUEST_DURATION = Histogram(
    "pipeserve_request_duration_seconds",
    "Public gRPC calls, arrival to last message",
    ["rpc", "model"],
    buckets=_CALL_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "pipeserve_time_to_first_token_seconds",
    "Generation calls, arrival to the first generated token reaching the gateway",
    ["model"],
    buckets=_FIRST_TOKEN_BUCKETS,
)
INTER_TOKEN_LATENCY = Histogram(
    "pipeserve_inter_token_latency_seconds",
    "Time between a sequence's streamed messages divided by the tokens the later one carries, once per token",
    ["model"],
    buckets=_TOKEN_BUCKETS,
)
GENERATED_TOKENS = Counter("pipeserve_generated_tokens", "Tokens streamed back to clients", ["model"])

# Queue: sampled by every gateway on a timer (gateway.queue_metrics), for dashboards and autoscalers.
QUEUE_DEPTH = Gauge(
    "pipeserve_queue_depth", "Entries in the model's request stream: queued plus in flight (XLEN)", ["model"]
)
QUEUE_LAG = Gauge(
    "pipeserve_queue_lag", "Entries of the model's stream no worker has read yet (consumer group lag)", ["model"]
)
QUEUE_PENDING = Gauge(
    "pipeserve_queue_pending", "Entries read by a worker and not yet acknowledged: generations in flight", ["model"]
)

# Model worker: the engine's load and each request's outcome (model_service.request_telemetry).
BATCH_SIZE = Gauge("pipeserve_batch_size", "Sequences (rows) in the running batch after the last step", ["model"])
KV_CACHE_TOKENS = Gauge(
    "pipeserve_kv_cache_tokens",
    "KV cache in use after the last step: rows times cached length, padding included",
    ["model"],
)
ENGINE_STEP = Histogram(
    "pipeserve_engine_step_seconds",
    "One engine step: cancels, a decode of every row, admissions and their prefill",
    ["model"],
    buckets=_STEP_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "pipeserve_queue_wait_seconds",
    "Enqueue by the gateway to pick-up by a worker",
    ["model"],
    buckets=_FIRST_TOKEN_BUCKETS,
)
WORKER_REQUESTS = Counter(
    "pipeserve_worker_requests",
    "Requests a worker ended: the finish reason of the last sequence to end (eos, length, cancelled), "
    "or the status code of a refusal or failure (invalid_argument, deadline_exceeded, internal)",
    ["model", "finish_reason"],
)

# Tokenizer service: the CPU work per call or chunk.
TOKENIZER_SECONDS = Histogram(
    "pipeserve_tokenizer_seconds",
    "Tokenizer work: preprocess and tokenize per call, detokenize per reply chunk and sequence",
    ["op"],
    buckets=_TOKENIZER_BUCKETS,
)


def start_metrics_server(port: int) -> None:
    """Serve /metrics on every interface from a daemon thread (port 0: do nothing).

    A thread, not the service's event loop or engine loop, so a scrape is
    answered while either is busy.
    """
    if port == 0:
        return
    try:
        start_http_server(port, addr="0.0.0.0")
    except OSError as exc:
        raise OSError(
            f"cannot serve metrics on port {port} ({exc.strerror}); is another process using it? "
            "Set PIPESERVE_METRICS_PORT to a free port, or 0 to turn metrics off"
        ) from None
    log.info("Prometheus metrics on port %d, path /metrics", port)
