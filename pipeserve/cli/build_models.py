"""``pipeserve build-models``: the small local models the quickstart and tests serve, built without the hub."""

from __future__ import annotations

import argparse

from pipeserve.cli.progress import say


def run(args: argparse.Namespace) -> int:
    from pipeserve.local_models import build_models

    models_file = build_models(args.out, force=args.force, progress=say)
    print(models_file, flush=True)
    say(f"serve them with: pipeserve serve-all --models-file {models_file}")
    return 0
