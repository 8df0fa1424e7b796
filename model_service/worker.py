"""The model worker's loop: Redis queue in, engine steps, chunked replies out.

One process may serve several models: each gets a ``ModelLane`` (its own
WorkConsumer, engine and replies in flight) and the loop steps the lanes in
turn. Only this thread touches the engines and Redis; signal handlers just
set events.

Redis being away is not fatal: every Redis call of a lane backs off and is
retried later, the engine keeps generating meanwhile, and chunks not yet
published stay in the lane's outbox (re-publishing one is harmless: readers
drop sequence numbers they have seen). An entry is acknowledged only after
its final chunk was published, so what a dying worker leaves behind is
still pending in the consumer group.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
import redis
from redis.exceptions import RedisError, ResponseError

from model_service.config import WorkerSettings
from model_service.engine import create_engine
from model_service.engine.interface import GenerationEngine, GenerationRequest, RequestFailed, SamplingOptions
from model_service.loader import LoadedModel, ModelLoadError
from model_service.replies import ReplyBuffer, error_chunk
from model_service.work_items import ModelLimits, request_from_work_item
from pipeserve.errors import InvalidArgument
from pipeserve.internal.v1 import queue_pb2
from pipeserve.queue.consumer import WorkConsumer
from pipeserve.queue.keys import Keys
from pipeserve.queue.protocol import now_ms

log = logging.getLogger(__name__)

REDIS_BACKOFF_MIN_S = 0.1
REDIS_BACKOFF_MAX_S = 5.0
_FAILED = object()

INTERNAL_ERROR_MESSAGE = "the model worker failed while generating this request; its log has the details"


@dataclass
class _InFlight:
    entry_id: str
    reply: ReplyBuffer
    deadline_unix_ms: int
    expired: bool = False
    """Cancelled because its deadline passed (so it is cancelled once)."""


@dataclass
class _Outgoing:
    request_id: str
    chunk: queue_pb2.ReplyChunk
    final_entry_id: str | None
    """Set on a request's last chunk: the queue entry to acknowledge once it is published."""


