"""What crosses into and out of a generation engine: token ids in, per-sequence token events out.

Plain dataclasses, no protobuf and no tensors, so the worker (which speaks
the queue protocol) and any engine (ours, or transformers'
ContinuousBatchingManager behind an adapter) meet on small types only.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class FinishReason(enum.Enum):
    EOS = "eos"
    LENGTH = "length"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class SamplingOptions:
    """Generation options with the model's defaults already applied (nothing left optional but the seed).

    Semantics follow transformers' generate: top_k=0 and top_p=1 disable
    those filters; temperature, top_k and top_p only matter when do_sample;
    length_penalty and early_stopping only with num_beams > 1;
    no_repeat_ngram_size=0 and min_new_tokens=0 disable those constraints.
    """

    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    num_return_sequences: int = 1
    seed: int | None = None
    eos_token_ids: frozenset[int] = frozenset()
    ignore_eos: bool = False
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    """True, False or "never", as generate takes it."""
    no_repeat_ngram_size: int = 0
    min_new_tokens: int = 0

    def finish_reason(self, token: int, generated: int) -> FinishReason | None:
        """Why a sequence ends with ``token``, its ``generated``-th new token; None while it goes on."""
        if not self.ignore_eos and token in self.eos_token_ids:
            return FinishReason.EOS
        if generated >= self.max_new_tokens:
            return FinishReason.LENGTH
        return None


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_token_ids: Sequence[int]
    sampling: SamplingOptions
    decoder_prompt_token_ids: Sequence[int] = ()
    """Encoder-decoder engines only: tokens the decoder already produced (a resumed sequence continues after
    them). Decoder-only engines never get any: a resumed sequence's tokens are part of its prompt."""


@dataclass
class SequenceUpdate:
    """New tokens of one sequence (request, index) from one engine step; finish_reason set on its last."""

    request_id: str
    index: int
    token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None


@dataclass(frozen=True)
class RequestFailed:
    """The engine could not run this request (e.g. the forward pass raised); all its sequences are gone.

    ``message`` is for the log and the operator; the traceback was logged where it happened.
    """

    request_id: str
    message: str


EngineEvent = SequenceUpdate | RequestFailed


class GenerationEngine(Protocol):
    """An iteration-level batching engine, driven one step at a time by a single thread.

    ``add`` never blocks: a request that does not fit waits inside the engine
    until rows (or KV cache) free up; callers that want it to wait in the
    queue instead read new work only while ``free_rows`` is positive. ``add``
    raises InvalidArgument for a request this engine could never run. Every
    sequence of every added request ends with exactly one SequenceUpdate
    carrying a finish reason, or its request with one RequestFailed.
    """

    @property
    def free_rows(self) -> int:
        """Sequences that could still be added without waiting (negative when over-committed)."""
        ...

    @property
    def has_work(self) -> bool:
        """True while any request is running, waiting or has events still to report."""
        ...

    @property
    def running_rows(self) -> int:
        """Sequences in the running batch (the batch-size metric)."""
        ...

    @property
    def cache_width(self) -> int:
        """Tokens per row in the KV cache, padding included; times running_rows, the KV cache in use."""
        ...

    def add(self, request: GenerationRequest) -> None: ...

    def cancel(self, request_id: str, indexes: Iterable[int] | None = None) -> None:
        """Stop some sequences of a request (None: all); they end at the next step with CANCELLED."""
        ...

    def step(self) -> list[EngineEvent]:
        """Run one iteration (admit, prefill, decode) and report what happened to each sequence."""
        ...

    def close(self) -> None:
        """Release what the engine holds (memory, threads); called once, when the worker stops."""
        ...
