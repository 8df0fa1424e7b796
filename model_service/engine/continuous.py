"""Our continuous batcher: iteration-level scheduling over a padded KV cache.

Each step (1) drops cancelled sequences, (2) decodes one token for every
running row, dropping the rows that finished, and (3) admits waiting
requests: their prompts are prefilled and each one's first token chosen
(so a new request gets its first token in the step after it arrives,
whatever is running), then their rows join the batch for the next decode.
Nobody waits for the longest sequence, and a finished row's slot is free at
once.

A prompt longer than ``prefill_chunk_tokens`` is prefilled one chunk per
step, between the running rows' decode steps, so a long prompt delays the
others' next token by one chunk's prefill at most, not by its whole prefill.

Whole prompts admitted in the same step are prefilled together, grouped by
length so padding stays small: on a CPU one forward of several prompts
costs about half of one forward each (profiled: prefill was half of a
busy worker's time). A batched prefill rounds differently from a prompt
alone, exactly as a batched decode step does (matmul blocking depends on
the row count, differences ~1e-6 in the logits); greedy parity with
``generate`` is tested with both.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from model_service.engine.cancels import PendingCancels, drop_waiting, rows_to_keep
from model_service.engine.interface import (
    EngineEvent,
    FinishReason,
    GenerationRequest,
    RequestFailed,
    SequenceUpdate,
)
from model_service.engine.kv_batch import PaddedKVBatch, PrefilledRows
from model_service.engine.sampling import SamplingRows
from pipeserve.errors import InvalidArgument

log = logging.getLogger(__name__)


def _final_length(request: GenerationRequest) -> int:
    """The most tokens one of the request's rows can hold in the cache: its prompt plus max_new_tokens."""
    return len(request.prompt_token_ids) + request.sampling.max_new_tokens


@dataclass
class _Row:
    """One running sequence: a row of the batch."""

    request: GenerationRequest
    index: int
    generated: int

    def finish_reason(self, token: int) -> FinishReason | None:
        return self.request.sampling.finish_reason(token, self.generated)


@dataclass
class _Waiting:
    request: GenerationRequest
    indexes: list[int] = field(default_factory=list)
    """The sequences still wanted (a cancel can remove some before the request starts)."""
    cache: DynamicCache | None = None
    """The prompt's cache so far, while it is prefilled chunk by chunk."""
    prefilled: int = 0
    """Prompt tokens already in ``cache``."""


_Joining = tuple[PrefilledRows, list[_Row], SamplingRows]
"""A prefilled request's rows, ready to merge into the batch, with their sampling state."""

MAX_PADDING = 1.25
"""Prompts prefilled together are padded to the longest; a group grows while that costs at most 25 % more tokens."""


def _similar_lengths(waiting: list[_Waiting]) -> list[list[_Waiting]]:
    """Groups of prompts to prefill together: sorted by length, each group's padding kept under MAX_PADDING."""
    groups: list[list[_Waiting]] = []
    tokens = 0
    for item in sorted(waiting, key=lambda w: len(w.request.prompt_token_ids), reverse=True):
        length = len(item.request.prompt_token_ids)
        if groups:
            longest = len(groups[-1][0].request.prompt_token_ids)
            if longest * (len(groups[-1]) + 1) <= MAX_PADDING * (tokens + length):
                groups[-1].append(item)
                tokens += length
                continue
        groups.append([item])
        tokens = length
    return groups


class ContinuousBatcher:
    """GenerationEngine over a padded KV cache; see the module docstring for one step's anatomy.

    max_batch_size bounds the running rows. prefill_tokens_per_step bounds
    how many prompt tokens one step prefills (at least one chunk always runs
    when rows are free), so a burst of arrivals does not stall the running
    rows' decode for long; prefill_chunk_tokens bounds one forward pass of
    one prompt. kv_budget_tokens (None: unbounded) bounds the padded cache,
    rows × longest row, counting each row at its prompt plus max_new_tokens:
    a request that would not fit waits, and ``free_rows`` says so, so the
    worker leaves it in the queue.
    """

    def __init__(
        self,
        model,
        *,
        max_batch_size: int,
        prefill_tokens_per_step: int,
        vocab_size: int,
        device: torch.device | str,
        prefill_chunk_tokens: int | None = None,
        kv_budget_tokens: int | None = None,
    ):
        self._device = torch.device(device)
        self._batch = PaddedKVBatch(model, self._device, max_rows=max_batch_size, budget_tokens=kv_budget_tokens)
        self._max_batch_size = max_batch_size
        self._prefill_tokens_per_step = prefill_tokens_per_step
        self._prefill_chunk_tokens = prefill_chunk_tokens or prefill_tokens_per_step
        self._kv_budget_tokens = kv_budget_tokens
        self._vocab_size = vocab_size
        self._rows: list[_Row] = []
        self._sampling: SamplingRows | None = None
        self._waiting: deque[_Waiting] = deque()
        self._cancels = PendingCancels()

    @property
    def running_rows(self) -> int:
        return len(self._rows)

    @property
    def cache_width(self) -> int:
        """Tokens per row in the KV cache, padding included: what one decode step attends over."""
        return self._batch.width

    @property
    def cache_tokens(self) -> int:
        """KV cache allocated, in row-positions (rows × columns of the buffers): what kv_budget_tokens bounds."""
        rows, columns = self._batch.capacity
        return rows * columns

    @property
    def relocations(self) -> int:
        """Times the whole KV cache was copied to make room (joins and leaves normally copy only their rows)."""
        return self._batch.relocations

    @property
    def free_rows(self) -> int:
        """Rows left under max_batch_size and, with a KV budget, under the budget at today's longest row.

        With a budget and nothing running or waiting it is 1: a request's
        size is unknown until it is read, and any that passed ``add``'s check
        fits an empty batch.
        """
        reserved = len(self._rows) + sum(len(w.indexes) for w in self._waiting)
        room = self._max_batch_size - reserved
        if self._kv_budget_tokens is None:
            return room
        if not reserved:
            return 1
        longest = max(
            [_final_length(row.request) for row in self._rows] + [_final_length(w.request) for w in self._waiting]
        )
        return min(room, self._kv_budget_tokens // longest - reserved)

    @property
    def has_work(self) -> bool:
        return bool(self._rows or self._waiting or self._cancels)

    def add(self, request: GenerationRequest) -> None:
        """Queue a request; InvalidArgument when this engine could never run it."""
        n = request.sampling.num_return_sequences
        if not 1 <= n <= self._max_batch_size:
            raise InvalidArgument(f"num_return_sequences must be in [1, {self._max_batch_size}], got {n}")
        if not request.prompt_token_ids:
            raise InvalidArgument("the prompt is empty")
        if self._kv_budget_tokens is not None and n * _final_length(request) > self._kv_budget_tokens:
            raise InvalidArgument(
                f"{n} sequence(s) of prompt ({len(request.prompt_token_ids)} tokens) plus max_new_tokens "
                f"({request.sampling.max_new_tokens}) need more KV cache than this worker's whole budget "
                f"({self._kv_budget_tokens} tokens, PIPESERVE_KV_CACHE_BUDGET_MB); "
                "shorten the prompt or lower max_new_tokens"
            )
        self._waiting.append(_Waiting(request, list(range(n))))

    def cancel(self, request_id: str, indexes: Iterable[int] | None = None) -> None:
        """Noted now, applied at the start of the next step; unknown or finished requests are ignored there."""
        self._cancels.note(request_id, indexes)

    def step(self) -> list[EngineEvent]:
        events: list[EngineEvent] = []
        with torch.inference_mode():
            self._apply_cancels(events)
            if self._rows:
                self._decode(events)
            self._admit(events)
        return events

    def close(self) -> None:
        self._batch.clear()

    def _apply_cancels(self, events: list[EngineEvent]) -> None:
        if not self._cancels:
            return
        cancelled = self._cancels.take()
        drop_waiting(self._waiting, cancelled, events)
        self._keep_rows(rows_to_keep(self._rows, cancelled, events))

    def _decode(self, events: list[EngineEvent]) -> None:
        try:
            tokens = self._sampling.choose(self._batch.decode())
        except Exception as exc:
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
        """Prefill waiting requests that fit, first come first served, and merge the finished ones into the batch.

        Each waiting request gets at most one chunk per step; later requests
        run in the same step while the step's prefill budget lasts. The
        whole prompts admitted in one step are prefilled together, in
        forwards of prompts of similar length.
        """
        reserved = len(self._rows)
        longest = max((_final_length(row.request) for row in self._rows), default=0)
        budget = self._prefill_tokens_per_step
        whole: list[_Waiting] = []
        chunked: list[tuple[_Waiting, int]] = []
        for waiting in list(self._waiting):
            rows = reserved + len(waiting.indexes)
            row_length = max(longest, _final_length(waiting.request))
            if rows > self._max_batch_size or not self._fits(rows, row_length):
                break
            reserved, longest = rows, row_length
            prompt_length = len(waiting.request.prompt_token_ids)
            chunk = min(prompt_length - waiting.prefilled, self._prefill_chunk_tokens)
            if budget < self._prefill_tokens_per_step and chunk > budget:
                break
            budget -= chunk
            if waiting.prefilled == 0 and chunk == prompt_length:
                whole.append(waiting)
            else:
                chunked.append((waiting, chunk))
        parts = [part for waiting, chunk in chunked if (part := self._prefill_chunk(waiting, chunk, events))]
        for group in _similar_lengths(whole):
            parts.extend(self._prefill_whole(group, events))
        if not parts:
            return
        try:
            self._batch.merge([rows for rows, _, _ in parts])
        except Exception as exc:
            log.exception("merging %d new requests into the batch failed", len(parts))
            failed = dict.fromkeys(row.request.request_id for _, rows, _ in parts for row in rows)
            events.extend(RequestFailed(request_id, f"joining the batch failed: {exc!r}") for request_id in failed)
            return
        self._rows.extend(row for _, rows, _ in parts for row in rows)
        sampling = [self._sampling] if self._sampling is not None else []
        self._sampling = SamplingRows.concat(sampling + [s for _, _, s in parts])

    def _fits(self, rows: int, longest: int) -> bool:
        return self._kv_budget_tokens is None or rows * longest <= self._kv_budget_tokens

    def _prefill_chunk(self, waiting: _Waiting, chunk: int, events: list[EngineEvent]) -> _Joining | None:
        """Prefill the next chunk of one request's prompt; the rows to merge once the prompt is whole."""
        prompt = waiting.request.prompt_token_ids
        try:
            cache, logits = self._batch.prefill(
                list(prompt[waiting.prefilled : waiting.prefilled + chunk]), waiting.cache
            )
        except Exception as exc:  # noqa: BLE001 - _fail_prefill logs it with its traceback
            self._fail_prefill([waiting], exc, events)
            return None
        waiting.prefilled += chunk
        if waiting.prefilled < len(prompt):
            waiting.cache = cache
            return None
        return self._start(waiting, cache, logits, events)

    def _prefill_whole(self, group: list[_Waiting], events: list[EngineEvent]) -> list[_Joining]:
        """Prefill these whole prompts in one forward; the rows of each to merge."""
        try:
            prefilled = self._batch.prefill_together([list(w.request.prompt_token_ids) for w in group])
        except Exception as exc:  # noqa: BLE001 - _fail_prefill logs it with its traceback
            self._fail_prefill(group, exc, events)
            return []
        joining = []
        for waiting, (cache, logits) in zip(group, prefilled):
            waiting.prefilled = len(waiting.request.prompt_token_ids)
            if part := self._start(waiting, cache, logits, events):
                joining.append(part)
        return joining

    def _fail_prefill(self, group: list[_Waiting], exc: Exception, events: list[EngineEvent]) -> None:
        log.exception("prefill of request(s) %s failed", ", ".join(w.request.request_id for w in group))
        for waiting in group:
            self._waiting.remove(waiting)
            events.append(RequestFailed(waiting.request.request_id, f"prefill failed: {exc!r}"))

    def _start(
        self, waiting: _Waiting, cache: DynamicCache, logits: torch.Tensor, events: list[EngineEvent]
    ) -> _Joining | None:
        """The prompt is whole: choose each sequence's first token; the rows to merge, or None when none runs on.

        The request leaves the waiting queue here, whatever happens.
        """
        request = waiting.request
        self._waiting.remove(waiting)
        try:
            sampling = SamplingRows.for_request(
                request.sampling, list(request.prompt_token_ids), len(waiting.indexes), self._vocab_size, self._device
            )
            tokens = sampling.choose(logits.expand(len(waiting.indexes), -1))
        except Exception as exc:
            log.exception("choosing the first token of request %s failed", request.request_id)
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
        return PrefilledRows(cache, len(request.prompt_token_ids), tokens[index]), rows, sampling.select(live)

    def _keep_rows(self, keep: list[int]) -> None:
        if len(keep) == len(self._rows):
            return
        order = self._batch.keep(keep)
        self._rows = [self._rows[i] for i in order]
        self._sampling = self._sampling.select(order) if order else None
