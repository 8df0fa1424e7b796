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
import logging
import time

import grpc
import redis.asyncio as aioredis

from pipeserve.errors import InvalidArgument, Unavailable, grpc_errors
from pipeserve.internal.v1 import tokenizer_pb2, tokenizer_pb2_grpc
from pipeserve.queue.keys import Keys
from pipeserve.queue.protocol import now_ms
from pipeserve.queue.replies import ReplyStream
from tokenizer_service.registry import ModelRegistry
from tokenizer_service.run_task import TaskRunner
from tokenizer_service.text_stream import stream_text
from tokenizer_service.worker_thread import timed_in_thread

log = logging.getLogger(__name__)

# How a StreamText call ended (as logged): only the first two end the request.
_FINISHED = "with every sequence finished"
_FAILED = "with an error"
_LEFT_RESUMABLE = "early, leaving the request resumable"


class TokenizerServicer(tokenizer_pb2_grpc.TokenizerServiceServicer):
    def __init__(
        self, registry: ModelRegistry, redis: aioredis.Redis, keys: Keys, tasks: TaskRunner, *, key_ttl_s: int
    ):
        self._registry = registry
        self._redis = redis
        self._keys = keys
        self._tasks = tasks
        self._key_ttl_s = key_ttl_s

    @grpc_errors
    async def Preprocess(self, request: tokenizer_pb2.PreprocessRequest, context) -> tokenizer_pb2.PreprocessResponse:
        model = self._registry.text_generation(request.model)
        return await timed_in_thread("preprocess", model.preprocess, request)

    @grpc_errors
    async def Tokenize(self, request: tokenizer_pb2.TokenizeRequest, context) -> tokenizer_pb2.TokenizeResponse:
        model = self._registry.text_generation(request.model)
        return await timed_in_thread("tokenize", model.tokenize, request)

    @grpc_errors
    async def DescribeModels(self, request, context) -> tokenizer_pb2.DescribeModelsResponse:
        return tokenizer_pb2.DescribeModelsResponse(models=self._registry.describe())

    @grpc_errors
    async def RunTask(self, request: tokenizer_pb2.RunTaskRequest, context) -> tokenizer_pb2.RunTaskResponse:
        """A forward-only pipeline request, preprocess to postprocess (tokenizer_service.run_task)."""
        if not request.request_id:
            raise InvalidArgument("request_id is empty")
        handler = self._registry.forward_task(request.request.model, request.task)
        remaining_s = context.time_remaining()
        deadline_unix_ms = 0 if remaining_s is None else now_ms() + int(remaining_s * 1000)
        response = await self._tasks.run(handler, request.request_id, request.request, deadline_unix_ms)
        return tokenizer_pb2.RunTaskResponse(response=response)

    @grpc_errors
    async def StreamText(self, request: tokenizer_pb2.StreamTextRequest, context: grpc.aio.ServicerContext):
        """Relay one request's reply stream as text, skipping the messages the caller already has.

        How the call ends decides what becomes of the request. Every sequence
        finished, or the request failed (a worker error, its deadline, a bug):
        it is over, so its reply stream is deleted, and its cancel flag raised
        if it failed. The caller cancelled the call, or Redis failed: the
        gateway may resume the request on another tokenizer (its connection to
        this one may be what broke), so the request keeps running and its
        reply stream stays. The gateway raises the cancel flag once its client
        is gone; the keys' TTL covers a gateway that died.
        """
        if not request.request_id:
            raise InvalidArgument("request_id is empty")
        model = self._registry.text_generation(request.model)
        replies = ReplyStream(self._redis, self._keys, request.request_id, key_ttl_s=self._key_ttl_s)
        remaining_s = context.time_remaining()
        deadline_unix_ms = 0 if remaining_s is None else now_ms() + int(remaining_s * 1000)
        ending = _LEFT_RESUMABLE
        started = time.perf_counter()
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
                        continues_prompt=not model.is_encoder_decoder,
                    )
                ) as texts,
            ):
                rebuilt = 0
                async for response in texts:
                    # Resuming: the same chunks give the same messages, so the first ones are the caller's already.
                    if rebuilt < request.resume_after_messages:
                        rebuilt += 1
                        continue
                    yield response
            ending = _FINISHED
        except (asyncio.CancelledError, GeneratorExit):
            # The caller cancelled (resumable), or grpc did because the deadline passed (over).
            remaining_s = context.time_remaining()
            if remaining_s is not None and remaining_s <= 0:
                ending = _FAILED
            raise
        except Unavailable:
            raise
        except Exception:
            ending = _FAILED
            raise
        finally:
            log.info(
                "StreamText model=%s ended %s after %.1f ms",
                request.model,
                ending,
                (time.perf_counter() - started) * 1000,
            )
            if ending != _LEFT_RESUMABLE:
                # Shielded: grpc may cancel the handler again while this runs, and the cleanup must still happen.
                await asyncio.shield(replies.end(cancel=ending == _FAILED))
