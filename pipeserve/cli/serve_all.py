"""``pipeserve serve-all``: the whole stack on one machine until Ctrl-C or SIGTERM.

The ready line goes to stdout (scripts can wait for it), everything else to
stderr. The exit status is 0 only when the stack stopped because it was
asked to and every process then exited cleanly.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

from pipeserve.cli.progress import say, startup_reporter
from pipeserve.cli.settings import CliEnvironment, ConfigurationError, read_environment
from pipeserve.cli.stack import Stack, StackError, redact
from pipeserve.cli.supervisor import ChildExited, ReadinessTimeout, StopResult, describe_returncode

DEFAULT_MODELS_FILE = Path("models/models.yaml")


def run(args: argparse.Namespace) -> int:
    try:
        environment = read_environment()
    except ConfigurationError as exc:
        say(f"error: {exc}")
        return 1
    models_file = args.models_file or environment.models_file or DEFAULT_MODELS_FILE
    return serve(stack_from_args(args, models_file, environment), ready_file=args.ready_file)


def stack_from_args(
    args: argparse.Namespace, models_file: Path, environment: CliEnvironment, env: dict[str, str] | None = None
) -> Stack:
    """The stack the shared serving options describe (flags first, then the environment); env goes to every service."""
    return Stack(
        models_file,
        gateway_listen=args.gateway_listen,
        tokenizer_listen=args.tokenizer_listen,
        model_workers=args.model_workers,
        tokenizers=args.tokenizers,
        redis_url=args.redis_url or environment.redis_url,
        key_prefix=environment.key_prefix,
        ready_timeout_s=args.ready_timeout,
        stop_timeout_s=args.stop_timeout,
        env=env,
        metrics_port_base=args.metrics_port_base,
    )


def serve(
    stack: Stack,
    *,
    ready_file: Path | None = None,
    on_ready: Callable[[Stack], int] | None = None,
    keep_serving: bool = True,
) -> int:
    """Start the stack, announce it, run ``on_ready``, serve until asked to stop, then stop it.

    Returns the exit status: 1 when start-up failed, a process died or one
    did not stop cleanly, ``on_ready``'s status when that is not 0, else 0.
    """
    # Both stop the stack; SIGINT explicitly too, as a shell starts background jobs with it ignored.
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, signal.default_int_handler)
    if ready_file is not None:
        ready_file.unlink(missing_ok=True)
    status = 0
    died = None
    try:
        with startup_reporter() as reporter:
            stack.start(reporter)
        announce(stack, ready_file)
        if on_ready is not None:
            status = on_ready(stack)
        if keep_serving and status == 0:
            say("serving; press Ctrl-C to stop")
            stack.wait()
    except KeyboardInterrupt:
        pass
    except (StackError, ReadinessTimeout, ChildExited) as exc:
        say(f"error: {exc}")
        died = exc.name if isinstance(exc, ChildExited) else None
        status = 1
    finally:
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)
        if stack.pids:
            say("stopping ...")
        results = stack.stop()
    if not report_stop([result for result in results if result.name != died]):
        status = status or 1
    return status


def announce(stack: Stack, ready_file: Path | None) -> None:
    """The ready file, when asked for, then the ready line on stdout: whoever sees either can use both.

    The file is written atomically, so a poller never reads half of it. It
    also says where each child serves its metrics (when on) and each model
    worker its health checks.
    """
    if stack.metrics_addresses:
        say(
            "metrics: "
            + ", ".join(f"{name} http://{address}/metrics" for name, address in stack.metrics_addresses.items())
        )
    if ready_file is not None:
        info = {
            "gateway": stack.gateway_address,
            "redis_url": stack.redis_url,
            "models": list(stack.models),
            "metrics": stack.metrics_addresses,
            "worker_health": stack.worker_health_addresses,
        }
        partial = ready_file.with_name(ready_file.name + ".partial")
        partial.write_text(json.dumps(info) + "\n")
        os.replace(partial, ready_file)
    redis = redact(stack.redis_url) + (" (embedded)" if stack.embedded_redis else "")
    print(
        f"pipeserve ready: gateway on {stack.gateway_address} (models: {', '.join(stack.models)}; redis: {redis})",
        flush=True,
    )


def report_stop(results: list[StopResult]) -> bool:
    """Say how the stop went; False if a process did not stop cleanly."""
    unclean = [result for result in results if not result.clean]
    for result in unclean:
        if result.killed:
            say(f"warning: {result.name} did not stop within the grace period after SIGTERM and was killed")
        else:
            say(f"warning: {result.name} stopped with {describe_returncode(result.returncode)}")
    if results:
        say("stopped, not cleanly (see above)" if unclean else "stopped")
    return not unclean
