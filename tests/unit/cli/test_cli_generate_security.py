"""`pipeserve generate` against a gateway that wants an API key and a client certificate."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest
from tls_certificates import TlsFiles, write_tls_files

from pipeserve.cli import main
from pipeserve.tls import server_credentials
from pipeserve.v1 import generation_pb2, generation_pb2_grpc, types_pb2

KEY = "cli-test-key"


class KeyedGateway(generation_pb2_grpc.GenerationServiceServicer):
    def __init__(self):
        self.metadata: list[dict] = []

    def GenerateStream(self, request, context):
        metadata = dict(context.invocation_metadata())
        self.metadata.append(metadata)
        if metadata.get("authorization") != f"Bearer {KEY}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "this gateway requires an API key")
        yield generation_pb2.GenerateStreamResponse(
            text="ok",
            token_ids=[1],
            finish_reason=types_pb2.FINISH_REASON_LENGTH,
            usage=types_pb2.Usage(prompt_tokens=1, completion_tokens=1),
        )


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> TlsFiles:
    return write_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def gateway(tls):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    fake = KeyedGateway()
    generation_pb2_grpc.add_GenerationServiceServicer_to_server(fake, server)
    mutual = server_credentials(
        cert_file=tls.server_cert, key_file=tls.server_key, client_ca_file=tls.ca, settings_prefix="TEST_"
    )
    fake.target = f"127.0.0.1:{server.add_secure_port('127.0.0.1:0', mutual)}"
    server.start()
    yield fake
    server.stop(None)


def argv(gateway, tls: TlsFiles, *extra: str) -> list[str]:
    return ["generate", "hi", "--model", "tiny", "--target", gateway.target, "--tls-ca", str(tls.ca), *extra]


def test_key_and_client_certificate_get_through(gateway, tls, capsys):
    client = ["--tls-cert", str(tls.client_cert), "--tls-key", str(tls.client_key)]
    assert main(argv(gateway, tls, *client, "--api-key", KEY)) == 0
    assert capsys.readouterr().out == "ok\n"
    assert gateway.metadata[-1]["authorization"] == f"Bearer {KEY}"


def test_the_key_can_come_from_the_environment(gateway, tls, capsys, monkeypatch):
    monkeypatch.setenv("PIPESERVE_API_KEY", KEY)
    assert main(argv(gateway, tls, "--tls-cert", str(tls.client_cert), "--tls-key", str(tls.client_key))) == 0


def test_a_missing_key_says_how_to_give_one(gateway, tls, capsys, monkeypatch):
    monkeypatch.delenv("PIPESERVE_API_KEY", raising=False)
    assert main(argv(gateway, tls, "--tls-cert", str(tls.client_cert), "--tls-key", str(tls.client_key))) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: UNAUTHENTICATED: ") and "--api-key" in err


def test_without_a_client_certificate_the_handshake_fails_with_a_hint(gateway, tls, capsys):
    assert main(argv(gateway, tls, "--api-key", KEY, "--timeout", "5")) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: UNAVAILABLE: ") and "--tls-cert" in err


@pytest.mark.parametrize(
    ("extra", "says"),
    [(["--tls-cert", "client_cert"], "--tls-key"), (["--tls-key", "missing"], "--tls-cert")],
)
def test_incomplete_or_missing_tls_files_are_named(gateway, tls, tmp_path, capsys, extra, says):
    files = {"client_cert": str(tls.client_cert), "missing": str(tmp_path / "nope.pem")}
    assert main(argv(gateway, tls, *[files.get(arg, arg) for arg in extra])) == 1
    assert says in capsys.readouterr().err


def test_an_unreadable_ca_file_is_named(gateway, tmp_path, capsys):
    command = ["generate", "hi", "--model", "tiny", "--target", gateway.target, "--tls-ca", str(tmp_path / "x.pem")]
    assert main(command) == 1
    assert capsys.readouterr().err.startswith(f"error: --tls-ca={tmp_path / 'x.pem'}: cannot read it")
