"""Tokenizer work off the event loop: it would block every other call of the process while it runs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from pipeserve.metrics import TOKENIZER_SECONDS

T = TypeVar("T")


async def timed_in_thread(op: str, work: Callable[..., T], *args) -> T:
    """Run ``work(*args)`` in a worker thread, timed as pipeserve_tokenizer_seconds{op}."""
    return await asyncio.to_thread(_timed, op, work, *args)


def _timed(op: str, work: Callable[..., T], *args) -> T:
    with TOKENIZER_SECONDS.labels(op).time():
        return work(*args)
