"""Our continuous batcher: iteration-level scheduling over a padded KV cache.

Each step (1) drops cancelled sequences, (2) decodes one token for every
running row, dropping the rows that finished, and (3) admits waiting
requests: each is prefilled alone and its first token chosen (so a new
request gets its first token in the step after it arrives, whatever is
running), then its rows join the batch for the next decode. Nobody waits
for the longest sequence, and a finished row's slot is free at once.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from model_service.engine.interface import (
    EngineEvent,
    FinishReason,
    GenerationRequest,
    RequestFailed,
    SequenceUpdate,
)
from model_service.engine.kv_batch import PaddedKVBatch, PrefilledRows
from model_service.engine.sampling import SamplingRows

log = logging.getLogger(__name__)


@dataclass
class _Row:
    """One running sequence: a row of the batch."""

    request: GenerationRequest
    index: int
    generated: int

    def finish_reason(self, token: int) -> FinishReason | None:
        options = self.request.sampling
        if not options.ignore_eos and token in options.eos_token_ids:
            return FinishReason.EOS
        if self.generated >= options.max_new_tokens:
            return FinishReason.LENGTH
        return None


@dataclass
class _Waiting:
    request: GenerationRequest
    indexes: list[int] = field(default_factory=list)
    """The sequences still wanted (a cancel can remove some before the request starts)."""


class ContinuousBatcher:
    """GenerationEngine over a padded KV cache; see the module docstring for one step's anatomy.

    max_batch_size bounds the running rows. prefill_tokens_per_step bounds
    how many prompt tokens one step prefills (at least one request is always
    admitted when rows are free), so a burst of arrivals does not stall the
    running rows' decode for long.
    """

    def __init__(
        self, model, *, max_batch_size: int, prefill_tokens_per_step: int, vocab_size: int, device: torch.device | str
    ):
        self._device = torch.device(device)
        self._batch = PaddedKVBatch(model, self._device)
        self._max_batch_size = max_batch_size
        self._prefill_tokens_per_step = prefill_tokens_per_step
        self._vocab_size = vocab_size
        self._rows: list[_Row] = []
        self._sampling: SamplingRows | None = None
        self._waiting: deque[_Waiting] = deque()
        self._cancels: dict[str, set[int] | None] = {}

    @property
    def running_rows(self) -> int:
        return len(self._rows)

    @property
    def cache_width(self) -> int:
        """Tokens per row in the KV cache, padding included: what one decode step attends over."""
        return self._batch.width

    @property
    def free_rows(self) -> int:
        return self._max_batch_size - len(self._rows) - sum(len(w.indexes) for w in self._waiting)

    @property
    def has_work(self) -> bool:
        return bool(self._rows or self._waiting or self._cancels)

    def add(self, request: GenerationRequest) -> None:
        n = request.sampling.num_return_sequences
        if not 1 <= n <= self._max_batch_size:
            raise ValueError(f"num_return_sequences must be in [1, {self._max_batch_size}], got {n}")
        if not request.prompt_token_ids:
            raise ValueError("the prompt is empty")
        self._waiting.append(_Waiting(request, list(range(n))))

    def cancel(self, request_id: str, indexes: Iterable[int] | None = None) -> None:
        """Noted now, applied at the start of the next step; unknown or finished requests are ignored there."""
        already = self._cancels.get(request_id, set())
        self._cancels[request_id] = None if indexes is None or already is None else already | set(indexes)

    def step(self) -> list[EngineEvent]:
        events: list[EngineEvent] = []
        with torch.inference_mode():
            self._apply_cancels(events)
            if self._rows:
                self._decode(events)
            self._admit(events)
        return events

    def _apply_cancels(self, events: list[EngineEvent]) -> None:
        if not self._cancels:
            return
        cancels, self._cancels = self._cancels, {}

        def cancelled(request_id: str, index: int) -> bool:
            return request_id in cancels and (cancels[request_id] is None or index in cancels[request_id])

        for waiting in list(self._waiting):
            gone = [i for i in waiting.indexes if cancelled(waiting.request.request_id, i)]
            events.extend(SequenceUpdate(waiting.request.request_id, i, [], FinishReason.CANCELLED) for i in gone)
            waiting.indexes = [i for i in waiting.indexes if i not in gone]
            if not waiting.indexes:
                self._waiting.remove(waiting)
        keep = []
        for position, row in enumerate(self._rows):
            if cancelled(row.request.request_id, row.index):
                events.append(SequenceUpdate(row.request.request_id, row.index, [], FinishReason.CANCELLED))
            else:
                keep.append(position)
        self._keep_rows(keep)

    def _decode(self, events: list[EngineEvent]) -> None:
        try:
            tokens = self._sampling.choose(self._batch.decode())
        except Exception as exc:  # noqa: BLE001 - whatever broke the forward pass, the batch is lost, not the worker
            log.exception("decode step failed; failing the %d running sequences", len(self._rows))
            failed = dict.fromkeys(row.request.request_id for row in self._rows)
            events.extend(RequestFailed(request_id, f"decode step failed: {exc!r}") for request_id in failed)
            self._keep_rows([])
            return
        self._sampling.record(tokens)
        self._batch.next_tokens = tokens
        keep = []
        for position, (row, token) in enumerate(zip(self._rows, tokens.tolist())):
            row.generated += 1
            reason = row.finish_reason(token)
            events.append(SequenceUpdate(row.request.request_id, row.index, [token], reason))
            if reason is None:
                keep.append(position)
        self._keep_rows(keep)

    def _admit(self, events: list[EngineEvent]) -> None:
        """Prefill waiting requests that fit, first come first served, and merge their live rows into the batch."""
        parts: list[tuple[PrefilledRows, list[_Row], SamplingRows]] = []
        joining = 0
        prefilled_tokens = 0
        while self._waiting:
            waiting = self._waiting[0]
            prompt_length = len(waiting.request.prompt_token_ids)
            if len(self._rows) + joining + len(waiting.indexes) > self._max_batch_size:
                break
            if parts and prefilled_tokens + prompt_length > self._prefill_tokens_per_step:
                break
            self._waiting.popleft()
            prefilled_tokens += prompt_length
            part = self._prefill(waiting, events)
            if part is not None:
                parts.append(part)
                joining += len(part[1])
        if not parts:
            return
        try:
            self._batch.merge([rows for rows, _, _ in parts])
        except Exception as exc:  # noqa: BLE001 - the running batch is untouched when merging fails
            log.exception("merging %d new requests into the batch failed", len(parts))
            failed = dict.fromkeys(row.request.request_id for _, rows, _ in parts for row in rows)
            events.extend(RequestFailed(request_id, f"joining the batch failed: {exc!r}") for request_id in failed)
            return
        self._rows.extend(row for _, rows, _ in parts for row in rows)
        sampling = [self._sampling] if self._sampling is not None else []
        self._sampling = SamplingRows.concat(sampling + [s for _, _, s in parts])

    def _prefill(
        self, waiting: _Waiting, events: list[EngineEvent]
    ) -> tuple[PrefilledRows, list[_Row], SamplingRows] | None:
        """Prefill one request alone and choose each sequence's first token; None when nothing is left to run."""
        request = waiting.request
        prompt = list(request.prompt_token_ids)
        try:
            cache, logits = self._batch.prefill(prompt)
            sampling = SamplingRows.for_request(
                request.sampling, prompt, len(waiting.indexes), self._vocab_size, self._device
            )
            tokens = sampling.choose(logits.expand(len(waiting.indexes), -1))
        except Exception as exc:  # noqa: BLE001 - one bad request must not take the worker down
            log.exception("prefill of request %s failed", request.request_id)
            events.append(RequestFailed(request.request_id, f"prefill failed: {exc!r}"))
            return None
        sampling.record(tokens)
        live, rows = [], []
        for position, (index, token) in enumerate(zip(waiting.indexes, tokens.tolist())):
            row = _Row(request, index, generated=1)
            reason = row.finish_reason(token)
            events.append(SequenceUpdate(request.request_id, index, [token], reason))
            if reason is None:
                live.append(position)
                rows.append(row)
        if not live:
            return None
        index = torch.as_tensor(live, dtype=torch.long, device=self._device)
        cache.batch_select_indices(torch.zeros_like(index))
        return PrefilledRows(cache, len(prompt), tokens[index]), rows, sampling.select(live)

    def _keep_rows(self, keep: list[int]) -> None:
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[i] for i in keep]
        self._batch.select(keep)
        self._sampling = self._sampling.select(keep) if keep else None
