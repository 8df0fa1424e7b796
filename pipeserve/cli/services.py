"""``pipeserve gateway|tokenizer|model-worker``: one command for operators, one entry point per image.

The service replaces this process (exec), so it is the one that receives
SIGTERM from Kubernetes or Ctrl-C from a terminal, and its exit status is
the command's.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

SERVICE_MODULES = {
    "gateway": "gateway",
    "tokenizer": "tokenizer_service",
    "model-worker": "model_service",
}


def service_argv(command: str, args: list[str]) -> list[str]:
    return [sys.executable, "-m", SERVICE_MODULES[command], *args]


def exec_service(command: str, args: list[str]) -> NoReturn:
    """Become the service; does not return."""
    argv = service_argv(command, args)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)
