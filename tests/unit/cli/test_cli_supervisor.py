"""The supervisor's process handling, with trivial children (python -c ...)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from cli_support import is_running, wait_until

from pipeserve.cli.supervisor import ChildExited, ChildSpec, ReadinessCheck, ReadinessTimeout, Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def recorder(name: str, log) -> ChildSpec:
    """A child that appends its name to log when SIGTERM arrives, then exits 0."""
    code = textwrap.dedent(f"""
        import signal, sys, time
        def stop(*_):
            with open({str(log)!r}, "a") as f:
                f.write({name!r} + "\\n")
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        time.sleep(600)
    """)
    return ChildSpec(name, [sys.executable, "-c", code], stage=name.rstrip("0123456789"))


@pytest.fixture
def supervisor():
    supervisor = Supervisor(stop_timeout_s=2.0)
    yield supervisor
    supervisor.stop()


def test_a_child_that_exits_is_reported_by_name_and_code(supervisor):
    supervisor.start(ChildSpec("sleeper", SLEEPER))
    supervisor.start(ChildSpec("crasher", [sys.executable, "-c", "import sys, time; time.sleep(0.2); sys.exit(3)"]))
    with pytest.raises(ChildExited, match=r"crasher exited unexpectedly \(exit code 3\)") as raised:
        supervisor.wait()
    assert (raised.value.name, raised.value.returncode) == ("crasher", 3)
    sleeper = supervisor.pids["sleeper"]
    results = {r.name: r for r in supervisor.stop()}
    assert not is_running(sleeper)
    assert results["sleeper"].clean and results["crasher"].returncode == 3


def test_a_signal_death_is_named():
    assert "killed by SIGKILL" in str(ChildExited("gateway", -signal.SIGKILL))


def test_stop_goes_in_reverse_start_order_by_stage(supervisor, tmp_path):
    log = tmp_path / "stopped"
    for name in ("tokenizer", "worker1", "worker2", "gateway"):
        supervisor.start(recorder(name, log))
    time.sleep(0.3)  # let the children install their SIGTERM handlers
    results = supervisor.stop()
    order = log.read_text().split()
    assert order[0] == "gateway" and sorted(order[1:3]) == ["worker1", "worker2"] and order[3] == "tokenizer"
    assert all(result.clean for result in results)


def test_a_child_ignoring_sigterm_is_killed_with_its_process_group(tmp_path):
    grandchild_file = tmp_path / "grandchild"
    code = textwrap.dedent(f"""
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open({str(grandchild_file)!r}, "w").write(str(helper.pid))
        time.sleep(600)
    """)
    supervisor = Supervisor(stop_timeout_s=0.5)
    supervisor.start(ChildSpec("stubborn", [sys.executable, "-c", code]))
    wait_until(lambda: grandchild_file.exists() and grandchild_file.read_text(), what="the grandchild")
    grandchild = int(grandchild_file.read_text())
    started = time.monotonic()
    (result,) = supervisor.stop()
    assert time.monotonic() - started < 5
    assert result.killed and not result.clean
    wait_until(lambda: not is_running(grandchild), what="the grandchild to be killed")


def test_readiness_waits_for_every_check_and_reports_progress(supervisor, tmp_path):
    flag = tmp_path / "ready"
    supervisor.start(ChildSpec("sleeper", SLEEPER))
    passed, waiting = [], []

    class Reporter:
        def waiting(self, pending):
            waiting.append([check.name for check in pending])
            if len(waiting) == 3:
                flag.touch()

        def passed(self, check, elapsed_s):
            passed.append(check.description)

    checks = [ReadinessCheck("always", "always", lambda: True), ReadinessCheck("flag", "flag file", flag.exists)]
    supervisor.wait_ready(checks, timeout_s=5, reporter=Reporter())
    assert passed == ["always", "flag file"]
    assert waiting[0] == ["flag"]


def test_readiness_timeout_names_what_is_missing(supervisor):
    supervisor.start(ChildSpec("sleeper", SLEEPER))
    checks = [ReadinessCheck("ok", "ok", lambda: True), ReadinessCheck("gateway", "gateway serving", lambda: False)]
    with pytest.raises(ReadinessTimeout, match="still waiting for: gateway serving"):
        supervisor.wait_ready(checks, timeout_s=0.3)


def test_readiness_stops_waiting_when_a_child_dies(supervisor):
    supervisor.start(ChildSpec("crasher", [sys.executable, "-c", "raise SystemExit(2)"]))
    started = time.monotonic()
    with pytest.raises(ChildExited, match="crasher"):
        supervisor.wait_ready([ReadinessCheck("never", "never", lambda: False)], timeout_s=30)
    assert time.monotonic() - started < 10


def test_children_do_not_outlive_a_killed_supervisor(tmp_path):
    """Even SIGKILL of the supervisor (no cleanup at all) leaves no child behind."""
    code = textwrap.dedent(f"""
        import sys, time
        from pipeserve.cli.supervisor import ChildSpec, Supervisor
        supervisor = Supervisor()
        supervisor.start(ChildSpec("sleeper", {SLEEPER!r}))
        print(supervisor.pids["sleeper"], flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert is_running(child)
    parent.kill()
    parent.wait()
    wait_until(lambda: not is_running(child), what="the orphaned child to exit")


def test_children_are_out_of_the_terminals_process_group(supervisor):
    """Ctrl-C in a terminal signals its foreground group: only the supervisor must get it, to stop in order."""
    supervisor.start(ChildSpec("sleeper", SLEEPER))
    pid = supervisor.pids["sleeper"]
    assert os.getpgid(pid) == pid != os.getpgrp()


def test_stop_is_idempotent(supervisor):
    supervisor.start(ChildSpec("sleeper", SLEEPER))
    first = supervisor.stop()
    assert supervisor.stop() == first


def test_a_restartable_child_is_started_again_after_a_growing_delay(tmp_path):
    starts = tmp_path / "starts"
    crasher = [sys.executable, "-c", f"import sys; open({str(starts)!r}, 'a').write('x'); sys.exit(3)"]
    told = []
    supervisor = Supervisor(stop_timeout_s=2.0, say=told.append)
    supervisor.start(ChildSpec("worker", crasher, restart=True))
    # Not restarted: its exit ends the wait, about halfway between the worker's second and third start.
    supervisor.start(ChildSpec("gateway", [sys.executable, "-c", "import time; time.sleep(2.2)"]))
    try:
        with pytest.raises(ChildExited, match="gateway exited"):
            supervisor.wait()
    finally:
        results = supervisor.stop()
    assert starts.read_text() == "xx"
    assert told == [
        "worker exited (exit code 3); starting it again in 1s",
        "worker exited (exit code 3); starting it again in 2s",
    ]
    assert [result.name for result in results] == ["gateway"], "a child waiting for its restart has nothing to stop"


def test_a_restartable_child_dying_during_start_up_fails_it(supervisor):
    supervisor.start(ChildSpec("worker", [sys.executable, "-c", "import sys; sys.exit(3)"], restart=True))
    with pytest.raises(ChildExited, match="worker exited"):
        supervisor.wait_ready([ReadinessCheck("never", "never ready", lambda: False)], 10)
