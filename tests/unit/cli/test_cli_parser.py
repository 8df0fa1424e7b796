"""The command line itself: help, defaults, validation, dispatch, and that --help stays instant."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeserve.cli import main
from pipeserve.cli.parser import build_parser

SUBCOMMANDS = ["build-models", "serve-all", "generate", "quickstart"]


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for command in [*SUBCOMMANDS, "gateway", "tokenizer", "model-worker"]:
        assert command in out


@pytest.mark.parametrize(
    ("command", "mentions"),
    [
        ("build-models", ["default: models", "--force"]),
        (
            "serve-all",
            ["default: 127.0.0.1:50051", "default: 127.0.0.1:50052", "$REDIS_URL", "embedded", "--ready-file"],
        ),
        ("generate", ["default: 127.0.0.1:50051", "stdin", "error: <CODE>: <details>", "--no-stream"]),
        ("quickstart", ["default: models", "--keep-serving", "embedded"]),
    ],
)
def test_each_subcommand_explains_itself_and_its_defaults(capsys, command, mentions):
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in mentions:
        assert text in out, f"{command} --help does not mention {text!r}"


def test_serve_all_defaults():
    args = build_parser().parse_args(["serve-all"])
    assert (args.gateway_listen, args.tokenizer_listen, args.model_workers) == ("127.0.0.1:50051", "127.0.0.1:50052", 1)
    assert args.redis_url is None and args.models_file is None and args.ready_file is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve-all", "--model-workers", "-1"], "must be 0 or more"),
        (["serve-all", "--ready-timeout", "soon"], "'soon' is not a number"),
        (["generate", "--timeout", "0"], "must be more than 0"),
        (["no-such-command"], "invalid choice"),
    ],
)
def test_bad_arguments_are_explained(capsys, argv, message):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "module"),
    [("gateway", "gateway"), ("tokenizer", "tokenizer_service"), ("model-worker", "model_service")],
)
def test_service_commands_become_the_service_with_their_arguments(monkeypatch, command, module):
    class Execed(Exception):
        pass

    def fake_execv(path, argv):
        raise Execed(path, argv)

    monkeypatch.setattr(os, "execv", fake_execv)
    with pytest.raises(Execed) as execed:
        main([command, "--help", "--listen", "0.0.0.0:1"])
    assert execed.value.args == (sys.executable, [sys.executable, "-m", module, "--help", "--listen", "0.0.0.0:1"])


def test_help_imports_nothing_heavy():
    code = (
        "import sys\n"
        "from pipeserve.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('grpc', 'redis', 'torch', 'rich', 'pydantic', 'transformers') if m in sys.modules]\n"
        "sys.exit(f'imported {heavy}' if heavy else 0)\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=30)
    assert completed.returncode == 0, completed.stderr


def test_build_models_prints_the_models_file(monkeypatch, capsys, tmp_path):
    built = []

    def fake_build(root: Path, names=None, *, force=False, progress=print):
        built.append((root, force))
        progress("building tiny-llama ...")
        return root / "models.yaml"

    monkeypatch.setattr("pipeserve.local_models.build_models", fake_build)
    assert main(["build-models", "--out", str(tmp_path), "--force"]) == 0
    out, err = capsys.readouterr()
    assert out == f"{tmp_path / 'models.yaml'}\n"
    assert "pipeserve: building tiny-llama ..." in err and "pipeserve serve-all --models-file" in err
    assert built == [(tmp_path, True)]


def test_quickstart_uses_existing_models_without_building(monkeypatch, tmp_path, capsys):
    from pipeserve.cli.quickstart import ensure_models

    (tmp_path / "models.yaml").write_text("models: []\n")
    monkeypatch.setattr("pipeserve.local_models.build_models", lambda *a, **k: pytest.fail("rebuilt the models"))
    assert ensure_models(tmp_path) == tmp_path / "models.yaml"


def test_quickstart_chat_streams_through_the_generate_client(capsys):
    """chat_once against the fake gateway of test_cli_generate."""
    from concurrent import futures

    import grpc
    from test_cli_generate import FakeGateway

    from pipeserve.cli.quickstart import chat_once
    from pipeserve.v1 import generation_pb2_grpc, models_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    fake = FakeGateway()
    generation_pb2_grpc.add_GenerationServiceServicer_to_server(fake, server)
    models_pb2_grpc.add_ModelsServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        assert chat_once(SimpleNamespace(gateway_address=f"127.0.0.1:{port}"), "hi there", 16) == 0
    finally:
        server.stop(None)
    out, err = capsys.readouterr()
    assert out == "Hello\n" and "asking tiny: hi there" in err and "finish: length" in err
    request = fake.requests[-1]
    assert request.chat.messages[0].content == "hi there" and request.parameters.max_new_tokens == 16


def test_build_models_builds_the_named_models_and_refuses_unknown_ones(monkeypatch, capsys, tmp_path):
    built = []

    def fake_build(root: Path, names=None, *, force=False, progress=print):
        built.append(names)
        return root / "models.yaml"

    monkeypatch.setattr("pipeserve.local_models.build_models", fake_build)
    assert main(["build-models", "tiny-bert-ner", "tiny-bert-mlm", "--out", str(tmp_path)]) == 0
    assert built == [["tiny-bert-ner", "tiny-bert-mlm"]]
    assert main(["build-models", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown model 'nope'; buildable: tiny-llama" in capsys.readouterr().err
