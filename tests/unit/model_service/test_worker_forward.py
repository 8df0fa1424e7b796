"""Forward-only work items through the worker loop and a real Redis, beside a generation model in one process."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch
from test_worker_loop import running, wait_for

from model_service.loader import load_model
from model_service.worker import create_lane
from pipeserve.config import ModelSpec
from pipeserve.internal.v1 import queue_pb2
from pipeserve.local_encoder_models import TINY_BERT_SENTIMENT
from pipeserve.queue.connection import sync_client
from pipeserve.queue.forward_rows import forward_work, outputs_of
from pipeserve.queue.protocol import PAYLOAD_FIELD, encode, now_ms

pytest_plugins = ["test_worker_loop"]


@pytest.fixture(scope="module")
def sentiment(pipeline_models_file):
    path = pipeline_models_file.parent / TINY_BERT_SENTIMENT
    return load_model(ModelSpec(name=TINY_BERT_SENTIMENT, path=str(path)))


def rows(*lengths: int) -> list[dict[str, np.ndarray]]:
    return [{"input_ids": np.arange(2, 2 + n), "attention_mask": np.ones(n, dtype=np.int64)} for n in lengths]


def submit(worker, model: str, work_rows, *, deadline_unix_ms: int = 0) -> str:
    request_id = uuid.uuid4().hex
    item = queue_pb2.WorkItem(
        request_id=request_id,
        model=model,
        deadline_unix_ms=deadline_unix_ms,
        enqueued_unix_ms=now_ms(),
        forward=forward_work(work_rows, ["logits"], []),
    )
    worker.redis.xadd(worker.keys.request_stream(model), {PAYLOAD_FIELD: encode(item)})
    return request_id


def one_chunk(worker, request_id: str) -> queue_pb2.ReplyChunk:
    chunks = wait_for(lambda: worker.chunks(request_id), what=f"the reply of {request_id}")
    assert len(chunks) == 1
    return chunks[0]


def test_forward_items_are_answered_beside_generation_and_acknowledged(
    sentiment, tiny_llama, settings, client, redis_url
):
    lanes = [create_lane(model, sync_client(redis_url), settings) for model in (tiny_llama, sentiment)]
    with running(lanes, settings, client) as worker:
        wait_for(lambda: client.zscore(worker.keys.workers(sentiment.name), settings.worker_id), what="a heartbeat")
        mixed = rows(3, 11, 6)
        forward_id = submit(worker, sentiment.name, mixed)
        generation_id = worker.submit(tiny_llama.name, [5, 6, 7], max_new_tokens=4, ignore_eos=True)
        chunk = one_chunk(worker, forward_id)
        outputs = outputs_of(chunk.forward)
        for row, out in zip(mixed, outputs, strict=True):
            with torch.inference_mode():
                alone = sentiment.model(**{k: torch.from_numpy(v)[None] for k, v in row.items()}).logits[0]
            np.testing.assert_allclose(out["logits"], alone.numpy(), atol=1e-5)
        assert worker.reply(generation_id)
        wait_for(lambda: worker.queue_empty(sentiment.name), what="the forward entry to be acknowledged")


def test_expired_and_invalid_forward_items_are_never_run(sentiment, settings, client, redis_url):
    with running([create_lane(sentiment, sync_client(redis_url), settings)], settings, client) as worker:
        expired = submit(worker, sentiment.name, rows(4), deadline_unix_ms=now_ms() - 1)
        outside = submit(worker, sentiment.name, [{"input_ids": np.array([1, sentiment.input_vocab_size])}])
        fine = submit(worker, sentiment.name, rows(4))
        assert one_chunk(worker, expired).error.code == 4  # DEADLINE_EXCEEDED
        refused = one_chunk(worker, outside).error
        assert refused.code == 3 and "outside the vocabulary" in refused.message  # INVALID_ARGUMENT
        assert len(one_chunk(worker, fine).forward.rows) == 1
        wait_for(lambda: worker.queue_empty(sentiment.name), what="every entry to be acknowledged")
