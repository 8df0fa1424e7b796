"""Beam search beside the continuous batch: transformers' own ``generate``, one request at a time, on a thread.

Beam search does not fit a batch of independent rows: every step reorders
a request's beams (and their KV cache), finished candidates are kept aside
and scored with a length penalty, and the search ends by rules of its own
(early_stopping). Rather than re-implement all that inside the batch,
requests with num_beams > 1 run through ``model.generate`` itself, so their
output equals transformers' by construction, on a thread of their own so
that the batch keeps decoding meanwhile. They run one at a time (a beam
search is already a batch of num_beams rows), and their sequences are
reported whole when the search ends: generate returns nothing earlier.

Every other request goes to the wrapped engine, untouched.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from model_service.engine.interface import (
    EngineEvent,
    FinishReason,
    GenerationEngine,
    GenerationRequest,
    RequestFailed,
    SamplingOptions,
    SequenceUpdate,
)
from pipeserve.errors import InvalidArgument

log = logging.getLogger(__name__)

MAX_WAITING = 3
"""Beam searches held here behind the running one before the worker stops reading (``free_rows``), so that
further ones wait in the queue, where any worker can take them. A read made while none is held may bring more
(up to the batch's free rows, all of which could be searches): that bound is the batch size."""

POLL_INTERVAL_S = 0.01
"""How often the worker loop looks for a finished search while nothing else needs a step."""

Ended = tuple[list[int], FinishReason]
"""A returned sequence's tokens, and why it ended."""


@dataclass(eq=False)
class _Search:
    request: GenerationRequest
    stop: threading.Event = field(default_factory=threading.Event)
    cancelled: set[int] = field(default_factory=set)
    """Sequence indexes cancelled; all of them stops the search."""

    @property
    def all_cancelled(self) -> bool:
        return len(self.cancelled) == self.request.sampling.num_return_sequences

    def cancelled_updates(self) -> list[EngineEvent]:
        request_id = self.request.request_id
        count = self.request.sampling.num_return_sequences
        return [SequenceUpdate(request_id, index, [], FinishReason.CANCELLED) for index in range(count)]


class _StopWhenSet(StoppingCriteria):
    """Marks every beam done once the event is set, so generate returns after its current step."""

    def __init__(self, event: threading.Event):
        self._event = event

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self._event.is_set(), dtype=torch.bool, device=input_ids.device)


def check_beam_search(options: SamplingOptions) -> None:
    """InvalidArgument for beam-search options this runner cannot serve (the worker checks its work items with it)."""
    if options.do_sample:
        raise InvalidArgument(
            f"num_beams={options.num_beams} with do_sample=true asks for beam sampling, which is not served; "
            "set do_sample=false for beam search"
        )
    if options.ignore_eos:
        raise InvalidArgument("ignore_eos is not served with beam search (num_beams > 1)")
    if options.num_return_sequences > options.num_beams:
        raise InvalidArgument(
            f"num_return_sequences ({options.num_return_sequences}) must be at most num_beams ({options.num_beams})"
        )
    if not math.isfinite(options.length_penalty):
        raise InvalidArgument(f"length_penalty must be a finite number, got {options.length_penalty}")


def generate_options(options: SamplingOptions) -> dict:
    """generate()'s keyword arguments for a beam search with these options (the model's defaults already in them)."""
    return dict(
        do_sample=False,
        num_beams=options.num_beams,
        num_return_sequences=options.num_return_sequences,
        max_new_tokens=options.max_new_tokens,
        min_new_tokens=options.min_new_tokens,
        length_penalty=options.length_penalty,
        early_stopping=options.early_stopping,
        no_repeat_ngram_size=options.no_repeat_ngram_size,
        repetition_penalty=options.repetition_penalty,
        # None (no ids at all) leaves the model's own, which then has none either: the tokenizer resolved from it.
        eos_token_id=sorted(options.eos_token_ids) or None,
    )


def sequence_end(tokens: list[int], options: SamplingOptions) -> Ended:
    """One returned sequence cut after its end-of-sequence token (generate pads shorter ones), and why it ended."""
    for position, token in enumerate(tokens):
        if token in options.eos_token_ids:
            return tokens[: position + 1], FinishReason.EOS
    return tokens, FinishReason.LENGTH


