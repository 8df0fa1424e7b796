"""API keys: UNAUTHENTICATED without an accepted key, health and reflection open, keys re-read on rotation."""

from __future__ import annotations

import os

import grpc
import pytest
from gateway_fakes import MODEL, heartbeat
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway import auth
from gateway.auth import ApiKeys, ApiKeysError, presented_keys
from pipeserve.v1 import generation_pb2, models_pb2

KEY = "k-3f1c9e2a7b"
SECOND_KEY = "k-second-key-for-rotation"
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture
def keys_file(tmp_path):
    path = tmp_path / "api-keys"
    path.write_text(f"# issued 2026-11\n{KEY}\n\n  {SECOND_KEY}  \n")
    return path


@pytest.fixture
async def secured(start_gateway, redis, keys, keys_file):
    await heartbeat(redis, keys)
    return await start_gateway(api_keys_file=keys_file)


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def stream(secured, metadata=None) -> str:
    call = secured.generation.GenerateStream(
        generation_pb2.GenerateStreamRequest(model=MODEL, prompt="hi"), metadata=metadata, timeout=10
    )
    return "".join([message.text async for message in call])


async def test_every_public_call_without_a_key_is_unauthenticated(secured):
    calls = [
        secured.generation.Generate(generation_pb2.GenerateRequest(model=MODEL, prompt="hi"), timeout=10),
        stream(secured),
        secured.models.ListModels(models_pb2.ListModelsRequest(), timeout=10),
        secured.models.Tokenize(models_pb2.TokenizeRequest(model=MODEL, prompt="hi"), timeout=10),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert raised.value.code() == UNAUTHENTICATED
        assert "authorization: Bearer <key>" in raised.value.details()
    assert not secured.tokenizer.preprocess_requests and not secured.tokenizer.tokenize_requests


@pytest.mark.parametrize(
    ("metadata", "says"),
    [
        (bearer("wrong-key"), "not accepted"),
        (bearer(KEY + "x"), "not accepted"),
        ((("x-api-key", KEY[:-1]),), "not accepted"),
        ((("authorization", f"Basic {KEY}"),), "not 'Bearer <key>'"),
        ((("authorization", "Bearer "),), "requires an API key"),
    ],
)
async def test_a_wrong_or_malformed_key_is_unauthenticated_and_never_echoed(secured, metadata, says):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stream(secured, metadata)
    assert raised.value.code() == UNAUTHENTICATED
    assert says in raised.value.details()
    assert KEY not in raised.value.details()


@pytest.mark.parametrize(
    "metadata",
    [bearer(KEY), bearer(SECOND_KEY), (("authorization", f"bearer {KEY}"),), (("x-api-key", SECOND_KEY),)],
    ids=["bearer", "second-key", "lowercase-scheme", "x-api-key"],
)
async def test_an_accepted_key_gets_in(secured, metadata):
    assert await stream(secured, metadata) == "Hello!"
    reply = await secured.models.ListModels(models_pb2.ListModelsRequest(), metadata=metadata, timeout=10)
    assert MODEL in [model.name for model in reply.models]


async def test_health_and_reflection_need_no_key(secured):
    reply = await health_pb2_grpc.HealthStub(secured.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    call = reflection_pb2_grpc.ServerReflectionStub(secured.channel).ServerReflectionInfo(timeout=5)
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {service.name for service in (await call.read()).list_services_response.service}
    await call.done_writing()
    assert "pipeserve.v1.GenerationService" in names


async def test_refused_before_the_request_is_decoded(secured):
    """Garbage from a caller without a key gets UNAUTHENTICATED, not a parse error: nothing of it was read."""
    call = secured.channel.unary_unary("/pipeserve.v1.GenerationService/Generate")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(b"\xff\xff\xff", timeout=5)
    assert raised.value.code() == UNAUTHENTICATED


async def test_rotated_keys_are_picked_up_without_a_restart(secured, keys_file, monkeypatch):
    monkeypatch.setattr(auth, "RELOAD_INTERVAL_S", 0.0)
    keys_file.write_text("k-new-after-rotation\n")
    os.utime(keys_file, ns=(0, 10**18))  # a changed mtime even on coarse-grained file systems
    assert await stream(secured, bearer("k-new-after-rotation")) == "Hello!"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stream(secured, bearer(KEY))
    assert raised.value.code() == UNAUTHENTICATED

    # An emptied file is a mistake, not a way to lock everyone out: the last good keys stay.
    keys_file.write_text("\n")
    os.utime(keys_file, ns=(0, 2 * 10**18))
    assert await stream(secured, bearer("k-new-after-rotation")) == "Hello!"


@pytest.mark.parametrize("content", [None, "", "# only a comment\n\n"])
async def test_a_missing_or_empty_keys_file_stops_start_up(start_gateway, tmp_path, content):
    path = tmp_path / "keys"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ApiKeysError, match="PIPESERVE_API_KEYS_FILE"):
        await start_gateway(api_keys_file=path)


def test_every_key_is_compared_whatever_matches(keys_file, monkeypatch):
    compared = []
    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b))
    keys = ApiKeys(keys_file)
    assert keys.accepts(KEY) and len(compared) == 2
    assert not keys.accepts("nope") and len(compared) == 4


def test_presented_keys_reads_both_metadata_forms():
    assert presented_keys((("x-api-key", " a "), ("authorization", "Bearer b"), ("other", "c"))) == (["a", "b"], None)
    assert presented_keys((("authorization", "Token x"),))[1] == "the authorization metadata is not 'Bearer <key>'"
    assert presented_keys(None) == ([], None)
