"""One absolute deadline per request, shared by every step that serves it.

The tokenizer calls, the enqueue and the work item (which the model worker
reads) all count down to the same instant: the client's deadline, or
``request_timeout_s`` after arrival when the client set none.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc

from pipeserve.errors import DeadlineExceeded


@dataclass(frozen=True)
class Deadline:
    unix_s: float
    # How long the request was given in all, for messages a person reads.
    budget_s: float

    @classmethod
    def for_call(cls, context: grpc.aio.ServicerContext, default_timeout_s: float) -> Deadline:
        remaining = context.time_remaining()
        budget = default_timeout_s if remaining is None else remaining
        return cls(unix_s=time.time() + budget, budget_s=budget)

    @property
    def unix_ms(self) -> int:
        return int(self.unix_s * 1000)

    def remaining_s(self) -> float:
        return self.unix_s - time.time()

    def expired(self) -> bool:
        return self.remaining_s() <= 0

    def exceeded(self, step: str) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"the request's deadline ({self.budget_s:.3g} s) passed during {step}; "
            "set a longer deadline on the call (or raise PIPESERVE_REQUEST_TIMEOUT_S) or ask for fewer tokens"
        )

    def timeout_for(self, step: str) -> float:
        """Seconds left for a downstream call; raises DeadlineExceeded when none are."""
        remaining = self.remaining_s()
        if remaining <= 0:
            raise self.exceeded(step)
        return remaining
