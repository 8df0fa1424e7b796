"""TLS and mutual TLS on the gateway's public port and on its channel to the tokenizer service."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from gateway_fakes import MODEL, FakeTokenizer, heartbeat
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tls_certificates import TlsFiles, write_tls_files

from pipeserve.internal.v1 import tokenizer_pb2_grpc
from pipeserve.tls import server_credentials
from pipeserve.v1 import models_pb2, models_pb2_grpc


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> TlsFiles:
    return write_tls_files(tmp_path_factory.mktemp("tls"))


def credentials(tls: TlsFiles, *, ca=None, cert=None, key=None) -> grpc.ChannelCredentials:
    read = lambda path: path.read_bytes() if path else None
    return grpc.ssl_channel_credentials(read(ca or tls.ca), read(key), read(cert))


async def list_models(target: str, channel_credentials: grpc.ChannelCredentials | None) -> list[str]:
    if channel_credentials is None:
        channel = grpc.aio.insecure_channel(target)
    else:
        channel = grpc.aio.secure_channel(target, channel_credentials)
    async with channel:
        reply = await models_pb2_grpc.ModelsServiceStub(channel).ListModels(models_pb2.ListModelsRequest(), timeout=5)
    return [model.name for model in reply.models]


@pytest.fixture
async def tls_gateway(start_gateway, redis, keys, tls):
    await heartbeat(redis, keys)
    return await start_gateway(tls_cert_file=tls.server_cert, tls_key_file=tls.server_key)


@pytest.fixture
async def mtls_gateway(start_gateway, tls):
    return await start_gateway(tls_cert_file=tls.server_cert, tls_key_file=tls.server_key, tls_client_ca_file=tls.ca)


async def test_tls_gateway_serves_a_client_that_trusts_its_ca(tls_gateway, tls):
    assert MODEL in await list_models(f"localhost:{tls_gateway.gateway.port}", credentials(tls))


@pytest.mark.parametrize("client", ["plaintext", "untrusted-ca"])
async def test_tls_gateway_refuses_plaintext_and_unverified_clients(tls_gateway, tls, client):
    channel_credentials = None if client == "plaintext" else credentials(tls, ca=tls.stranger_ca)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await list_models(f"127.0.0.1:{tls_gateway.gateway.port}", channel_credentials)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_serves_a_client_with_a_certificate_from_its_ca(mtls_gateway, tls):
    client = credentials(tls, cert=tls.client_cert, key=tls.client_key)
    assert MODEL in await list_models(f"127.0.0.1:{mtls_gateway.gateway.port}", client)


@pytest.mark.parametrize("client", ["no-certificate", "certificate-from-another-ca"])
async def test_mutual_tls_refuses_clients_without_a_trusted_certificate(mtls_gateway, tls, client):
    if client == "no-certificate":
        channel_credentials = credentials(tls)
    else:
        channel_credentials = credentials(tls, cert=tls.stranger_cert, key=tls.stranger_key)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await list_models(f"127.0.0.1:{mtls_gateway.gateway.port}", channel_credentials)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_plaintext_health_port_answers_probes_of_a_tls_gateway(start_gateway, tls):
    running = await start_gateway(
        tls_cert_file=tls.server_cert,
        tls_key_file=tls.server_key,
        tls_client_ca_file=tls.ca,
        health_listen="127.0.0.1:0",
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.gateway.health_port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # Only health is there: the API stays behind TLS.
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await models_pb2_grpc.ModelsServiceStub(channel).ListModels(models_pb2.ListModelsRequest(), timeout=5)
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.fixture
async def tls_tokenizer(tls) -> AsyncIterator[str]:
    """The fake tokenizer service behind mutual TLS: it wants a client certificate from the gateway's CA."""
    server = grpc.aio.server()
    tokenizer_pb2_grpc.add_TokenizerServiceServicer_to_server(FakeTokenizer(), server)
    mutual = server_credentials(
        cert_file=tls.server_cert, key_file=tls.server_key, client_ca_file=tls.ca, settings_prefix="TEST_"
    )
    port = server.add_secure_port("127.0.0.1:0", mutual)
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


async def test_gateway_reaches_a_mutual_tls_tokenizer_with_its_ca_and_client_certificate(
    start_gateway, tls_tokenizer, tls
):
    running = await start_gateway(
        tokenizer_target=tls_tokenizer,
        tokenizer_tls_ca_file=tls.ca,
        tokenizer_client_cert_file=tls.client_cert,
        tokenizer_client_key_file=tls.client_key,
    )
    assert MODEL in await list_models(f"127.0.0.1:{running.gateway.port}", None)


@pytest.mark.parametrize("missing", ["client-certificate", "tls"])
async def test_tokenizer_refuses_a_gateway_without_the_right_credentials(start_gateway, tls_tokenizer, tls, missing):
    settings = {"tokenizer_tls_ca_file": tls.ca} if missing == "client-certificate" else {}
    running = await start_gateway(tokenizer_target=tls_tokenizer, **settings)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await list_models(f"127.0.0.1:{running.gateway.port}", None)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "tokenizer service" in raised.value.details()


@pytest.mark.parametrize(
    ("settings", "names"),
    [
        ({"tls_cert_file": "server_cert"}, "PIPESERVE_TLS_KEY_FILE"),
        ({"tls_client_ca_file": "ca"}, "PIPESERVE_TLS_CLIENT_CA_FILE"),
        ({"tls_cert_file": "missing", "tls_key_file": "server_key"}, "PIPESERVE_TLS_CERT_FILE"),
        ({"tls_cert_file": "not_pem", "tls_key_file": "server_key"}, "not a PEM file"),
        ({"tokenizer_client_cert_file": "client_cert"}, "PIPESERVE_TOKENIZER_CLIENT_KEY_FILE"),
        ({"tokenizer_tls_ca_file": "missing"}, "PIPESERVE_TOKENIZER_TLS_CA_FILE"),
    ],
)
async def test_incomplete_or_unreadable_tls_settings_stop_start_up_naming_the_setting(
    start_gateway, tls, tmp_path, settings, names
):
    (tmp_path / "not_pem").write_text("hello")
    files = {"missing": tmp_path / "nope.pem", "not_pem": tmp_path / "not_pem"}
    values = {field: files.get(name) or getattr(tls, name) for field, name in settings.items()}
    with pytest.raises(ValueError, match=names):
        await start_gateway(**values)
