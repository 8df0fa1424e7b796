"""TokenizerService over gRPC: decode the request, call the task code, encode the reply.

Preprocess and Tokenize run in worker threads, so that tokenizing a long
prompt (seconds for a megabyte) does not stall the text streams this process
relays on its event loop. Sharing a fast tokenizer across threads is safe as
long as nobody changes its truncation or padding settings (that mutation is
what fails with "Already borrowed"), and nothing here does.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import redis.asyncio as aioredis

from pipeserve.errors import InvalidArgument, grpc_errors
from pipeserve.internal.v1 import tokenizer_pb2, tokenizer_pb2_grpc
from pipeserve.queue.keys import Keys
from pipeserve.queue.protocol import now_ms
from pipeserve.queue.replies import ReplyStream
from tokenizer_service.registry import ModelRegistry
from tokenizer_service.text_stream import stream_text


class TokenizerServicer(tokenizer_pb2_grpc.TokenizerServiceServicer):
    def __init__(self, registry: ModelRegistry, redis: aioredis.Redis, keys: Keys, *, key_ttl_s: int):
        self._registry = registry
        self._redis = redis
        self._keys = keys
        self._key_ttl_s = key_ttl_s

    @grpc_errors
    async def Preprocess(self, request: tokenizer_pb2.PreprocessRequest, context) -> tokenizer_pb2.PreprocessResponse:
        model = self._registry.text_generation(request.model)
        return await asyncio.to_thread(model.preprocess, request)

    @grpc_errors
    async def Tokenize(self, request: tokenizer_pb2.TokenizeRequest, context) -> tokenizer_pb2.TokenizeResponse:
        model = self._registry.text_generation(request.model)
        return await asyncio.to_thread(model.tokenize, request)

    @grpc_errors
    async def DescribeModels(self, request, context) -> tokenizer_pb2.DescribeModelsResponse:
        return tokenizer_pb2.DescribeModelsResponse(models=self._registry.describe())

    @grpc_errors
    async def StreamText(self, request: tokenizer_pb2.StreamTextRequest, context: grpc.aio.ServicerContext):
        """Relay one request's reply stream as text; the stream is deleted however the call ends.

        A call that ends before every sequence finished (the caller went
        away, the deadline passed, Redis failed) also raises the request's
        cancel flag, so the worker does not generate for nobody.
        """
        if not request.request_id:
            raise InvalidArgument("request_id is empty")
        model = self._registry.text_generation(request.model)
        replies = ReplyStream(self._redis, self._keys, request.request_id, key_ttl_s=self._key_ttl_s)
        remaining_s = context.time_remaining()
        deadline_unix_ms = 0 if remaining_s is None else now_ms() + int(remaining_s * 1000)
        completed = False
        try:
            async with (
                contextlib.aclosing(replies.chunks(deadline_unix_ms)) as chunks,
                contextlib.aclosing(
                    stream_text(
                        model.tokenizer,
                        request.prompt_token_ids,
                        request.decode,
                        chunks,
                        replies.cancel,
                        traits=model.decode_traits,
                    )
                ) as texts,
            ):
                async for response in texts:
                    yield response
            completed = True
        finally:
            # Shielded: grpc may cancel the handler again while this runs, and the cleanup must still happen.
            await asyncio.shield(_end_request(replies, cancel=not completed))


async def _end_request(replies: ReplyStream, *, cancel: bool) -> None:
    if cancel:
        await replies.cancel()
    await replies.delete()
