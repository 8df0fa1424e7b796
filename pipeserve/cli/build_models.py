"""``pipeserve build-models``: the small local models the quickstart and tests serve, built without the hub."""

from __future__ import annotations

import argparse

from pipeserve.cli.progress import say


def run(args: argparse.Namespace) -> int:
    from pipeserve.local_models import BUILDERS, build_models

    unknown = [name for name in args.models if name not in BUILDERS]
    if unknown:
        say(f"unknown model {unknown[0]!r}; buildable: {', '.join(BUILDERS)}")
        return 2
    models_file = build_models(args.out, args.models or None, force=args.force, progress=say)
    print(models_file, flush=True)
    say(f"serve them with: pipeserve serve-all --models-file {models_file}")
    return 0
