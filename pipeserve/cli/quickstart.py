"""``pipeserve quickstart``: the README's main job in one command.

Builds the local models unless they are there, starts the stack exactly as
serve-all does, streams one chat completion through it with the
``generate`` client, and stops everything again (``--keep-serving`` leaves
it up until Ctrl-C).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeserve.cli.progress import say
from pipeserve.cli.serve_all import serve, stack_from_args
from pipeserve.cli.settings import ConfigurationError, read_environment
from pipeserve.cli.stack import Stack

GENERATION_TIMEOUT_S = 120.0
QUIET_LOG_LEVEL = "WARNING"


def run(args: argparse.Namespace) -> int:
    try:
        environment = read_environment()
    except ConfigurationError as exc:
        say(f"error: {exc}")
        return 1
    models_file = ensure_models(args.models_dir)
    # The services' per-request INFO lines and progress bars would land in the middle of the streamed text.
    quiet = (
        {} if environment.log_level else {"PIPESERVE_LOG_LEVEL": QUIET_LOG_LEVEL, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    )
    stack = stack_from_args(args, models_file, environment, env=quiet)
    return serve(
        stack,
        on_ready=lambda running: chat_once(running, args.prompt, args.max_new_tokens),
        keep_serving=args.keep_serving,
    )


def ensure_models(models_dir: Path) -> Path:
    """The models file in models_dir, building the local models first if there is none."""
    models_file = models_dir / "models.yaml"
    if models_file.is_file():
        say(f"using the models listed in {models_file}")
        return models_file
    say(f"building the local models in {models_dir} (once; takes a few seconds to a minute)")
    from pipeserve.local_models import build_models

    return build_models(models_dir, progress=say)


def chat_once(stack: Stack, prompt: str, max_new_tokens: int) -> int:
    """Stream one chat completion from the running stack to stdout; 1 if the request failed."""
    import grpc

    from pipeserve.cli.client_channel import ClientError, describe_rpc_error
    from pipeserve.cli.generate import complete, default_model
    from pipeserve.v1 import generation_pb2, types_pb2

    with grpc.insecure_channel(stack.gateway_address) as channel:
        try:
            model = default_model(channel)
            request = generation_pb2.GenerateStreamRequest(
                model=model,
                chat=types_pb2.Chat(
                    messages=[types_pb2.ChatMessage(role="user", content=prompt)], add_generation_prompt=True
                ),
                parameters=generation_pb2.GenerationParameters(max_new_tokens=max_new_tokens),
            )
            say(f"asking {model}: {prompt}")
            completion = complete(channel, request, timeout=GENERATION_TIMEOUT_S)
        except ClientError as exc:
            say(f"error: {exc}")
            return 1
        except grpc.RpcError as exc:
            say(describe_rpc_error(exc, stack.gateway_address))
            return 1
    say(completion.summary())
    return 0
