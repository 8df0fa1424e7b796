"""Runs a set of child processes as one unit: start, wait until ready, watch, stop in order.

It knows nothing about pipeserve; ``stack.py`` says which children and
readiness checks there are. Each child runs in its own process group, so a
Ctrl-C in the terminal reaches only the supervisor, which then stops the
children in reverse start order (a gateway drains its streams while the
services behind it still run). On Linux each child is also sent SIGTERM if
the supervisor dies without cleaning up, so no child outlives it; that tie
is to the thread that started the child, so start children from a thread
that lives as long as they should (the main thread).

A child whose spec says ``restart`` is started again when it exits once the
set is up (``wait``), like a Kubernetes pod with restartPolicy Always; during
start-up its exit fails the start like any other's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

POLL_INTERVAL_S = 0.1
_PR_SET_PDEATHSIG = 1
# A restarted child that dies young waits twice as long before the next start, up to the maximum;
# one that ran for RESTART_RESET_S starts from the first delay again (Kubernetes' CrashLoopBackOff, shorter).
RESTART_DELAY_S = 1.0
RESTART_DELAY_MAX_S = 30.0
RESTART_RESET_S = 60.0


@dataclass(frozen=True)
class ChildSpec:
    """One process to run.

    Children with the same ``stage`` are stopped together; stages are stopped
    in the reverse of the order they were first started in.
    """

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    stage: str | None = None
    restart: bool = False
    """Start it again when it exits after start-up (a worker whose work others can take over meanwhile)."""

    @property
    def stop_stage(self) -> str:
        return self.stage or self.name


@dataclass(frozen=True)
class ReadinessCheck:
    """A condition worth waiting for, named for a one-line spinner and described for logs and errors.

    ``probe`` returns whether the condition holds now; it must come back
    quickly (bounded I/O), as it is polled several times a second.
    """

    name: str
    description: str
    probe: Callable[[], bool]


class Reporter(Protocol):
    """Shows start-up progress: on a terminal a spinner, elsewhere plain lines."""

    def waiting(self, pending: Sequence[ReadinessCheck]) -> None: ...

    def passed(self, check: ReadinessCheck, elapsed_s: float) -> None: ...


@dataclass(frozen=True)
class StopResult:
    name: str
    returncode: int
    killed: bool
    """True when the child outlived its grace period and its process group was SIGKILLed."""

    @property
    def clean(self) -> bool:
        """Stopped as asked: exited 0, or by the SIGTERM it was sent (a process with no handler for it)."""
        return not self.killed and self.returncode in (0, -signal.SIGTERM)


class SupervisorError(RuntimeError):
    pass


class ChildExited(SupervisorError):
    """A supervised child exited although nobody asked it to."""

    def __init__(self, name: str, returncode: int):
        super().__init__(f"{name} exited unexpectedly ({describe_returncode(returncode)})")
        self.name = name
        self.returncode = returncode


class ReadinessTimeout(SupervisorError):
    def __init__(self, pending: Sequence[str], timeout_s: float):
        super().__init__(f"not ready after {timeout_s:g}s; still waiting for: {'; '.join(pending)}")
        self.pending = list(pending)
        self.timeout_s = timeout_s


def describe_returncode(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


@dataclass
class _Child:
    spec: ChildSpec
    process: subprocess.Popen
    killed: bool = False
    started_at: float = field(default_factory=time.monotonic)
    restart_delay_s: float = RESTART_DELAY_S
    restart_at: float | None = None
    """Set while an exited restartable child waits for its next start."""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Supervisor:
    def __init__(self, stop_timeout_s: float = 15.0, say: Callable[[str], None] = _say):
        """say: where a line about a restart goes."""
        self.stop_timeout_s = stop_timeout_s
        self._say = say
        self._children: list[_Child] = []

    @property
    def pids(self) -> dict[str, int]:
        return {child.spec.name: child.process.pid for child in self._children}

    def start(self, spec: ChildSpec) -> subprocess.Popen:
        """Start one child; its stdout and stderr are the supervisor's, its stdin is empty."""
        process = _spawn(spec)
        self._children.append(_Child(spec, process))
        return process

    def check(self) -> None:
        """Raise ChildExited for the first child that has exited and is not waiting for a restart."""
        for child in self._children:
            if child.restart_at is not None:
                continue
            returncode = child.process.poll()
            if returncode is not None:
                raise ChildExited(child.spec.name, returncode)

    def wait_ready(self, checks: Sequence[ReadinessCheck], timeout_s: float, reporter: Reporter | None = None) -> None:
        """Poll the checks until all hold; raise ChildExited or ReadinessTimeout first if that happens."""
        started = time.monotonic()
        pending = list(checks)
        while True:
            self.check()
            still_pending = []
            for check in pending:
                if check.probe():
                    if reporter:
                        reporter.passed(check, time.monotonic() - started)
                else:
                    still_pending.append(check)
            pending = still_pending
            if not pending:
                return
            if reporter:
                reporter.waiting(pending)
            if time.monotonic() - started >= timeout_s:
                raise ReadinessTimeout([check.description for check in pending], timeout_s)
            time.sleep(POLL_INTERVAL_S)

    def wait(self) -> None:
        """Block until a child exits that is not restarted, then raise ChildExited naming it."""
        while True:
            self._restart_exited()
            self.check()
            time.sleep(POLL_INTERVAL_S)

    def _restart_exited(self) -> None:
        now = time.monotonic()
        for child in self._children:
            if not child.spec.restart:
                continue
            if child.restart_at is None:
                returncode = child.process.poll()
                if returncode is None:
                    continue
                if now - child.started_at >= RESTART_RESET_S:
                    child.restart_delay_s = RESTART_DELAY_S
                child.restart_at = now + child.restart_delay_s
                self._say(
                    f"{child.spec.name} exited ({describe_returncode(returncode)}); "
                    f"starting it again in {child.restart_delay_s:g}s"
                )
                child.restart_delay_s = min(2 * child.restart_delay_s, RESTART_DELAY_MAX_S)
            elif now >= child.restart_at:
                child.process = _spawn(child.spec)
                child.started_at, child.restart_at = now, None

    def stop(self) -> list[StopResult]:
        """Stop every child, the last-started stage first: SIGTERM, wait, then SIGKILL its process group.

        Safe to call more than once. A second Ctrl-C while waiting skips the
        rest of the grace period: whatever is left is killed at once.
        """
        try:
            for stage in self._stages_in_stop_order():
                self._stop_stage(stage)
        except KeyboardInterrupt:
            for child in self._children:
                self._kill(child)
        # A child waiting for its restart has nothing to stop; its exit was told when it happened.
        return [StopResult(c.spec.name, c.process.returncode, c.killed) for c in self._children if c.restart_at is None]

    def _stages_in_stop_order(self) -> list[list[_Child]]:
        stages: dict[str, list[_Child]] = {}
        for child in self._children:
            stages.setdefault(child.spec.stop_stage, []).append(child)
        return list(reversed(stages.values()))

    def _stop_stage(self, children: list[_Child]) -> None:
        running = [child for child in children if child.process.poll() is None]
        for child in running:
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        for child in running:
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._kill(child)

    @staticmethod
    def _kill(child: _Child) -> None:
        """SIGKILL the child's whole process group, so helpers it started go too."""
        if child.process.poll() is None:
            # Not yet reaped, so its pid (and group id) cannot have been reused.
            try:
                os.killpg(child.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            child.killed = True
        child.process.wait()


def _spawn(spec: ChildSpec) -> subprocess.Popen:
    return subprocess.Popen(
        list(spec.argv),
        env=dict(spec.env) if spec.env is not None else None,
        stdin=subprocess.DEVNULL,
        process_group=0,
        preexec_fn=_exit_with_parent(),  # noqa: PLW1509 - only calls prctl, which takes no lock
    )


def _exit_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGTERM the child when the supervisor dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()
    sigterm = int(signal.SIGTERM)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sigterm)
        if os.getppid() != parent:  # the supervisor died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec
