"""RunTask over real gRPC and Redis, with the test playing the model worker on the queue."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest

from pipeserve.internal.v1 import queue_pb2, tokenizer_pb2, tokenizer_pb2_grpc
from pipeserve.local_encoder_models import TINY_BERT_SENTIMENT
from pipeserve.queue.forward_rows import forward_result, rows_of
from pipeserve.queue.protocol import PAYLOAD_FIELD, decode_work_item
from pipeserve.v1 import pipelines_pb2 as pb
from tokenizer_service.config import TokenizerSettings
from tokenizer_service.server import create_server

WAIT_S = 10.0
MAX_ROWS = 3


@pytest.fixture
async def stub(pipeline_models_file, redis, keys) -> AsyncIterator[tokenizer_pb2_grpc.TokenizerServiceStub]:
    settings = TokenizerSettings(
        models_file=pipeline_models_file, key_prefix=keys.prefix, key_ttl_s=60, max_pipeline_rows=MAX_ROWS
    )
    server, port = create_server(settings, "127.0.0.1:0", redis=redis)
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield tokenizer_pb2_grpc.TokenizerServiceStub(channel)
    await server.stop(None)


@pytest.fixture
async def live_worker(redis, keys) -> None:
    await redis.zadd(keys.workers(TINY_BERT_SENTIMENT), {"worker-1": time.time()})


def run_task(*texts: str) -> tokenizer_pb2.RunTaskRequest:
    items = [pb.TextClassificationItem(text=text) for text in texts]
    request = pb.PipelineRequest(
        model=TINY_BERT_SENTIMENT, text_classification=pb.TextClassificationInput(items=items, top_k=0)
    )
    return tokenizer_pb2.RunTaskRequest(request_id=uuid.uuid4().hex, task="text-classification", request=request)


async def next_work_item(redis, keys) -> queue_pb2.WorkItem:
    stream = keys.request_stream(TINY_BERT_SENTIMENT)
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        entries = await redis.xrange(stream)
        if entries:
            await redis.xdel(stream, entries[0][0])
            return decode_work_item(entries[0][1][PAYLOAD_FIELD])
        await asyncio.sleep(0.01)
    raise AssertionError("no work item was enqueued")


async def reply(redis, keys, request_id: str, chunk: queue_pb2.ReplyChunk) -> None:
    await redis.xadd(keys.reply_stream(request_id), {PAYLOAD_FIELD: chunk.SerializeToString()})


async def test_one_work_item_of_rows_out_one_reply_of_tensors_in(stub, redis, keys, live_worker):
    call = stub.RunTask(run_task("good", "a longer second text"), timeout=WAIT_S)
    item = await next_work_item(redis, keys)
    rows = rows_of(item.forward)
    assert len(rows) == 2 and len(rows[0]["input_ids"]) < len(rows[1]["input_ids"])
    assert list(item.forward.output_names) == ["logits"] and item.deadline_unix_ms > 0
    logits = [np.array([0.0, 1.0, 2.0], dtype=np.float32), np.array([3.0, 1.0, 0.0], dtype=np.float32)]
    await reply(
        redis, keys, item.request_id, queue_pb2.ReplyChunk(forward=forward_result([{"logits": x} for x in logits]))
    )
    response = (await call).response
    assert response.task == "text-classification"
    first, second = response.text_classification.results
    assert [label.label for label in first.labels] == ["positive", "neutral", "negative"]
    assert [label.label for label in second.labels] == ["negative", "neutral", "positive"]
    await asyncio.sleep(0.05)
    assert not await redis.exists(keys.reply_stream(item.request_id))
    assert not await redis.exists(keys.cancel(item.request_id))


async def test_a_worker_error_ends_the_call_with_its_status(stub, redis, keys, live_worker):
    call = stub.RunTask(run_task("x"), timeout=WAIT_S)
    item = await next_work_item(redis, keys)
    error = queue_pb2.ReplyError(code=grpc.StatusCode.DEADLINE_EXCEEDED.value[0], message="expired in the queue")
    await reply(redis, keys, item.request_id, queue_pb2.ReplyChunk(error=error))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and raised.value.details() == "expired in the queue"


async def test_a_caller_that_leaves_cancels_the_work_item(stub, redis, keys, live_worker):
    call = stub.RunTask(run_task("x"), timeout=WAIT_S)
    item = await next_work_item(redis, keys)
    call.cancel()
    deadline = time.monotonic() + WAIT_S
    while await redis.smembers(keys.cancel(item.request_id)) != {b"*"}:
        assert time.monotonic() < deadline, "the cancel flag was not raised"
        await asyncio.sleep(0.01)


async def test_no_live_worker_is_unavailable_and_enqueues_nothing(stub, redis, keys):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.RunTask(run_task("x"), timeout=WAIT_S)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no model worker for 'tiny-bert-sentiment' is alive" in raised.value.details()
    assert not await redis.exists(keys.request_stream(TINY_BERT_SENTIMENT))


async def test_a_task_the_model_cannot_do_is_refused(stub):
    request = run_task("x")
    request.task = "fill-mask"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.RunTask(request, timeout=WAIT_S)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot do 'fill-mask'; its tasks: text-classification, zero-shot-classification" in raised.value.details()


async def test_more_rows_than_the_limit_are_refused_before_anything_is_enqueued(stub, redis, keys, live_worker):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.RunTask(run_task(*["x"] * (MAX_ROWS + 1)), timeout=WAIT_S)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"becomes {MAX_ROWS + 1} model rows" in raised.value.details()
    assert f"at most {MAX_ROWS} are accepted per request (PIPESERVE_MAX_PIPELINE_ROWS)" in raised.value.details()
    assert not await redis.exists(keys.request_stream(TINY_BERT_SENTIMENT))
