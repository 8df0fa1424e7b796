"""Dynamic batching for forward-only tasks: gather rows, pad, one forward, split back.

Work items of one model wait here until ``max_batch_size`` rows are
gathered or the oldest has waited ``max_wait_ms``; then the rows of as many
whole requests as fit run as one right-padded batch (pad_token_id,
attention_mask 0) under ``torch.inference_mode``, and each request gets its
rows' outputs back, cut to each row's own length where an output is per
token. A request whose rows alone exceed the batch runs alone, in slices of
``max_batch_size`` rows. Cancelled requests (cancel flag, passed deadline)
are dropped before the forward, never run.

The batcher speaks the engine interface (``interface.GenerationEngine``) so
that ``ModelLane`` drives it like a generation engine: ``add``, ``cancel``,
``step`` and the same events, plus ``ForwardDone`` carrying the outputs.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from model_service.engine.interface import FinishReason, RequestFailed, SequenceUpdate
from pipeserve.queue.forward_rows import POSITIONS, Row, RowOutputs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ForwardRequest:
    request_id: str
    rows: Sequence[Row]
    """Model input name -> int64 array per row ([tokens] or [tokens, ...]), un-padded; optionally POSITIONS."""
    output_names: Sequence[str]
    token_outputs: Sequence[str] = ()
    """Those of output_names with a token axis after the batch axis."""


@dataclass
class ForwardDone:
    """A forward request's outputs, one dict per row, in its rows' order."""

    request_id: str
    outputs: list[RowOutputs] = field(default_factory=list)


@dataclass
class _Waiting:
    request: ForwardRequest
    since: float


def pad_rows(rows: Sequence[Row], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad rows to one batch: input_ids with pad_token_id, every other input (masks, types) with 0.

    Only the token axis is padded: an input with more values per token (TAPAS's
    token_type_ids, [tokens, 7]) keeps its trailing axes, which every row shares.
    """
    width = max(len(row["input_ids"]) for row in rows)
    names = [name for name in rows[0] if name != POSITIONS]
    batch = {}
    for name in names:
        fill = pad_token_id if name == "input_ids" else 0
        padded = np.full((len(rows), width, *np.shape(rows[0][name])[1:]), fill, dtype=np.int64)
        for index, row in enumerate(rows):
            padded[index, : len(row[name])] = row[name]
        batch[name] = torch.from_numpy(padded)
    if "attention_mask" not in batch:
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for index, row in enumerate(rows):
            mask[index, : len(row["input_ids"])] = 1
        batch["attention_mask"] = torch.from_numpy(mask)
    return batch


def split_outputs(
    outputs, rows: Sequence[Row], output_names: Iterable[str], token_outputs: Iterable[str]
) -> list[RowOutputs]:
    """Per row: each named output without the batch axis, as float32; per-token ones cut to the row's tokens."""
    per_token = set(token_outputs)
    arrays = {name: outputs[name].float().cpu().numpy() for name in output_names}
    split = []
    for index, row in enumerate(rows):
        length = len(row["input_ids"])
        positions = row.get(POSITIONS)
        result = {}
        for name, array in arrays.items():
            value = array[index]
            if name in per_token:
                value = value[:length] if positions is None else value[np.asarray(positions, dtype=np.int64)]
            result[name] = np.ascontiguousarray(value)
        split.append(result)
    return split


def run_forward(
    model: torch.nn.Module, requests: Sequence[ForwardRequest], *, pad_token_id: int, device
) -> list[list[RowOutputs]]:
    """One padded forward over the rows of these requests (which all want the same outputs); outputs per request."""
    rows = [row for request in requests for row in request.rows]
    batch = {name: tensor.to(device) for name, tensor in pad_rows(rows, pad_token_id).items()}
    accepted = inspect.signature(model.forward).parameters
    if "use_cache" in accepted:
        # As the pipelines do: a classification head on a decoder must not build a KV cache.
        batch["use_cache"] = False
    with torch.inference_mode():
        outputs = model(**batch)
    split = split_outputs(outputs, rows, requests[0].output_names, requests[0].token_outputs)
    per_request, start = [], 0
    for request in requests:
        per_request.append(split[start : start + len(request.rows)])
        start += len(request.rows)
    return per_request


