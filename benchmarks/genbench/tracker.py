"""Progress while the benchmark runs: which phase, how far, and each finished row as it lands."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Self

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

Advance = Callable[[], None]
"""Called once per finished request, to move the progress bar."""


def no_progress() -> None:
    """The Advance of a caller that shows no progress."""


class Tracker:
    """A live bar for the step in progress (on a terminal) above which finished steps are printed as lines.

    Off a terminal the bar is not drawn: a line says when each step starts.
    The bar redraws a few times a second only: the benchmark shares the CPU
    with what it measures.
    """

    def __init__(self, console: Console):
        self.console = console
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            refresh_per_second=4,
        )

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._progress.stop()

    @contextmanager
    def step(self, description: str, total: int | None = None) -> Iterator[Callable[[], None]]:
        """Show ``description`` with a bar of ``total`` items while the block runs; yields the advance callable."""
        task = self._progress.add_task(description, total=total)
        if not self.console.is_terminal:
            self.note(f"{description} ...")
        try:
            yield lambda: self._progress.advance(task)
        finally:
            self._progress.remove_task(task)

    def note(self, message: str) -> None:
        self._progress.console.print(message, highlight=False)
