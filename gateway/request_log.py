"""Accounting of each public call: one log line and its metrics, whichever way the call ends.

Which request, which model, how it ended, how long it took; for generation
calls also the time to first token and the tokens streamed. The log line
names the request through the bound request id (pipeserve.request_context).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection
from typing import Self

import grpc

from gateway.deadline import Deadline
from pipeserve.errors import PipeserveError
from pipeserve.metrics import (
    GENERATED_TOKENS,
    INTER_TOKEN_LATENCY,
    NO_MODEL,
    REQUEST_DURATION,
    REQUESTS,
    TIME_TO_FIRST_TOKEN,
)

log = logging.getLogger("gateway.requests")


def status_of(exc: BaseException | None, deadline: Deadline | None) -> tuple[grpc.StatusCode, str]:
    """The status a call ends with, as the client sees it, and the message sent with it."""
    if exc is None:
        return grpc.StatusCode.OK, ""
    if isinstance(exc, PipeserveError):
        return exc.code, exc.message
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code(), exc.details() or ""
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        # grpc cancels the handler both when the client goes away and when its deadline passes.
        if deadline is not None and deadline.expired():
            return grpc.StatusCode.DEADLINE_EXCEEDED, "the client's deadline passed"
        return grpc.StatusCode.CANCELLED, "the client cancelled the call or went away"
    # grpc_errors logs the traceback of our own bugs.
    return grpc.StatusCode.INTERNAL, type(exc).__name__


class RequestLog:
    """Context manager accounting for a call when it exits: the log line, pipeserve_requests_total and its duration.

    ``served`` bounds the model label: a name no model has (a client's typo)
    is counted as "-", so clients cannot mint label values.
    """

    def __init__(self, rpc: str, model: str, *, served: Collection[str], deadline: Deadline | None = None):
        self._rpc = rpc
        self._model = model
        self._label = model if model in served else NO_MODEL
        self._deadline = deadline
        self._started = time.perf_counter()
        self._first_token_s: float | None = None
        self._last_message_at: dict[int, float] = {}
        self._tokens = 0

    def __enter__(self) -> Self:
        self._started = time.perf_counter()
        return self

    def streamed(self, index: int, token_count: int) -> None:
        """One message of sequence ``index`` carrying ``token_count`` tokens reached the gateway.

        Tokens come in chunks (the worker flushes every few tokens), so the
        gap since the sequence's previous message is shared by the tokens of
        this one: observed once per token, as gap / tokens.
        """
        if not token_count:
            return
        now = time.perf_counter()
        if self._first_token_s is None:
            self._first_token_s = now - self._started
            TIME_TO_FIRST_TOKEN.labels(self._label).observe(self._first_token_s)
        previous = self._last_message_at.get(index)
        if previous is not None:
            per_token = (now - previous) / token_count
            latency = INTER_TOKEN_LATENCY.labels(self._label)
            for _ in range(token_count):
                latency.observe(per_token)
        self._last_message_at[index] = now
        self._tokens += token_count
        GENERATED_TOKENS.labels(self._label).inc(token_count)

    def __exit__(self, exc_type, exc, traceback) -> None:
        code, message = status_of(exc, self._deadline)
        duration_s = time.perf_counter() - self._started
        REQUESTS.labels(self._rpc, self._label, code.name).inc()
        REQUEST_DURATION.labels(self._rpc, self._label).observe(duration_s)
        generated = (
            f" ttft_ms={self._first_token_s * 1000:.1f} tokens={self._tokens}"
            if self._first_token_s is not None
            else ""
        )
        log.info(
            "%s model=%s status=%s duration_ms=%.1f%s%s",
            self._rpc,
            self._model or "-",
            code.name,
            duration_s * 1000,
            generated,
            f" error={message!r}" if message else "",
        )
