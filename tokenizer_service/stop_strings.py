"""Stop strings over streamed text: nothing past a stop string is ever released."""

from __future__ import annotations

from collections.abc import Sequence


class StopStringMatcher:
    """Finds the first stop string in text that arrives in deltas of any size.

    Text is released as soon as it can no longer be the start of a stop
    string, so at most ``max(len(stop)) - 1`` characters are held back. When
    several stop strings occur, the one that is complete first in the text
    wins (as if the text had arrived one character at a time), and the
    released text ends right before it.
    """

    def __init__(self, stops: Sequence[str]):
        if any(not stop for stop in stops):
            raise ValueError("stop strings must not be empty")
        self._stops = tuple(dict.fromkeys(stops))
        self._longest = max((len(stop) for stop in self._stops), default=0)
        self._held = ""
        self.stopped = False

    def push(self, text: str) -> tuple[str, bool]:
        """Add a delta; return (text now safe to release, whether a stop string was hit)."""
        if self.stopped:
            raise RuntimeError("push() after a stop string was hit")
        if not self._stops:
            return text, False
        buffer = self._held + text
        hit = self._first_complete(buffer)
        if hit is not None:
            self._held = ""
            self.stopped = True
            return buffer[:hit], True
        keep = self._partial_suffix_length(buffer)
        self._held = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        """Release what was held back: the text ended without completing a stop string."""
        held, self._held = self._held, ""
        return held

    def _first_complete(self, buffer: str) -> int | None:
        """Start of the stop string that ends earliest in buffer (the longer one on a tie)."""
        best: tuple[int, int] | None = None
        for stop in self._stops:
            start = buffer.find(stop)
            if start >= 0:
                candidate = (start + len(stop), start)
                if best is None or candidate < best:
                    best = candidate
        return None if best is None else best[1]

    def _partial_suffix_length(self, buffer: str) -> int:
        """Length of the longest end of buffer that some stop string starts with."""
        for length in range(min(len(buffer), self._longest - 1), 0, -1):
            tail = buffer[len(buffer) - length :]
            if any(stop.startswith(tail) for stop in self._stops):
                return length
        return 0
