"""The worker loop against a real Redis: work items in, chunked replies out, acknowledgements, cancels, drain."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import redis
import torch
from model_fakes import FakeLM, reference_continuation
from worker_settings import worker_settings

from model_service.config import WorkerSettings
from model_service.engine.continuous import ContinuousBatcher
from model_service.loader import ModelLoadError
from model_service.work_items import ModelLimits
from model_service.worker import ModelLane, Worker, create_lane
from pipeserve.internal.v1 import queue_pb2
from pipeserve.queue.connection import sync_client
from pipeserve.queue.consumer import WorkConsumer
from pipeserve.queue.keys import CONSUMER_GROUP, Keys
from pipeserve.queue.protocol import PAYLOAD_FIELD, decode_reply_chunk, encode, now_ms
from pipeserve.queue.reclaim import PendingWork
from pipeserve.v1 import types_pb2

TIMEOUT_S = 30


def wait_for(condition: Callable[[], object], timeout_s: float = TIMEOUT_S, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def is_final(chunks: list[queue_pb2.ReplyChunk], sequences: int) -> bool:
    finished = {d.index for chunk in chunks for d in chunk.deltas if d.finish_reason}
    return bool(chunks) and (chunks[-1].HasField("error") or len(finished) == sequences)


def tokens_of(chunks: list[queue_pb2.ReplyChunk], index: int = 0) -> list[int]:
    return [t for chunk in chunks for d in chunk.deltas if d.index == index for t in d.token_ids]


@dataclasses.dataclass
class RunningWorker:
    redis: redis.Redis
    keys: Keys
    stop: threading.Event
    thread: threading.Thread
    worker_id: str

    def submit(self, model: str, prompt: list[int], *, deadline_unix_ms: int = 0, **sampling) -> str:
        request_id = uuid.uuid4().hex
        params = {"max_new_tokens": 8, "temperature": 1.0, "top_p": 1.0, "repetition_penalty": 1.0}
        params["num_return_sequences"] = 1
        params.update(sampling)
        item = queue_pb2.WorkItem(
            request_id=request_id,
            model=model,
            prompt_token_ids=prompt,
            sampling=queue_pb2.SamplingParams(**params),
            deadline_unix_ms=deadline_unix_ms,
            enqueued_unix_ms=now_ms(),
        )
        self.redis.xadd(self.keys.request_stream(model), {PAYLOAD_FIELD: encode(item)})
        return request_id

    def chunks(self, request_id: str) -> list[queue_pb2.ReplyChunk]:
        entries = self.redis.xrange(self.keys.reply_stream(request_id))
        return [decode_reply_chunk(fields[PAYLOAD_FIELD]) for _id, fields in entries]

    def reply(self, request_id: str, sequences: int = 1) -> list[queue_pb2.ReplyChunk]:
        """Every chunk of a request, once its final one is there."""
        return wait_for(
            lambda: (chunks := self.chunks(request_id)) and is_final(chunks, sequences) and chunks,
            what=f"the final chunk of {request_id}",
        )

    def queue_empty(self, model: str) -> bool:
        stream = self.keys.request_stream(model)
        return self.redis.xlen(stream) == 0 and self.redis.xpending(stream, CONSUMER_GROUP)["pending"] == 0


@contextmanager
def running(lanes: list[ModelLane], settings: WorkerSettings, client: redis.Redis) -> Iterator[RunningWorker]:
    stop = threading.Event()
    failures = []

    def serve():
        try:
            Worker(lanes, settings).run(stop)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            failures.append(exc)

    thread = threading.Thread(target=serve, name="worker-under-test")
    thread.start()
    worker = RunningWorker(client, Keys(settings.key_prefix), stop, thread, settings.worker_id)
    try:
        yield worker
    finally:
        stop.set()
        thread.join(TIMEOUT_S)
        assert not thread.is_alive(), "the worker did not stop"
        assert not failures, failures


@pytest.fixture
def settings(redis_url, key_prefix, models_file) -> WorkerSettings:
    return worker_settings(
        redis_url,
        key_prefix,
        models_file,
        idle_block_ms=50,
        heartbeat_interval_s=0.1,
        drain_timeout_s=20,
    )


@pytest.fixture
def tiny_worker(tiny_llama, settings, client, redis_url) -> Iterator[RunningWorker]:
    with running([create_lane(tiny_llama, sync_client(redis_url), settings)], settings, client) as worker:
        wait_for(lambda: client.zscore(worker.keys.workers(tiny_llama.name), settings.worker_id), what="a heartbeat")
        yield worker


def fake_lane(engine, limits: ModelLimits, settings: WorkerSettings, redis_url: str) -> ModelLane:
    """A lane around any engine, wired to the queue the way create_lane wires a loaded model's."""
    client, keys = sync_client(redis_url), Keys(settings.key_prefix)
    consumer = WorkConsumer(client, keys, limits.model, settings.worker_id, key_ttl_s=settings.key_ttl_s)
    pending = PendingWork(
        client,
        keys,
        limits.model,
        settings.worker_id,
        key_ttl_s=settings.key_ttl_s,
        claim_idle_ms=settings.claim_idle_ms,
        max_deliveries=settings.max_deliveries,
    )
    return ModelLane(consumer, pending, engine, limits, settings)


