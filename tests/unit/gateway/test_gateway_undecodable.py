"""Request bytes that do not parse get INVALID_ARGUMENT (grpc alone answers UNKNOWN) on every method kind."""

from __future__ import annotations

import grpc
import pytest
from gateway_fakes import MODEL

from pipeserve.v1 import generation_pb2

# Field 1 (a string on every method below but ListModels: model, or health's service), bytes not UTF-8.
BAD_UTF8_FIELD_1 = b"\x0a\x02\xff\xfe"
# Field 2 (prompt) of GenerateRequest.
BAD_UTF8_PROMPT = b"\x12\x02\xff\xfe"
TRUNCATED = b"\x0a\x05ab"  # field 1 claims 5 bytes, 2 follow
BAD_WIRE_TYPE = b"\x0f"

METHODS = [
    ("/pipeserve.v1.GenerationService/Generate", False),
    ("/pipeserve.v1.GenerationService/GenerateStream", True),
    ("/pipeserve.v1.ModelsService/Tokenize", False),
    ("/pipeserve.v1.ModelsService/ListModels", False),
    ("/grpc.health.v1.Health/Check", False),
]
CASES = [
    (method, streaming, payload)
    for method, streaming in METHODS
    for payload in (BAD_UTF8_FIELD_1, TRUNCATED, BAD_WIRE_TYPE)
    # ListModelsRequest has no fields: field 1 is kept as an unknown field, never checked as UTF-8.
    if not (method.endswith("ListModels") and payload == BAD_UTF8_FIELD_1)
]


@pytest.mark.parametrize(("method", "streaming", "payload"), CASES)
async def test_undecodable_request_is_invalid_argument(gateway, method, streaming, payload):
    multicallable = gateway.channel.unary_stream(method) if streaming else gateway.channel.unary_unary(method)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        call = multicallable(payload, timeout=5)
        if streaming:
            [message async for message in call]
        else:
            await call
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    assert "not a valid protobuf message" in raised.value.details()
    assert not gateway.tokenizer.preprocess_requests and not gateway.tokenizer.tokenize_requests


async def test_undecodable_message_in_a_request_stream_is_invalid_argument(gateway):
    call = gateway.channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")(timeout=5)
    await call.write(b"\x1a\x02\xff\xfe")  # file_containing_symbol, not UTF-8
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_invalid_utf8_is_named_and_valid_bytes_still_work(gateway):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await gateway.channel.unary_unary("/pipeserve.v1.GenerationService/Generate")(BAD_UTF8_PROMPT, timeout=5)
    assert "UTF-8" in raised.value.details()
    valid = generation_pb2.GenerateRequest(model=MODEL, prompt="hi").SerializeToString()
    reply = await gateway.channel.unary_unary("/pipeserve.v1.GenerationService/Generate")(valid, timeout=5)
    assert generation_pb2.GenerateResponse.FromString(reply).completions[0].text == "Hello!"