class ModelLane:
    """One served model: its queue consumer, its engine and the requests in flight."""

    def __init__(
        self,
        consumer: WorkConsumer,
        engine: GenerationEngine,
        limits: ModelLimits,
        settings: WorkerSettings,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.model = limits.model
        self._consumer = consumer
        self._engine = engine
        self._limits = limits
        self._settings = settings
        self._clock = clock
        self._in_flight: dict[str, _InFlight] = {}
        self._outbox: list[_Outgoing] = []
        self._to_finish: list[str] = []
        self._backoff_s = 0.0
        self._redis_retry_at = 0.0
        self._group_missing = False

    @property
    def has_work(self) -> bool:
        """Anything running or waiting, or replies and acknowledgements not yet through to Redis."""
        return bool(self._in_flight or self._outbox or self._to_finish or self._engine.has_work)

    @property
    def generating(self) -> bool:
        return self._engine.has_work

    @property
    def redis_wait_s(self) -> float:
        """Seconds until Redis calls are retried (0 when they are not backing off)."""
        return max(0.0, self._redis_retry_at - self._clock())

    def _redis(self, what: str, call: Callable, *args, **kwargs):
        """Run one Redis call, or skip it while backing off; _FAILED when it did not happen."""
        if self._clock() < self._redis_retry_at:
            return _FAILED
        try:
            result = call(*args, **kwargs)
        except RedisError as exc:
            # A Redis restarted without its data has lost the consumer group: create it again before reading.
            self._group_missing = isinstance(exc, ResponseError) and "NOGROUP" in str(exc)
            self._backoff_s = min(REDIS_BACKOFF_MAX_S, max(REDIS_BACKOFF_MIN_S, self._backoff_s * 2))
            self._redis_retry_at = self._clock() + self._backoff_s
            log.warning("model %s: Redis %s failed (%s); retrying in %.1f s", self.model, what, exc, self._backoff_s)
            return _FAILED
        if self._backoff_s:
            log.info("model %s: Redis answers again", self.model)
            self._backoff_s = 0.0
        return result

    def warm_up(self) -> None:
        """Generate two tokens before the model is announced.

        A model the engine cannot run (cache layers it cannot pad and merge,
        a broken device) then fails at start-up with a message saying so,
        not with INTERNAL on every request.
        """
        started = self._clock()
        self._engine.add(GenerationRequest("warm-up", [0], SamplingOptions(max_new_tokens=2, ignore_eos=True)))
        while self._engine.has_work:
            for event in self._engine.step():
                if isinstance(event, RequestFailed):
                    raise ModelLoadError(
                        f"model {self.model!r} loaded but cannot generate with engine "
                        f"{self._settings.engine!r}: {event.message}"
                    )
        log.info("model %s: warm-up generation passed in %.0f ms", self.model, (self._clock() - started) * 1000)

    def start(self) -> bool:
        """Create the consumer group and announce this worker; False when Redis could not be reached."""
        if self._redis("group creation", self._consumer.ensure_group) is _FAILED:
            return False
        return self.heartbeat()

    def heartbeat(self) -> bool:
        return self._redis("heartbeat", self._consumer.heartbeat) is not _FAILED

    def leave(self) -> None:
        self._redis("leave", self._consumer.leave)

    def read_new(self, block_ms: int | None) -> None:
        """Take new work only while the engine has free rows, so the rest waits in Redis for any worker."""
        room = self._engine.free_rows
        if room <= 0:
            return
        if self._group_missing and self._redis("group creation", self._consumer.ensure_group) is _FAILED:
            return
        self._group_missing = False
        items = self._redis("read", self._consumer.read, room, block_ms)
        if items is _FAILED:
            return
        for entry_id, item in items:
            self._begin(entry_id, item)

    def _begin(self, entry_id: str, item: queue_pb2.WorkItem) -> None:
        if item.deadline_unix_ms and now_ms() >= item.deadline_unix_ms:
            log.info("model %s: request %s expired in the queue; not started", self.model, item.request_id)
            message = "the request's deadline passed while it waited in the queue; it was not started"
            self._refuse(entry_id, item.request_id, grpc.StatusCode.DEADLINE_EXCEEDED, message)
            return
        if item.request_id in self._in_flight:
            # Its reply stream belongs to the running request: acknowledge the duplicate without a word.
            log.warning("model %s: dropping a second work item for running request %s", self.model, item.request_id)
            self._to_finish.append(entry_id)
            return
        try:
            request = request_from_work_item(item, self._limits)
        except InvalidArgument as exc:
            log.info("model %s: refusing request %s: %s", self.model, item.request_id, exc.message)
            self._refuse(entry_id, item.request_id, exc.code, exc.message)
            return
        self._engine.add(request)
        reply = ReplyBuffer(
            item.request_id,
            request.sampling.num_return_sequences,
            flush_tokens=self._settings.flush_tokens,
            flush_interval_s=self._settings.flush_interval_ms / 1000,
            now=self._clock(),
        )
        self._in_flight[item.request_id] = _InFlight(entry_id, reply, item.deadline_unix_ms)

    def _refuse(self, entry_id: str, request_id: str, code: grpc.StatusCode, message: str) -> None:
        self._outbox.append(_Outgoing(request_id, error_chunk(code, message), entry_id))

    def step(self) -> None:
        """Cancel what was cancelled, run one engine step, then publish due chunks and acknowledge finished entries."""
        if self._in_flight:
            self._cancel_stopped()
        if self._engine.has_work:
            for event in self._engine.step():
                in_flight = self._in_flight.get(event.request_id)
                if in_flight is None:
                    continue
                if isinstance(event, RequestFailed):
                    in_flight.reply.fail(grpc.StatusCode.INTERNAL, INTERNAL_ERROR_MESSAGE)
                else:
                    in_flight.reply.add(event)
        self._collect_due_chunks()
        self._flush()

    def _cancel_stopped(self) -> None:
        """Pass raised cancel flags (one Redis round trip) and passed deadlines on to the engine.

        A request past its deadline is cancelled like any other: its reader
        has stopped waiting, so its rows are better spent on someone else.
        """
        flags = self._redis("cancel check", self._consumer.cancelled, self._in_flight)
        if flags is not _FAILED:
            for request_id, indexes in flags.items():
                self._engine.cancel(request_id, indexes)
        now = now_ms()
        for request_id, in_flight in self._in_flight.items():
            if in_flight.deadline_unix_ms and now >= in_flight.deadline_unix_ms and not in_flight.expired:
                in_flight.expired = True
                self._engine.cancel(request_id, None)

    def _collect_due_chunks(self) -> None:
        now = self._clock()
        for request_id, in_flight in list(self._in_flight.items()):
            reply = in_flight.reply
            if not reply.due(now):
                continue
            final = reply.done
            self._outbox.append(_Outgoing(request_id, reply.take(now), in_flight.entry_id if final else None))
            if final:
                del self._in_flight[request_id]

    def _flush(self) -> None:
        if self._outbox:
            published = self._redis(
                "publish", self._consumer.publish, [(out.request_id, out.chunk) for out in self._outbox]
            )
            if published is _FAILED:
                return
            self._to_finish.extend(out.final_entry_id for out in self._outbox if out.final_entry_id is not None)
            self._outbox = []
        if self._to_finish and self._redis("acknowledge", self._consumer.finish, self._to_finish) is not _FAILED:
            self._to_finish = []


def create_lane(loaded: LoadedModel, client: redis.Redis, settings: WorkerSettings) -> ModelLane:
    """A lane for a loaded model: a consumer on its request stream and the configured engine around it."""
    consumer = WorkConsumer(
        client, Keys(settings.key_prefix), loaded.name, settings.worker_id, key_ttl_s=settings.key_ttl_s
    )
    engine = create_engine(
        settings.engine,
        loaded.model,
        max_batch_size=settings.max_batch_size,
        prefill_tokens_per_step=settings.prefill_tokens_per_step,
        vocab_size=loaded.output_vocab_size,
        device=loaded.device,
    )
    limits = ModelLimits(loaded.name, loaded.input_vocab_size, loaded.context_length, settings.max_batch_size)
    return ModelLane(consumer, engine, limits, settings)


class Worker:
    """Steps its lanes in turn until stopped, then drains: see ``run``."""

    def __init__(
        self, lanes: Sequence[ModelLane], settings: WorkerSettings, clock: Callable[[], float] = time.monotonic
    ):
        self._lanes = list(lanes)
        self._settings = settings
        self._clock = clock

    def run(self, stop: threading.Event, abort: threading.Event | None = None) -> None:
        """Serve until ``stop`` is set; then read nothing new and give in-flight work drain_timeout_s to finish.

        ``abort`` (e.g. a second Ctrl-C) ends the drain early. Whatever is
        unfinished then stays unacknowledged, for another worker to claim.
        """
        abort = abort or threading.Event()
        if not self._start(stop):
            return
        last_heartbeat = self._clock()
        drain_until: float | None = None
        while True:
            if stop.is_set() and drain_until is None:
                drain_until = self._clock() + self._settings.drain_timeout_s
                busy = sum(lane.has_work for lane in self._lanes)
                log.info(
                    "stopping: reading no new work; draining %d busy model(s) for up to %.0f s",
                    busy,
                    self._settings.drain_timeout_s,
                )
                # Leave at once: gateways stop sending work here while what is in flight finishes.
                for lane in self._lanes:
                    lane.leave()
            if drain_until is not None:
                if not any(lane.has_work for lane in self._lanes):
                    break
                if abort.is_set() or self._clock() >= drain_until:
                    log.warning("drain ended with work unfinished; its queue entries stay pending for another worker")
                    break
            # Block on the queue only when there is nothing else to do, and share the wait between the lanes.
            block_ms = max(1, self._settings.idle_block_ms // len(self._lanes))
            idle = not any(lane.has_work for lane in self._lanes)
            for lane in self._lanes:
                if drain_until is None:
                    lane.read_new(block_ms if idle else None)
                lane.step()
            if drain_until is None and self._clock() - last_heartbeat >= self._settings.heartbeat_interval_s:
                for lane in self._lanes:
                    lane.heartbeat()
                last_heartbeat = self._clock()
            self._pause_while_redis_is_away(stop if drain_until is None else abort)
        for lane in self._lanes:
            lane.leave()
        log.info("stopped")

    def _start(self, stop: threading.Event) -> bool:
        """Create the consumer groups and send the first heartbeats (the readiness signal).

        Retries until Redis answers or ``stop`` is set (then False).
        """
        pending = list(self._lanes)
        while pending:
            pending = [lane for lane in pending if not lane.start()]
            if pending and stop.wait(min(lane.redis_wait_s for lane in pending) or REDIS_BACKOFF_MIN_S):
                return False
        log.info("serving %s as %s", ", ".join(lane.model for lane in self._lanes), self._settings.worker_id)
        return True

    def _pause_while_redis_is_away(self, interrupt: threading.Event) -> None:
        """With nothing to generate and Redis backing off in every lane, sleep rather than spin."""
        if any(lane.generating for lane in self._lanes):
            return
        waits = [lane.redis_wait_s for lane in self._lanes]
        if all(wait > 0 for wait in waits):
            interrupt.wait(min(waits))
