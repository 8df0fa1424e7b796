"""`pipeserve generate` against an in-process fake gateway."""

from __future__ import annotations

import io
from concurrent import futures

import grpc
import pytest

from pipeserve.cli import main
from pipeserve.v1 import generation_pb2, generation_pb2_grpc, models_pb2, models_pb2_grpc, types_pb2


class FakeGateway(generation_pb2_grpc.GenerationServiceServicer, models_pb2_grpc.ModelsServiceServicer):
    def __init__(self):
        self.requests = []

    def ListModels(self, request, context):
        return models_pb2.ListModelsResponse(
            models=[
                models_pb2.ModelInfo(name="classifier", task="text-classification"),
                models_pb2.ModelInfo(name="tiny", task="text-generation"),
            ]
        )

    def GenerateStream(self, request, context):
        self.requests.append(request)
        if request.model != "tiny":
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.model!r}; served models: tiny")
        yield generation_pb2.GenerateStreamResponse(sequence_number=0, text="Hel", token_ids=[1])
        yield generation_pb2.GenerateStreamResponse(sequence_number=1, text="lo", token_ids=[2, 3])
        yield generation_pb2.GenerateStreamResponse(
            sequence_number=2,
            finish_reason=types_pb2.FINISH_REASON_LENGTH,
            usage=types_pb2.Usage(prompt_tokens=4, completion_tokens=3),
        )

    def Generate(self, request, context):
        self.requests.append(request)
        return generation_pb2.GenerateResponse(
            model=request.model,
            completions=[generation_pb2.Completion(text="Hello", finish_reason=types_pb2.FINISH_REASON_EOS)],
            usage=types_pb2.Usage(prompt_tokens=4, completion_tokens=3),
        )


@pytest.fixture(scope="module")
def gateway():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    fake = FakeGateway()
    generation_pb2_grpc.add_GenerationServiceServicer_to_server(fake, server)
    models_pb2_grpc.add_ModelsServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    fake.target = f"127.0.0.1:{port}"
    yield fake
    server.stop(None)


def test_streams_text_to_stdout_and_stats_to_stderr(gateway, capsys):
    assert main(["generate", "def main():", "--target", gateway.target, "--max-new-tokens", "3"]) == 0
    out, err = capsys.readouterr()
    assert out == "Hello\n"
    assert "finish: length" in err and "tokens: 4 prompt + 3 completion" in err
    assert "time to first token" in err and "tokens/s" in err
    request = gateway.requests[-1]
    assert request.model == "tiny" and request.prompt == "def main():"
    assert request.parameters.max_new_tokens == 3
    assert not request.parameters.HasField("do_sample") and not request.parameters.HasField("temperature")


def test_chat_with_system_message_and_sampling_options(gateway, capsys):
    argv = ["generate", "Write a haiku", "--system", "Be brief.", "--temperature", "0.8", "--seed", "1"]
    assert main([*argv, "--stop", "\n\n", "--stop", "END", "--target", gateway.target]) == 0
    request = gateway.requests[-1]
    assert request.WhichOneof("input") == "chat" and request.chat.add_generation_prompt
    assert [(m.role, m.content) for m in request.chat.messages] == [("system", "Be brief."), ("user", "Write a haiku")]
    parameters = request.parameters
    assert parameters.do_sample and parameters.temperature == pytest.approx(0.8) and parameters.seed == 1
    assert list(parameters.stop) == ["\n\n", "END"]


def test_no_do_sample_wins_over_sampling_options(gateway, capsys):
    assert main(["generate", "x", "--top-k", "5", "--no-do-sample", "--target", gateway.target]) == 0
    assert gateway.requests[-1].parameters.do_sample is False


@pytest.mark.parametrize("prompt_args", [[], ["-"]])
def test_prompt_from_stdin(gateway, capsys, monkeypatch, prompt_args):
    monkeypatch.setattr("sys.stdin", io.StringIO("from stdin\n"))
    assert main(["generate", *prompt_args, "--chat", "--target", gateway.target]) == 0
    assert gateway.requests[-1].chat.messages[0].content == "from stdin\n"


def test_no_stream_uses_the_unary_call(gateway, capsys):
    assert main(["generate", "hi", "--no-stream", "--model", "tiny", "--target", gateway.target]) == 0
    out, err = capsys.readouterr()
    assert out == "Hello\n" and "finish: eos" in err
    assert isinstance(gateway.requests[-1], generation_pb2.GenerateRequest)


def test_grpc_errors_are_one_line_and_exit_1(gateway, capsys):
    assert main(["generate", "hi", "--model", "nope", "--target", gateway.target]) == 1
    out, err = capsys.readouterr()
    assert err == "error: NOT_FOUND: unknown model 'nope'; served models: tiny\n"
    assert out == ""


def test_no_gateway_says_where_it_looked(capsys):
    from pipeserve.cli.stack import free_port

    target = f"127.0.0.1:{free_port()}"
    assert main(["generate", "hi", "--model", "tiny", "--target", target, "--timeout", "5"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: UNAVAILABLE: ") and f"is a gateway running at {target}?" in err


def test_an_empty_prompt_is_refused_before_sending(gateway, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("  \n"))
    before = len(gateway.requests)
    assert main(["generate", "--target", gateway.target]) == 1
    assert "the prompt is empty" in capsys.readouterr().err
    assert len(gateway.requests) == before
