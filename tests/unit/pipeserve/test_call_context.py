"""The request id crosses gRPC hops in metadata and is bound per call on the other side, never leaking between calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from pipeserve import tracing
from pipeserve.call_context import IncomingCallContext, outgoing_call_context
from pipeserve.internal.v1 import tokenizer_pb2, tokenizer_pb2_grpc
from pipeserve.request_context import REQUEST_ID_METADATA, bind_request_id, current_request_id


class RecordingTokenizer(tokenizer_pb2_grpc.TokenizerServiceServicer):
    """Answers with the request id its handler sees bound, after a pause so calls overlap."""

    async def Preprocess(self, request, context):
        await asyncio.sleep(0.05)
        return tokenizer_pb2.PreprocessResponse(prompt_token_ids=[len(current_request_id() or "")])

    async def Tokenize(self, request, context):
        return tokenizer_pb2.TokenizeResponse(text=current_request_id() or "")

    async def StreamText(self, request, context):
        for _ in range(2):
            await asyncio.sleep(0.01)
            yield tokenizer_pb2.StreamTextResponse(text=current_request_id() or "")


async def serve(trust_request_id: bool) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server(interceptors=[IncomingCallContext(tracing.TOKENIZER, trust_request_id=trust_request_id)])
    tokenizer_pb2_grpc.add_TokenizerServiceServicer_to_server(RecordingTokenizer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
async def stub() -> AsyncIterator[tokenizer_pb2_grpc.TokenizerServiceStub]:
    server, address = await serve(trust_request_id=True)
    async with grpc.aio.insecure_channel(address, interceptors=outgoing_call_context()) as channel:
        yield tokenizer_pb2_grpc.TokenizerServiceStub(channel)
    await server.stop(None)


async def seen_by_tokenize(stub, request_id: str | None) -> str:
    """One call from a task of its own (as each gateway call is) with request_id bound."""

    async def call() -> str:
        bind_request_id(request_id)
        return (await stub.Tokenize(tokenizer_pb2.TokenizeRequest())).text

    return await asyncio.create_task(call())


async def test_each_call_sees_its_own_request_id_and_nothing_leaks(stub):
    async def streamed(request_id: str) -> list[str]:
        bind_request_id(request_id)
        return [message.text async for message in stub.StreamText(tokenizer_pb2.StreamTextRequest())]

    assert await asyncio.gather(streamed("first"), streamed("second-id")) == [["first"] * 2, ["second-id"] * 2]
    assert await seen_by_tokenize(stub, "abc") == "abc"
    assert await seen_by_tokenize(stub, None) == "", "a call without an id sees none, not the previous call's"


async def test_overlapping_unary_calls_keep_their_ids(stub):
    async def preprocess(request_id: str) -> int:
        bind_request_id(request_id)
        return (await stub.Preprocess(tokenizer_pb2.PreprocessRequest())).prompt_token_ids[0]

    assert await asyncio.gather(*(preprocess("x" * n) for n in (1, 2, 3))) == [1, 2, 3]


async def test_an_untrusting_server_ignores_a_callers_request_id():
    server, address = await serve(trust_request_id=False)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            reply = await tokenizer_pb2_grpc.TokenizerServiceStub(channel).Tokenize(
                tokenizer_pb2.TokenizeRequest(), metadata=((REQUEST_ID_METADATA, "client-chosen"),)
            )
        assert reply.text == ""
    finally:
        await server.stop(None)