class BeamSearchRunner:
    """GenerationEngine: num_beams > 1 runs ``model.generate`` on a thread, anything else the wrapped engine.

    The batch metrics (``running_rows``, ``cache_width``) are the wrapped
    engine's: a beam search is not in the batch.
    """

    def __init__(self, engine: GenerationEngine, model, *, device: torch.device | str):
        self._engine = engine
        self._model = model
        self._device = torch.device(device)
        self._encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="beam-search")
        self._running: tuple[_Search, Future[list[Ended]]] | None = None
        self._waiting: deque[_Search] = deque()
        self._events: list[EngineEvent] = []
        """Events of searches that ended without running (cancelled while waiting), for the next step."""

    @property
    def free_rows(self) -> int:
        """The wrapped engine's free rows; while a search is held, no more than the searches that could still wait.

        Not capped while none is held: a burst of ordinary requests is read as
        fast as the batch takes it, as without this runner.
        """
        held = len(self._waiting) + (self._running is not None)
        if not held:
            return self._engine.free_rows
        return min(self._engine.free_rows, max(0, 1 + MAX_WAITING - held))

    @property
    def has_work(self) -> bool:
        return self._engine.has_work or bool(self._running or self._waiting or self._events)

    @property
    def due_in_s(self) -> float | None:
        """How long the worker loop may wait before its next step: at once while the batch decodes or a result
        is ready, POLL_INTERVAL_S while only a beam search runs; None when idle."""
        if self._engine.has_work or self._events or (self._running is not None and self._running[1].done()):
            return 0.0
        return POLL_INTERVAL_S if self._running is not None else None

    @property
    def running_rows(self) -> int:
        return self._engine.running_rows

    @property
    def cache_width(self) -> int:
        return self._engine.cache_width

    def add(self, request: GenerationRequest) -> None:
        options = request.sampling
        if options.num_beams <= 1:
            self._engine.add(request)
            return
        if not request.prompt_token_ids:
            raise InvalidArgument("the prompt is empty")
        check_beam_search(options)
        self._waiting.append(_Search(request))
        self._start_next()

    def cancel(self, request_id: str, indexes: Iterable[int] | None = None) -> None:
        """A beam search stops within one decode step once all its sequences are cancelled."""
        search = self._search(request_id)
        if search is None:
            self._engine.cancel(request_id, indexes)
            return
        count = search.request.sampling.num_return_sequences
        search.cancelled |= set(range(count)) if indexes is None else set(indexes) & set(range(count))
        if not search.all_cancelled:
            return
        if search in self._waiting:
            self._waiting.remove(search)
            self._events.extend(search.cancelled_updates())
        else:
            search.stop.set()

    def step(self) -> list[EngineEvent]:
        events = self._engine.step() if self._engine.has_work else []
        events.extend(self._events)
        self._events = []
        if self._running is not None and self._running[1].done():
            events.extend(self._finish(*self._running))
            self._running = None
        self._start_next()
        return events

    def close(self) -> None:
        for search in [*self._waiting, *([self._running[0]] if self._running else [])]:
            search.stop.set()
        self._waiting.clear()
        self._thread.shutdown(wait=True, cancel_futures=True)
        self._engine.close()

    def _search(self, request_id: str) -> _Search | None:
        searches = [*self._waiting, *([self._running[0]] if self._running else [])]
        return next((search for search in searches if search.request.request_id == request_id), None)

    def _start_next(self) -> None:
        if self._running is None and self._waiting:
            search = self._waiting.popleft()
            self._running = search, self._thread.submit(self._generate, search)

    def _finish(self, search: _Search, result: Future[list[Ended]]) -> list[EngineEvent]:
        """The events of a search that ended: its sequences (best first), or CANCELLED, or its failure."""
        request_id = search.request.request_id
        if search.all_cancelled:
            return search.cancelled_updates()
        try:
            sequences = result.result()
        except Exception as exc:  # one bad request must not take the worker down
            log.error("beam search of request %s failed", request_id, exc_info=exc)
            return [RequestFailed(request_id, f"beam search failed: {exc!r}")]
        return [
            SequenceUpdate(request_id, index, [], FinishReason.CANCELLED)
            if index in search.cancelled
            else SequenceUpdate(request_id, index, tokens, reason)
            for index, (tokens, reason) in enumerate(sequences)
        ]

    def _generate(self, search: _Search) -> list[Ended]:
        """Runs on the beam-search thread; inference mode is per thread, so it is entered here."""
        request = search.request
        with torch.inference_mode():
            prompt = torch.tensor([list(request.prompt_token_ids)], dtype=torch.long, device=self._device)
            output = self._model.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                stopping_criteria=StoppingCriteriaList([_StopWhenSet(search.stop)]),
                **generate_options(request.sampling),
            )
        # Decoder-only output continues the prompt; encoder-decoder output starts with the decoder start token.
        start = 1 if self._encoder_decoder else prompt.shape[1]
        return [sequence_end(row[start:], request.sampling) for row in output.tolist()]
