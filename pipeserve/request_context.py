"""The request a piece of code is working for, so every log line about it can name it.

The gateway assigns each generation request an id; it travels to the
tokenizer service in gRPC metadata (``x-request-id``) and to the model worker
inside the WorkItem. Each process binds it while it works for that request:
asyncio tasks and threads each see their own binding (a ContextVar), and the
log formatter (``pipeserve.logsetup``) adds it to every line logged meanwhile.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

REQUEST_ID_METADATA = "x-request-id"

_request_id: ContextVar[str | None] = ContextVar("pipeserve_request_id", default=None)


def current_request_id() -> str | None:
    return _request_id.get()


def bind_request_id(request_id: str | None) -> None:
    """Name ``request_id`` in log lines for the rest of the current asyncio task.

    For gRPC handlers: grpc.aio runs each call in a task of its own, so the
    binding ends with the call and nothing needs undoing.
    """
    if request_id:
        _request_id.set(request_id)


@contextlib.contextmanager
def bound_request_id(request_id: str | None) -> Iterator[None]:
    """Name ``request_id`` in log lines until the block ends (None or "" binds nothing new)."""
    if not request_id:
        yield
        return
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)
