"""Start-up progress for a person: a spinner on a terminal, plain lines in logs and pipes."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO

from pipeserve.cli.supervisor import ReadinessCheck, Reporter

PLAIN_REMINDER_INTERVAL_S = 10.0


def say(message: str, file: TextIO | None = None) -> None:
    """One line from pipeserve itself, told apart from the services' log lines by its prefix."""
    print(f"pipeserve: {message}", file=file or sys.stderr, flush=True)


class PlainReporter:
    """A line per passed check, and every few seconds a reminder of what is still awaited."""

    def __init__(self, file: TextIO | None = None):
        self._file = file
        self._last_reminder = time.monotonic()

    def waiting(self, pending: Sequence[ReadinessCheck]) -> None:
        if time.monotonic() - self._last_reminder >= PLAIN_REMINDER_INTERVAL_S:
            self._last_reminder = time.monotonic()
            say(f"waiting for: {'; '.join(check.description for check in pending)}", self._file)

    def passed(self, check: ReadinessCheck, elapsed_s: float) -> None:
        say(f"ready: {check.description} ({elapsed_s:.1f}s)", self._file)


class RichReporter:
    """A rich spinner naming what is still awaited; passed checks are printed above it.

    The spinner is kept to one line: the services write to the same terminal,
    and a wrapped status would be redrawn over their log lines.
    """

    def __init__(self, status, console):
        self._status = status
        self._console = console

    def waiting(self, pending: Sequence[ReadinessCheck]) -> None:
        from rich.text import Text

        names = ", ".join(check.name for check in pending)
        self._status.update(Text(f"waiting for {names}", no_wrap=True, overflow="ellipsis"))

    def passed(self, check: ReadinessCheck, elapsed_s: float) -> None:
        self._console.print(f"[green]✓[/green] {check.description} [dim]({elapsed_s:.1f}s)[/dim]", highlight=False)


@contextmanager
def startup_reporter(file: TextIO | None = None) -> Iterator[Reporter]:
    """The reporter suited to where the output goes (stderr by default)."""
    file = file or sys.stderr
    if not file.isatty():
        yield PlainReporter(file)
        return
    from rich.console import Console

    console = Console(file=file)
    with console.status("starting ...") as status:
        yield RichReporter(status, console)
