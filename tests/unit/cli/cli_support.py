"""Helpers for the CLI's tests: steering the fake services and checking processes."""

from __future__ import annotations

import os
import time
from pathlib import Path


def tell_fake_to_exit(record_dir: Path, role: str, code: int) -> None:
    partial = record_dir / f"exit-{role}.partial"
    partial.write_text(str(code))
    os.replace(partial, record_dir / f"exit-{role}")


def is_running(pid: int) -> bool:
    """True while pid exists and is not a zombie (a zombie has finished and only waits to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(condition, timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        time.sleep(0.05)


def processes_with_env(name: str, value: str) -> list[int]:
    """Pids of live processes whose environment has name=value: everything a test's process tree started."""
    wanted = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in environ and is_running(int(entry.name)):
            found.append(int(entry.name))
    return found