class ForwardBatcher:
    """The forward-only engine of one model (see the module docstring)."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        max_batch_size: int,
        max_wait_ms: int,
        pad_token_id: int,
        device,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._model = model
        self._max_rows = max_batch_size
        self._max_wait_s = max_wait_ms / 1000
        self._pad_token_id = pad_token_id
        self._device = device
        self._clock = clock
        self._waiting: list[_Waiting] = []
        self._cancelled: list[str] = []
        self._last_batch_rows = 0

    @property
    def free_rows(self) -> int:
        return self._max_rows - self._waiting_rows

    @property
    def has_work(self) -> bool:
        return bool(self._waiting or self._cancelled)

    @property
    def running_rows(self) -> int:
        return self._last_batch_rows

    @property
    def cache_width(self) -> int:
        return 0

    @property
    def due_in_s(self) -> float | None:
        """Seconds until the waiting rows run (0: at the next step); None when nothing waits."""
        if not self._waiting:
            return None
        if self._waiting_rows >= self._max_rows:
            return 0.0
        return max(0.0, self._waiting[0].since + self._max_wait_s - self._clock())

    @property
    def _waiting_rows(self) -> int:
        return sum(len(waiting.request.rows) for waiting in self._waiting)

    def add(self, request: ForwardRequest) -> None:
        self._waiting.append(_Waiting(request, self._clock()))

    def cancel(self, request_id: str, indexes: Iterable[int] | None = None) -> None:
        """Drop a waiting request before its forward; it ends with CANCELLED at the next step."""
        kept = [waiting for waiting in self._waiting if waiting.request.request_id != request_id]
        if len(kept) != len(self._waiting):
            self._waiting = kept
            self._cancelled.append(request_id)

    def step(self) -> list:
        events: list = [SequenceUpdate(request_id, 0, [], FinishReason.CANCELLED) for request_id in self._cancelled]
        self._cancelled = []
        batch = self._take_batch()
        if batch:
            events.extend(self._run(batch))
        return events

    def warm_up(self) -> None:
        """One forward of a one-token row, so a model that cannot run fails at start-up."""
        row = {"input_ids": np.array([self._pad_token_id], dtype=np.int64)}
        run_forward(
            self._model, [ForwardRequest("warm-up", [row], ())], pad_token_id=self._pad_token_id, device=self._device
        )

    def close(self) -> None:
        self._waiting = []

    def _take_batch(self) -> list[ForwardRequest]:
        """Whole requests, oldest first, up to max rows, once the batch is full or the oldest waited long enough."""
        if not self._waiting or self.due_in_s > 0:
            return []
        first = self._waiting[0].request
        taken, rows = [], 0
        for waiting in self._waiting:
            request = waiting.request
            same_outputs = (request.output_names, request.token_outputs) == (first.output_names, first.token_outputs)
            if taken and (rows + len(request.rows) > self._max_rows or not same_outputs):
                break
            taken.append(request)
            rows += len(request.rows)
        self._waiting = self._waiting[len(taken) :]
        return taken

    def _run(self, requests: list[ForwardRequest]) -> list:
        """The forward in slices of max rows (one request may be bigger than a batch); a failure fails its requests."""
        try:
            if len(requests) == 1 and len(requests[0].rows) > self._max_rows:
                outputs = [self._run_in_slices(requests[0])]
            else:
                self._last_batch_rows = sum(len(request.rows) for request in requests)
                outputs = run_forward(self._model, requests, pad_token_id=self._pad_token_id, device=self._device)
        except Exception as exc:
            log.exception("forward of %d requests failed", len(requests))
            return [RequestFailed(request.request_id, f"forward failed: {exc}") for request in requests]
        return [ForwardDone(request.request_id, rows) for request, rows in zip(requests, outputs)]

    def _run_in_slices(self, request: ForwardRequest) -> list[RowOutputs]:
        outputs: list[RowOutputs] = []
        for start in range(0, len(request.rows), self._max_rows):
            rows = request.rows[start : start + self._max_rows]
            part = ForwardRequest(request.request_id, rows, request.output_names, request.token_outputs)
            self._last_batch_rows = len(rows)
            outputs.extend(run_forward(self._model, [part], pad_token_id=self._pad_token_id, device=self._device)[0])
        return outputs
