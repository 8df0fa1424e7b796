"""The engines inside a worker lane, against a real Redis: a KV budget keeps work queued; transformers-cb serves.

The lane is stepped by hand (no worker thread), so what is pending in the
consumer group can be checked after every read.
"""

from __future__ import annotations

import uuid

import redis
from test_engine_parity import generate_alone
from worker_settings import worker_settings

from model_service.worker import ModelLane, create_lane
from pipeserve.internal.v1 import queue_pb2
from pipeserve.queue.connection import sync_client
from pipeserve.queue.keys import CONSUMER_GROUP, Keys
from pipeserve.queue.protocol import PAYLOAD_FIELD, decode_reply_chunk, encode, now_ms

MAX_ITERATIONS = 2000


def submit(client: redis.Redis, keys: Keys, model: str, prompt: list[int], max_new_tokens: int) -> str:
    request_id = uuid.uuid4().hex
    sampling = queue_pb2.SamplingParams(
        max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0, repetition_penalty=1.0, num_return_sequences=1
    )
    sampling.ignore_eos = True
    item = queue_pb2.WorkItem(
        request_id=request_id, model=model, prompt_token_ids=prompt, sampling=sampling, enqueued_unix_ms=now_ms()
    )
    client.xadd(keys.request_stream(model), {PAYLOAD_FIELD: encode(item)})
    return request_id


def reply_tokens(client: redis.Redis, keys: Keys, request_id: str) -> list[int] | None:
    """The request's generated tokens once its last chunk is published, else None."""
    chunks = [decode_reply_chunk(f[PAYLOAD_FIELD]) for _id, f in client.xrange(keys.reply_stream(request_id))]
    if not any(d.finish_reason for chunk in chunks for d in chunk.deltas):
        return None
    return [t for chunk in chunks for d in chunk.deltas for t in d.token_ids]


def serve_until_replied(lane: ModelLane, client: redis.Redis, keys: Keys, request_ids: list[str], check=None):
    replies: dict[str, list[int]] = {}
    for _ in range(MAX_ITERATIONS):
        lane.read_new(block_ms=5)
        if check is not None:
            check()
        lane.step()
        for request_id in request_ids:
            if request_id not in replies and (tokens := reply_tokens(client, keys, request_id)) is not None:
                replies[request_id] = tokens
        if len(replies) == len(request_ids):
            return replies
    raise AssertionError(f"only {len(replies)} of {len(request_ids)} requests finished")


def test_a_kv_budget_keeps_requests_in_the_queue_until_they_fit(tiny_llama, redis_url, key_prefix, models_file, client):
    # The tiny Llama's KV cache takes 4 KiB per token: 0.25 MiB is 64 tokens, two rows of 10 + 20 tokens, not three.
    settings = worker_settings(redis_url, key_prefix, models_file, kv_cache_budget_mb=0.25)
    lane = create_lane(tiny_llama, sync_client(redis_url), settings)
    assert lane.start()
    keys = Keys(key_prefix)
    stream = keys.request_stream(tiny_llama.name)
    prompts = [[20 + 3 * i + j for j in range(10)] for i in range(5)]
    request_ids = [submit(client, keys, tiny_llama.name, prompt, 20) for prompt in prompts]
    taken = []

    def at_most_two_taken():
        taken.append(client.xpending(stream, CONSUMER_GROUP)["pending"])
        assert taken[-1] <= 2, "the worker read work its KV budget cannot hold"

    replies = serve_until_replied(lane, client, keys, request_ids, check=at_most_two_taken)
    assert max(taken) == 2, "two requests did run side by side"
    for request_id, prompt in zip(request_ids, prompts):
        assert replies[request_id] == generate_alone(tiny_llama.model, prompt, 20, do_sample=False)
    lane.close()


def test_a_worker_serves_with_transformers_continuous_batching(tiny_llama, redis_url, key_prefix, models_file, client):
    settings = worker_settings(
        redis_url, key_prefix, models_file, engine="transformers-cb", cb_num_blocks=32, cb_page_size=16
    )
    lane = create_lane(tiny_llama, sync_client(redis_url), settings)
    lane.warm_up()
    assert lane.start()
    keys = Keys(key_prefix)
    prompts = [list(range(40, 60)), list(range(100, 103))]
    request_ids = [submit(client, keys, tiny_llama.name, prompt, 12) for prompt in prompts]
    replies = serve_until_replied(lane, client, keys, request_ids)
    for request_id, prompt in zip(request_ids, prompts):
        assert replies[request_id] == generate_alone(tiny_llama.model, prompt, 12, do_sample=False)
    lane.close()
