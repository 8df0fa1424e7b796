"""Cancellations: noted whenever they arrive, applied by an engine at the start of its next step."""

from __future__ import annotations

from collections.abc import Callable, Iterable, MutableSequence, Sequence

from model_service.engine.interface import EngineEvent, FinishReason, SequenceUpdate

Cancelled = Callable[[str, int], bool]
"""Whether sequence (request id, index) was cancelled."""


class PendingCancels:
    """The sequences to drop at the next step: all of a request's, or some of its indexes."""

    def __init__(self):
        self._pending: dict[str, set[int] | None] = {}

    def __bool__(self) -> bool:
        return bool(self._pending)

    def note(self, request_id: str, indexes: Iterable[int] | None = None) -> None:
        already = self._pending.get(request_id, set())
        self._pending[request_id] = None if indexes is None or already is None else already | set(indexes)

    def take(self) -> Cancelled:
        """What was noted so far, as a test; the noted cancels are cleared."""
        pending, self._pending = self._pending, {}

        def cancelled(request_id: str, index: int) -> bool:
            return request_id in pending and (pending[request_id] is None or index in pending[request_id])

        return cancelled


def drop_waiting(waiting: MutableSequence, cancelled: Cancelled, events: list[EngineEvent]) -> None:
    """Cancel sequences of requests not started yet (items with ``request`` and ``indexes``); one left with none leaves."""
    for item in list(waiting):
        request_id = item.request.request_id
        gone = [index for index in item.indexes if cancelled(request_id, index)]
        events.extend(SequenceUpdate(request_id, index, [], FinishReason.CANCELLED) for index in gone)
        item.indexes = [index for index in item.indexes if index not in gone]
        if not item.indexes:
            waiting.remove(item)


def rows_to_keep(rows: Sequence, cancelled: Cancelled, events: list[EngineEvent]) -> list[int]:
    """Positions of the running rows (with ``request`` and ``index``) not cancelled; each cancelled one ends now."""
    keep = []
    for position, row in enumerate(rows):
        if cancelled(row.request.request_id, row.index):
            events.append(SequenceUpdate(row.request.request_id, row.index, [], FinishReason.CANCELLED))
        else:
            keep.append(position)
    return keep
