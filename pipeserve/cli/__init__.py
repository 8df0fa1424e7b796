"""The ``pipeserve`` command: one entry point for building models, running the stack and calling it.

``main`` parses with the standard library only and imports a subcommand's
module when that subcommand runs, so ``pipeserve --help`` answers at once.
The service subcommands (gateway, tokenizer, model-worker) are handed to
the service untouched, options included.
"""

from __future__ import annotations

import importlib
import sys


def main(argv: list[str] | None = None) -> int:
    from pipeserve.cli.parser import parse_args
    from pipeserve.cli.services import SERVICE_MODULES, exec_service

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SERVICE_MODULES:
        exec_service(argv[0], argv[1:])
    args = parse_args(argv)
    return importlib.import_module(args.handler).run(args)
