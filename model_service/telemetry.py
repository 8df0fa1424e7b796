"""What a model worker records: per engine step its load, per request its spans, its outcome and one log line.

Kept apart from the loop (``worker``) so the loop reads as scheduling. Each
request's spans join the gateway's trace through ``WorkItem.trace_context``
and are recorded with explicit times, as the loop serves many requests at
once and none of them is "current":

- ``queue wait``: from ``enqueued_unix_ms`` (the gateway's clock) to pick-up;
- ``generate``: pick-up to the final chunk, and inside it ``prefill``:
  pick-up to the request's first token (waiting for a free row, the prefill
  forward pass and the first sampling).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from model_service.engine.interface import EngineEvent, GenerationEngine, RequestFailed
from pipeserve import tracing
from pipeserve.errors import status_code_from_int
from pipeserve.internal.v1 import queue_pb2
from pipeserve.metrics import BATCH_SIZE, ENGINE_STEP, KV_CACHE_TOKENS, QUEUE_WAIT, WORKER_REQUESTS
from pipeserve.request_context import bound_request_id

log = logging.getLogger("model_service.requests")

_tracer = trace.get_tracer(tracing.MODEL_WORKER)


class StepMetrics:
    """One model's engine load: step time, and the rows and KV cache in use after each step."""

    def __init__(self, model: str):
        self._step_seconds = ENGINE_STEP.labels(model)
        self._rows = BATCH_SIZE.labels(model)
        self._kv_cache_tokens = KV_CACHE_TOKENS.labels(model)
        # Exported as 0 from the start, so an idle worker's series exist.
        self._rows.set(0)
        self._kv_cache_tokens.set(0)

    @contextlib.contextmanager
    def measure(self, engine: GenerationEngine) -> Iterator[None]:
        """Time the engine step run inside the block, then read the engine's load."""
        started = time.perf_counter()
        yield
        self._step_seconds.observe(time.perf_counter() - started)
        rows = engine.running_rows
        self._rows.set(rows)
        self._kv_cache_tokens.set(rows * engine.cache_width)


def count_refusal(model: str, code: grpc.StatusCode) -> None:
    """A work item refused before it started (expired in the queue, invalid for this model)."""
    WORKER_REQUESTS.labels(model, code.name.lower()).inc()


class RequestTelemetry:
    """One request from pick-up to its final chunk."""

    def __init__(self, model: str, item: queue_pb2.WorkItem):
        self._model = model
        self._request_id = item.request_id
        self._prompt_tokens = len(item.prompt_token_ids)
        self._picked_up = time.perf_counter()
        now_ns = time.time_ns()
        # Another host's clock: never let it start the wait after the pick-up.
        queued_ns = min(tracing.ns_from_unix_ms(item.enqueued_unix_ms), now_ns) if item.enqueued_unix_ms else now_ns
        self._queue_wait_s = (now_ns - queued_ns) / 1e9
        QUEUE_WAIT.labels(model).observe(self._queue_wait_s)

        parent = tracing.extract(item.trace_context)
        attributes = {"pipeserve.request_id": item.request_id, "pipeserve.model": model}
        _tracer.start_span("queue wait", context=parent, start_time=queued_ns, attributes=attributes).end(now_ns)
        self._generate = _tracer.start_span(
            "generate",
            context=parent,
            kind=SpanKind.CONSUMER,
            start_time=now_ns,
            attributes={**attributes, "pipeserve.prompt_tokens": self._prompt_tokens},
        )
        self._prefill = _tracer.start_span(
            "prefill", context=trace.set_span_in_context(self._generate), start_time=now_ns
        )
        self._first_token_s: float | None = None
        self._tokens = 0
        self._finish_reason = ""

    def record(self, event: EngineEvent) -> None:
        """An engine event of this request."""
        if isinstance(event, RequestFailed):
            self._generate.set_status(Status(StatusCode.ERROR, event.message))
            return
        if event.token_ids and self._first_token_s is None:
            self._first_token_s = time.perf_counter() - self._picked_up
            self._prefill.end()
        self._tokens += len(event.token_ids)
        if event.finish_reason is not None:
            self._finish_reason = event.finish_reason.value

    def finished(self, final_chunk: queue_pb2.ReplyChunk) -> None:
        """The request's final chunk is ready: count the request, end its spans, log its line.

        Its outcome is the error's status code when it failed, else the
        finish reason of its last sequence to end.
        """
        if final_chunk.HasField("error"):
            outcome = status_code_from_int(final_chunk.error.code).name.lower()
        elif final_chunk.HasField("forward"):
            outcome = "ok"
        else:
            outcome = self._finish_reason
        WORKER_REQUESTS.labels(self._model, outcome).inc()
        if self._first_token_s is None:
            self._prefill.end()
        self._generate.set_attributes({"pipeserve.completion_tokens": self._tokens, "pipeserve.outcome": outcome})
        self._generate.end()
        ttft = f"{self._first_token_s * 1000:.1f}" if self._first_token_s is not None else "-"
        with bound_request_id(self._request_id):
            log.info(
                "request ended: model=%s outcome=%s prompt_tokens=%d completion_tokens=%d "
                "queue_ms=%.1f ttft_ms=%s duration_ms=%.1f",
                self._model,
                outcome,
                self._prompt_tokens,
                self._tokens,
                self._queue_wait_s * 1000,
                ttft,
                (time.perf_counter() - self._picked_up) * 1000,
            )
