"""Fakes and helpers for the gateway tests: a scripted tokenizer service, worker heartbeats, bounded waits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import pytest
import redis.asyncio as aioredis

from gateway.config import GatewaySettings
from gateway.server import Gateway
from pipeserve.internal.v1 import queue_pb2, tokenizer_pb2, tokenizer_pb2_grpc
from pipeserve.queue.keys import Keys
from pipeserve.v1 import generation_pb2_grpc, models_pb2, models_pb2_grpc, pipelines_pb2, pipelines_pb2_grpc, types_pb2

MODEL = "tiny-llama"
OTHER_MODEL = "tiny-classifier"
PROMPT_TOKEN_IDS = [11, 12, 13]


def stream_message(index=0, text="", token_ids=(), finish_reason=0, usage=None) -> tokenizer_pb2.StreamTextResponse:
    return tokenizer_pb2.StreamTextResponse(
        index=index, text=text, token_ids=list(token_ids), finish_reason=finish_reason, usage=usage
    )


class FakeTokenizer(tokenizer_pb2_grpc.TokenizerServiceServicer):
    """Scripted TokenizerService that records what the gateway sent it."""

    def __init__(self):
        self.preprocess_requests: list[tokenizer_pb2.PreprocessRequest] = []
        self.tokenize_requests: list[tokenizer_pb2.TokenizeRequest] = []
        self.stream_requests: list[tokenizer_pb2.StreamTextRequest] = []
        self.preprocess_reply = tokenizer_pb2.PreprocessResponse(
            prompt_token_ids=PROMPT_TOKEN_IDS,
            sampling=queue_pb2.SamplingParams(max_new_tokens=8, temperature=1.0, top_p=1.0, num_return_sequences=1),
            decode=tokenizer_pb2.DecodeOptions(skip_special_tokens=True, stop=["\n\n"], num_sequences=1),
        )
        self.preprocess_error: tuple[grpc.StatusCode, str] | None = None
        # Preprocess answers UNAVAILABLE this many times first (a tokenizer that died).
        self.preprocess_unavailable = 0
        self.stream_messages = [
            stream_message(text="Hel", token_ids=[1]),
            stream_message(text="lo", token_ids=[2]),
            stream_message(
                text="!",
                token_ids=[3],
                finish_reason=types_pb2.FINISH_REASON_EOS,
                usage=types_pb2.Usage(prompt_tokens=3, completion_tokens=3),
            ),
        ]
        self.stream_error: tuple[grpc.StatusCode, str] | None = None
        # Per StreamText call, in order: break with UNAVAILABLE after this many messages (a tokenizer dying mid-stream).
        self.stream_breaks: list[int] = []
        # Set to hold StreamText before its messages until the event is set.
        self.stream_release: asyncio.Event | None = None
        # After its messages, the stream waits until the gateway cancels it.
        self.stream_hangs = False
        self.stream_started = asyncio.Event()
        self.stream_cancelled = asyncio.Event()
        self.run_task_requests: list[tokenizer_pb2.RunTaskRequest] = []
        # RunTask answers UNAVAILABLE this many times first (a tokenizer that died).
        self.run_task_unavailable = 0

    async def Preprocess(self, request, context):
        self.preprocess_requests.append(request)
        if self.preprocess_unavailable:
            self.preprocess_unavailable -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "Socket closed")
        if self.preprocess_error:
            await context.abort(*self.preprocess_error)
        return self.preprocess_reply

    async def Tokenize(self, request, context):
        self.tokenize_requests.append(request)
        text = request.prompt if request.WhichOneof("input") == "prompt" else "<chat>"
        return tokenizer_pb2.TokenizeResponse(token_ids=[7, 8], tokens=["he", "llo"], text=text)

    async def DescribeModels(self, request, context):
        return tokenizer_pb2.DescribeModelsResponse(
            models=[
                models_pb2.ModelInfo(
                    name=MODEL, task="text-generation", max_context_length=2048, has_chat_template=True
                ),
                models_pb2.ModelInfo(name=OTHER_MODEL, task="text-classification"),
            ]
        )

    async def RunTask(self, request, context):
        self.run_task_requests.append(request)
        if self.run_task_unavailable:
            self.run_task_unavailable -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "Socket closed")
        output = pipelines_pb2.TextClassificationOutput(
            results=[pipelines_pb2.TextClassificationResult(labels=[pipelines_pb2.LabelScore(label="POS", score=0.9)])]
        )
        response = pipelines_pb2.PipelineResponse(model=request.request.model, task=request.task)
        response.text_classification.CopyFrom(output)
        return tokenizer_pb2.RunTaskResponse(response=response)

    async def StreamText(self, request, context):
        self.stream_requests.append(request)
        self.stream_started.set()
        if self.stream_release is not None:
            await self.stream_release.wait()
        break_after = self.stream_breaks.pop(0) if self.stream_breaks else None
        for sent, message in enumerate(self.stream_messages[request.resume_after_messages :]):
            if sent == break_after:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "Connection reset by peer")
            yield message
        if self.stream_error:
            await context.abort(*self.stream_error)
        if self.stream_hangs:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.stream_cancelled.set()
                raise


async def heartbeat(redis: aioredis.Redis, keys: Keys, model: str = MODEL, at: float | None = None) -> None:
    """Pretend a model worker is alive (or was, at `at`)."""
    await redis.zadd(keys.workers(model), {"worker-1": time.time() if at is None else at})


async def eventually(predicate: Callable, timeout_s: float = 5.0) -> None:
    """Wait for an async predicate to hold, failing after a bounded time."""
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.02)


@dataclass
class RunningGateway:
    gateway: Gateway
    channel: grpc.aio.Channel
    settings: GatewaySettings
    tokenizer: FakeTokenizer

    @property
    def generation(self) -> generation_pb2_grpc.GenerationServiceStub:
        return generation_pb2_grpc.GenerationServiceStub(self.channel)

    @property
    def models(self) -> models_pb2_grpc.ModelsServiceStub:
        return models_pb2_grpc.ModelsServiceStub(self.channel)

    @property
    def pipelines(self) -> pipelines_pb2_grpc.PipelineServiceStub:
        return pipelines_pb2_grpc.PipelineServiceStub(self.channel)
