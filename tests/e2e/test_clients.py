"""Clients other than the Python stubs: Node.js loading the .proto files, and the `pipeserve generate` CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from pipeserve.local_models import TINY_LLAMA

from .conftest import greedy_reference

NODE_CLIENT = Path(__file__).resolve().parent.parent / "clients" / "node"


def test_node_client_streams_generation(stack, generation, reference, models_api):
    node = shutil.which("node")
    assert node, "Node.js is required for the cross-language client test"
    if not (NODE_CLIENT / "node_modules" / "@grpc" / "grpc-js").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_CLIENT, check=True, timeout=300)
    prompt = "def greet(name):"
    completed = subprocess.run(
        [node, "generate_stream.js", stack.gateway, TINY_LLAMA, prompt, "24"],
        cwd=NODE_CLIENT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    messages = [json.loads(line) for line in completed.stdout.splitlines()]
    assert [m["sequence_number"] for m in messages] == list(range(len(messages)))
    assert len(messages) > 1, "expected several streamed messages"
    token_ids = [t for m in messages for t in m["token_ids"]]
    from pipeserve.v1 import models_pb2

    prompt_ids = list(models_api.Tokenize(models_pb2.TokenizeRequest(model=TINY_LLAMA, prompt=prompt)).token_ids)
    _model, tokenizer = reference
    expected = greedy_reference(reference, prompt_ids, 24, ignore_eos=False)
    assert token_ids == expected
    assert "".join(m["text"] for m in messages) == tokenizer.decode(expected, skip_special_tokens=True)
    assert messages[-1]["finish_reason"] in ("FINISH_REASON_LENGTH", "FINISH_REASON_EOS")


def test_cli_generate_streams_to_terminal(stack, generation):
    cli = str(Path(sys.executable).with_name("pipeserve"))
    completed = subprocess.run(
        [cli, "generate", "def main():", "--target", stack.gateway, "--max-new-tokens", "12"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    from .conftest import unary_request

    expected = generation.Generate(unary_request(prompt="def main():", max_new_tokens=12), timeout=60)
    assert completed.stdout.rstrip("\n") == expected.completions[0].text.rstrip("\n")


def test_cli_generate_reports_errors_without_traceback(stack):
    cli = str(Path(sys.executable).with_name("pipeserve"))
    completed = subprocess.run(
        [cli, "generate", "hi", "--target", stack.gateway, "--model", "nope"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert completed.returncode == 1
    assert "NOT_FOUND" in completed.stderr and "Traceback" not in completed.stderr