def generate_alone(loaded, prompt: list[int], max_new_tokens: int) -> list[int]:
    with torch.inference_mode():
        output = loaded.model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=None,
            pad_token_id=0,
        )
    return output[0, len(prompt) :].tolist()


def test_a_request_streams_numbered_chunks_equal_to_generate_and_is_acknowledged(tiny_worker, tiny_llama):
    prompt = list(range(40, 60))
    request_id = tiny_worker.submit(tiny_llama.name, prompt, max_new_tokens=22, ignore_eos=True)
    chunks = tiny_worker.reply(request_id)
    assert tokens_of(chunks) == generate_alone(tiny_llama, prompt, 22)
    assert [c.sequence_number for c in chunks] == list(range(len(chunks)))
    # The first token goes out alone and at once; then every flush_tokens=4 (the interval is a minute here).
    assert [len(c.deltas[0].token_ids) for c in chunks] == [1, 4, 4, 4, 4, 4, 1]
    assert chunks[-1].deltas[0].finish_reason == types_pb2.FINISH_REASON_LENGTH
    assert not any(c.deltas[0].finish_reason for c in chunks[:-1])
    wait_for(lambda: tiny_worker.queue_empty(tiny_llama.name), what="the entry to be acknowledged and deleted")
    assert tiny_worker.redis.ttl(tiny_worker.keys.reply_stream(request_id)) > 0


def test_an_expired_request_is_never_started(tiny_worker, tiny_llama):
    request_id = tiny_worker.submit(tiny_llama.name, [5, 6, 7], deadline_unix_ms=now_ms() - 1)
    chunks = tiny_worker.reply(request_id)
    assert len(chunks) == 1 and not chunks[0].deltas
    assert chunks[0].error.code == 4  # DEADLINE_EXCEEDED
    assert "deadline" in chunks[0].error.message
    wait_for(lambda: tiny_worker.queue_empty(tiny_llama.name), what="the expired entry to be acknowledged")


def test_a_work_item_the_model_cannot_run_gets_invalid_argument(tiny_worker, tiny_llama):
    request_id = tiny_worker.submit(tiny_llama.name, [1, tiny_llama.input_vocab_size + 5])
    [chunk] = tiny_worker.reply(request_id)
    assert chunk.error.code == 3  # INVALID_ARGUMENT
    assert "vocabulary" in chunk.error.message
    too_long = tiny_worker.submit(tiny_llama.name, [1] * 10, max_new_tokens=tiny_llama.context_length)
    [chunk] = tiny_worker.reply(too_long)
    assert (chunk.error.code, "context length" in chunk.error.message) == (3, True)


def test_a_cancel_flag_stops_a_long_request(tiny_worker, tiny_llama):
    request_id = tiny_worker.submit(tiny_llama.name, [9, 8, 7], max_new_tokens=1500, ignore_eos=True)
    wait_for(lambda: tiny_worker.chunks(request_id), what="the first chunk")
    tiny_worker.redis.sadd(tiny_worker.keys.cancel(request_id), "*")
    wait_for(lambda: tiny_worker.queue_empty(tiny_llama.name), what="the cancelled entry to be acknowledged")
    chunks = tiny_worker.chunks(request_id)
    assert len(tokens_of(chunks)) < 1500
    assert not any(d.finish_reason for c in chunks for d in c.deltas), "nobody reads a cancelled request's end"
    assert not tiny_worker.redis.exists(tiny_worker.keys.cancel(request_id)), "the flag goes with the request"


def test_a_request_its_client_left_gets_no_reply_stream_back(tiny_worker, tiny_llama):
    """The gateway raises the flag, then deletes the reply stream: no chunk may bring the stream back."""
    request_id = tiny_worker.submit(tiny_llama.name, [9, 8, 7], max_new_tokens=1500, ignore_eos=True)
    wait_for(lambda: tiny_worker.chunks(request_id), what="the first chunk")
    tiny_worker.redis.sadd(tiny_worker.keys.cancel(request_id), "*")
    tiny_worker.redis.delete(tiny_worker.keys.reply_stream(request_id))
    wait_for(lambda: tiny_worker.queue_empty(tiny_llama.name), what="the cancelled entry to be acknowledged")
    assert not tiny_worker.redis.exists(tiny_worker.keys.reply_stream(request_id))
    assert not tiny_worker.redis.exists(tiny_worker.keys.cancel(request_id))


