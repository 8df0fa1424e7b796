"""Taking over a dead worker's requests: resume from the reply stream, dead-letter poison, keep live workers' own.

A "dead worker" here is a consumer name that read an entry (and maybe
published some chunks) and then never touched Redis again, which is all a
SIGKILLed worker leaves behind. tests/e2e/test_failures.py kills real ones.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

import pytest
import redis
from test_worker_loop import generate_alone, running, tokens_of, wait_for
from worker_settings import worker_settings

from model_service.config import WorkerSettings
from model_service.worker import create_lane
from pipeserve.internal.v1 import queue_pb2
from pipeserve.queue.connection import sync_client
from pipeserve.queue.consumer import WorkConsumer
from pipeserve.queue.keys import CONSUMER_GROUP, Keys
from pipeserve.queue.protocol import PAYLOAD_FIELD, decode_work_item, encode, now_ms
from pipeserve.queue.reclaim import PendingWork
from pipeserve.v1 import types_pb2

LENGTH = types_pb2.FINISH_REASON_LENGTH
CLAIM_IDLE_MS = 300


@pytest.fixture
def settings(redis_url, key_prefix, models_file) -> WorkerSettings:
    return worker_settings(
        redis_url,
        key_prefix,
        models_file,
        role="live",
        idle_block_ms=50,
        heartbeat_interval_s=0.1,
        claim_idle_ms=CLAIM_IDLE_MS,
        max_deliveries=3,
        drain_timeout_s=20,
    )


def work_item(model: str, prompt: list[int], *, deadline_unix_ms: int = 0, **sampling) -> queue_pb2.WorkItem:
    params = {"max_new_tokens": 8, "temperature": 1.0, "top_p": 1.0, "repetition_penalty": 1.0}
    params["num_return_sequences"] = 1
    params.update(sampling)
    return queue_pb2.WorkItem(
        request_id=uuid.uuid4().hex,
        model=model,
        prompt_token_ids=prompt,
        sampling=queue_pb2.SamplingParams(**params),
        deadline_unix_ms=deadline_unix_ms,
        enqueued_unix_ms=now_ms(),
    )


class DeadWorkers:
    """What dead workers leave behind: entries read (delivered) but never acknowledged, and some reply chunks."""

    def __init__(self, client: redis.Redis, keys: Keys, model: str):
        self._client = client
        self._keys = keys
        self._stream = keys.request_stream(model)
        WorkConsumer(client, keys, model, "nobody", key_ttl_s=60).ensure_group()

    def take(self, item: queue_pb2.WorkItem, deliveries: int = 1) -> str:
        """Enqueue the item, have 'dead-worker-1' read it, then hand it on to as many more as deliveries says."""
        self._client.xadd(self._stream, {PAYLOAD_FIELD: encode(item)})
        [[_stream, [(entry_id, _fields)]]] = self._client.xreadgroup(
            CONSUMER_GROUP, "dead-worker-1", {self._stream: ">"}, count=1
        )
        for number in range(2, deliveries + 1):
            self._client.xclaim(self._stream, CONSUMER_GROUP, f"dead-worker-{number}", 0, [entry_id])
        return entry_id.decode()

    def published(self, request_id: str, *chunks: queue_pb2.ReplyChunk) -> None:
        for chunk in chunks:
            self._client.xadd(self._keys.reply_stream(request_id), {PAYLOAD_FIELD: encode(chunk)})


def chunk(number: int, *deltas: queue_pb2.SequenceDelta) -> queue_pb2.ReplyChunk:
    return queue_pb2.ReplyChunk(sequence_number=number, deltas=deltas)


def delta(index: int, tokens: list[int], finish: int = 0) -> queue_pb2.SequenceDelta:
    return queue_pb2.SequenceDelta(index=index, token_ids=tokens, finish_reason=finish)


def reply_chunks(client: redis.Redis, keys: Keys, request_id: str) -> list[queue_pb2.ReplyChunk]:
    chunks = []
    for _id, fields in client.xrange(keys.reply_stream(request_id)):
        parsed = queue_pb2.ReplyChunk()
        parsed.ParseFromString(fields[PAYLOAD_FIELD])
        chunks.append(parsed)
    return chunks


def final_reply(client, keys, request_id: str, sequences: int = 1) -> list[queue_pb2.ReplyChunk]:
    def final():
        chunks = reply_chunks(client, keys, request_id)
        finished = {d.index for c in chunks for d in c.deltas if d.finish_reason}
        return chunks if chunks and (chunks[-1].HasField("error") or len(finished) == sequences) else None

    return wait_for(final, what=f"the final chunk of {request_id}")


def settled(client: redis.Redis, keys: Keys, model: str) -> bool:
    stream = keys.request_stream(model)
    return client.xlen(stream) == 0 and client.xpending(stream, CONSUMER_GROUP)["pending"] == 0


@pytest.fixture
def worker_for(tiny_llama, settings, client, redis_url):
    """Start a live worker serving tiny-llama (after the test has set the scene)."""

    def start():
        return running([create_lane(tiny_llama, sync_client(redis_url), settings)], settings, client)

    return start


def test_a_dead_workers_greedy_request_is_resumed_with_no_gap_or_duplicate(worker_for, tiny_llama, client, settings):
    keys, prompt = Keys(settings.key_prefix), list(range(40, 60))
    expected = generate_alone(tiny_llama, prompt, 24)
    dead = DeadWorkers(client, keys, tiny_llama.name)
    item = work_item(tiny_llama.name, prompt, max_new_tokens=24, ignore_eos=True)
    dead.take(item)
    dead.published(item.request_id, chunk(0, delta(0, expected[:1])), chunk(1, delta(0, expected[1:5])))
    with worker_for():
        chunks = final_reply(client, keys, item.request_id)
        wait_for(lambda: settled(client, keys, tiny_llama.name), what="the taken-over entry to be acknowledged")
    assert tokens_of(chunks) == expected, "the resumed run differs from an uninterrupted one"
    assert [c.sequence_number for c in chunks] == list(range(len(chunks)))
    assert [d.finish_reason for c in chunks for d in c.deltas if d.finish_reason] == [LENGTH]
    assert client.xlen(keys.dead_letter(tiny_llama.name)) == 0


def test_every_unfinished_sequence_of_a_sampled_request_is_resumed(worker_for, tiny_llama, client, settings):
    keys = Keys(settings.key_prefix)
    dead = DeadWorkers(client, keys, tiny_llama.name)
    item = work_item(
        tiny_llama.name, [3, 4, 5], max_new_tokens=6, do_sample=True, num_return_sequences=3, seed=7, ignore_eos=True
    )
    dead.take(item)
    done, started = [11, 12, 13, 14, 15, 16], [21, 22]
    dead.published(item.request_id, chunk(0, delta(0, done[:1]), delta(1, started[:1])))
    dead.published(item.request_id, chunk(1, delta(0, done[1:], LENGTH), delta(1, started[1:])))
    with worker_for():
        chunks = final_reply(client, keys, item.request_id, sequences=3)
    assert tokens_of(chunks, 0) == done, "a finished sequence is not generated again"
    assert tokens_of(chunks, 1)[:2] == started and len(tokens_of(chunks, 1)) == 6
    assert len(tokens_of(chunks, 2)) == 6
    finishes = sorted(d.index for c in chunks for d in c.deltas if d.finish_reason)
    assert finishes == [0, 1, 2]
    assert [c.sequence_number for c in chunks] == list(range(len(chunks)))


def test_a_request_whose_final_chunk_was_out_is_only_acknowledged(worker_for, tiny_llama, client, settings):
    keys = Keys(settings.key_prefix)
    dead = DeadWorkers(client, keys, tiny_llama.name)
    item = work_item(tiny_llama.name, [5, 6], max_new_tokens=2)
    dead.take(item)
    dead.published(item.request_id, chunk(0, delta(0, [9])), chunk(1, delta(0, [10], LENGTH)))
    with worker_for():
        wait_for(lambda: settled(client, keys, tiny_llama.name), what="the finished entry to be acknowledged")
    assert len(reply_chunks(client, keys, item.request_id)) == 2


def test_a_taken_over_request_past_its_deadline_is_refused_in_sequence(worker_for, tiny_llama, client, settings):
    keys = Keys(settings.key_prefix)
    dead = DeadWorkers(client, keys, tiny_llama.name)
    item = work_item(tiny_llama.name, [5, 6], max_new_tokens=20, deadline_unix_ms=now_ms() + 200)
    dead.take(item)
    dead.published(item.request_id, chunk(0, delta(0, [9])))
    with worker_for():
        chunks = final_reply(client, keys, item.request_id)
    assert chunks[-1].sequence_number == 1 and chunks[-1].error.code == 4  # DEADLINE_EXCEEDED


def test_a_request_that_took_down_max_deliveries_workers_is_dead_lettered(worker_for, tiny_llama, client, settings):
    keys = Keys(settings.key_prefix)
    dead = DeadWorkers(client, keys, tiny_llama.name)
    poison = work_item(tiny_llama.name, [1, 2, 3], max_new_tokens=50)
    entry_id = dead.take(poison, deliveries=settings.max_deliveries)
    dead.published(poison.request_id, chunk(0, delta(0, [7])))
    with worker_for() as worker:
        chunks = final_reply(client, keys, poison.request_id)
        healthy = worker.submit(tiny_llama.name, [1, 2, 3], max_new_tokens=5, ignore_eos=True)
        assert len(tokens_of(final_reply(client, keys, healthy))) == 5, "other requests are still served"
        wait_for(lambda: settled(client, keys, tiny_llama.name), what="both entries to be acknowledged")
    assert [c.sequence_number for c in chunks] == [0, 1]
    assert chunks[-1].error.code == 13  # INTERNAL
    assert "failed on 3 model workers" in chunks[-1].error.message
    [(_id, fields)] = client.xrange(keys.dead_letter(tiny_llama.name))
    assert decode_work_item(fields[PAYLOAD_FIELD]) == poison
    assert fields[b"entry_id"].decode() == entry_id and fields[b"deliveries"] == b"4"
    assert b"stopped before it was done" in fields[b"error"]
    assert client.ttl(keys.dead_letter(tiny_llama.name)) == -1, "the dead-letter stream is capped, not expiring"


def test_a_busy_workers_entries_never_look_abandoned(worker_for, tiny_llama, client, settings):
    keys = Keys(settings.key_prefix)
    sweeper = PendingWork(
        sync_client(settings.redis_url),
        keys,
        tiny_llama.name,
        "sweeper",
        key_ttl_s=60,
        claim_idle_ms=CLAIM_IDLE_MS,
        max_deliveries=3,
    )
    with worker_for() as worker:
        request_id = worker.submit(tiny_llama.name, [9, 8, 7], max_new_tokens=1500, ignore_eos=True)
        wait_for(lambda: worker.chunks(request_id), what="generation to start")
        sweep_until = time.monotonic() + 4 * CLAIM_IDLE_MS / 1000
        while time.monotonic() < sweep_until:
            assert sweeper.claim(10) == [], "a live worker's entry was taken over"
            time.sleep(0.05)
        client.sadd(keys.cancel(request_id), "*")
        wait_for(lambda: settled(client, keys, tiny_llama.name), what="the cancelled request to end")


def test_a_worker_that_lost_its_entry_stops_writing_to_its_reply(worker_for, tiny_llama, client, settings, caplog):
    """A stalled worker whose request was taken over must not keep publishing beside the new owner."""
    keys = Keys(settings.key_prefix)
    stream = keys.request_stream(tiny_llama.name)
    new_owner = PendingWork(
        sync_client(settings.redis_url),
        keys,
        tiny_llama.name,
        "new-owner",
        key_ttl_s=60,
        claim_idle_ms=1,
        max_deliveries=3,
    )
    owner_alive = threading.Event()
    caplog.set_level(logging.WARNING, logger="model_service.worker")
    with worker_for() as worker:
        request_id = worker.submit(tiny_llama.name, [9, 8, 7], max_new_tokens=1500, ignore_eos=True)
        wait_for(lambda: worker.chunks(request_id), what="generation to start")
        [entry] = client.xpending_range(stream, CONSUMER_GROUP, "-", "+", 1)
        client.xclaim(stream, CONSUMER_GROUP, "new-owner", 0, [entry["message_id"]])

        def heartbeat_as_the_new_owner():
            while not owner_alive.wait(0.05):
                new_owner.keep_owned([entry["message_id"].decode()])

        owner = threading.Thread(target=heartbeat_as_the_new_owner)
        owner.start()
        try:
            wait_for(lambda: "no longer this worker's" in caplog.text, what="the worker to notice")
            published = len(worker.chunks(request_id))
            time.sleep(0.5)  # proving an absence: a writer at this model's pace adds several chunks meanwhile
            assert len(worker.chunks(request_id)) == published, "it kept publishing after losing the entry"
            healthy = worker.submit(tiny_llama.name, [1, 2], max_new_tokens=3, ignore_eos=True)
            assert len(tokens_of(final_reply(client, keys, healthy))) == 3
        finally:
            owner_alive.set()
            owner.join()
    [entry] = client.xpending_range(stream, CONSUMER_GROUP, "-", "+", 1)
    assert entry["consumer"] == b"new-owner", "the new owner's claim stands"
