"""One log line per public call: which request, which model, how it ended, how long it took."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Self

import grpc

from gateway.deadline import Deadline
from pipeserve.errors import PipeserveError

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
    """Context manager logging a call's outcome when it exits, whichever way it exits."""

    def __init__(self, rpc: str, model: str, *, request_id: str = "-", deadline: Deadline | None = None):
        self._rpc = rpc
        self._model = model
        self._request_id = request_id
        self._deadline = deadline
        self._started = time.perf_counter()

    def __enter__(self) -> Self:
        self._started = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        code, message = status_of(exc, self._deadline)
        duration_ms = (time.perf_counter() - self._started) * 1000
        log.info(
            "%s request_id=%s model=%s status=%s duration_ms=%.1f%s",
            self._rpc,
            self._request_id,
            self._model or "-",
            code.name,
            duration_ms,
            f" error={message!r}" if message else "",
        )