def test_a_request_whose_deadline_passes_while_generating_is_stopped(tiny_worker, tiny_llama):
    deadline = now_ms() + 300
    request_id = tiny_worker.submit(
        tiny_llama.name, [9, 8, 7], max_new_tokens=1500, ignore_eos=True, deadline_unix_ms=deadline
    )
    wait_for(lambda: tiny_worker.queue_empty(tiny_llama.name), what="the expired request to be stopped")
    assert len(tokens_of(tiny_worker.chunks(request_id))) < 1500


def test_sampled_sequences_arrive_with_their_indexes(tiny_worker, tiny_llama):
    request_id = tiny_worker.submit(
        tiny_llama.name, [3, 4, 5], max_new_tokens=6, do_sample=True, num_return_sequences=3, seed=1, ignore_eos=True
    )
    chunks = tiny_worker.reply(request_id, sequences=3)
    assert [len(tokens_of(chunks, index)) for index in range(3)] == [6, 6, 6]


def test_stopping_drains_the_request_in_flight_and_leaves(tiny_llama, settings, client, redis_url):
    lane = create_lane(tiny_llama, sync_client(redis_url), settings)
    with running([lane], settings, client) as worker:
        workers_key = worker.keys.workers(tiny_llama.name)
        wait_for(lambda: client.zscore(workers_key, settings.worker_id), what="a heartbeat")
        request_id = worker.submit(tiny_llama.name, [1, 2, 3], max_new_tokens=120, ignore_eos=True)
        wait_for(lambda: worker.chunks(request_id), what="the first chunk")
        worker.stop.set()
        worker.thread.join(TIMEOUT_S)
        chunks = worker.chunks(request_id)
        assert len(tokens_of(chunks)) == 120, "the request in flight was finished, not dropped"
        assert worker.queue_empty(tiny_llama.name)
        assert client.zscore(workers_key, settings.worker_id) is None, "the worker left the liveness set"


def test_one_process_serves_several_models(tiny_llama, settings, client, redis_url):
    connection = sync_client(redis_url)
    other = dataclasses.replace(tiny_llama, name="tiny-llama-b")
    lanes = [create_lane(tiny_llama, connection, settings), create_lane(other, connection, settings)]
    with running(lanes, settings, client) as worker:
        first = worker.submit(tiny_llama.name, [10, 11], max_new_tokens=5, ignore_eos=True)
        second = worker.submit(other.name, [10, 11], max_new_tokens=5, ignore_eos=True)
        assert tokens_of(worker.reply(first)) == tokens_of(worker.reply(second))


def test_a_failing_forward_pass_gives_internal_and_the_worker_keeps_serving(settings, client, redis_url):
    model = FakeLM()
    engine = ContinuousBatcher(model, max_batch_size=4, prefill_tokens_per_step=1024, vocab_size=97, device="cpu")
    lane = fake_lane(engine, ModelLimits("fake", 97, None, 4), settings, redis_url)
    with running([lane], settings, client) as worker:
        model.fail_on = "prefill"
        broken = worker.submit("fake", [1, 2])
        [chunk] = worker.reply(broken)
        assert chunk.error.code == 13  # INTERNAL
        assert "Traceback" not in chunk.error.message and "injected" not in chunk.error.message
        fine = worker.submit("fake", [1, 2], max_new_tokens=5)
        assert tokens_of(worker.reply(fine)) == reference_continuation([1, 2], 5)
        wait_for(lambda: worker.queue_empty("fake"), what="both entries to be acknowledged")


def test_warm_up_refuses_a_model_the_engine_cannot_run(settings, redis_url):
    model = FakeLM()
    engine = ContinuousBatcher(model, max_batch_size=4, prefill_tokens_per_step=1024, vocab_size=97, device="cpu")
    lane = fake_lane(engine, ModelLimits("fake", 97, None, 4), settings, redis_url)
    lane.warm_up()
    model.fail_on = "prefill"
    with pytest.raises(ModelLoadError, match="model 'fake' loaded but cannot generate with engine 'padded-kv'"):
        lane.warm_up()


def test_an_unreachable_redis_is_retried_not_fatal(tiny_llama, settings, client, caplog):
    unreachable = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    lane = create_lane(tiny_llama, sync_client(unreachable.redis_url), unreachable)
    with running([lane], unreachable, client) as worker:
        wait_for(
            lambda: sum("Redis group creation failed" in r.getMessage() for r in caplog.records) >= 3,
            what="three attempts to reach Redis",
        )
        assert worker.thread.is_alive(), "the worker keeps retrying"
