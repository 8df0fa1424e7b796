"""The model worker's loop: Redis queue in, engine steps, chunked replies out.

One process may serve several models: each gets a ``ModelLane`` (its own
WorkConsumer, engine and replies in flight) and the loop steps the lanes in
turn. Only this thread touches the engines; besides it, one keeper thread
keeps the queue entries in flight from looking abandoned however long a
step takes (``ModelLane.keep_ownership``), and signal handlers just set
events.

Redis being away is not fatal: every Redis call of a lane backs off and is
retried later, the engine keeps generating meanwhile, and chunks not yet
published stay in the lane's outbox (re-publishing one is harmless: readers
drop sequence numbers they have seen). An entry is acknowledged only after
its final chunk was published, so what a dying worker leaves behind is
still pending in the consumer group: a live worker takes it over
(``ModelLane.reclaim``, pipeserve.queue.reclaim) and resumes it from the
tokens its reply stream already holds (model_service.resume).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
import redis
from redis.exceptions import RedisError, ResponseError

from model_service.config import WorkerSettings
from model_service.engine import create_engine
from model_service.engine.beam_search import BeamSearchRunner
from model_service.engine.forward_batcher import ForwardBatcher, ForwardDone
from model_service.engine.interface import (
    GenerationEngine,
    GenerationRequest,
    RequestFailed,
    SamplingOptions,
    SequenceUpdate,
)
from model_service.loader import LoadedModel, ModelLoadError
from model_service.replies import ReplyBuffer, error_chunk
from model_service.resume import PublishedReply, continuation_requests
from model_service.telemetry import RequestTelemetry, StepMetrics, count_refusal
from model_service.work_items import ModelLimits, forward_request_from_work_item, request_from_work_item
from pipeserve.errors import InvalidArgument
from pipeserve.internal.v1 import queue_pb2
from pipeserve.queue.consumer import WorkConsumer, read_any
from pipeserve.queue.forward_rows import forward_result
from pipeserve.queue.keys import Keys
from pipeserve.queue.protocol import now_ms
from pipeserve.queue.reclaim import ClaimedEntry, PendingWork
from pipeserve.request_context import bound_request_id
from pipeserve.tasks import FORWARD_TASKS

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
    telemetry: RequestTelemetry
    expired: bool = False
    """Cancelled because its deadline passed (so it is cancelled once)."""
    engine_ids: dict[str, int] = field(default_factory=dict)
    """A resumed request's engine requests, one per open sequence: engine id -> sequence index.
    Empty for a request started here, which the engine knows by its own id."""


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
        pending: PendingWork,
        engine: GenerationEngine,
        limits: ModelLimits,
        settings: WorkerSettings,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.model = limits.model
        self._consumer = consumer
        self._pending = pending
        self._engine = engine
        self._limits = limits
        self._settings = settings
        self._clock = clock
        self._in_flight: dict[str, _InFlight] = {}
        self._routes: dict[str, tuple[str, int]] = {}
        """Engine id of a resumed sequence -> (request id, sequence index)."""
        self._owned: dict[str, str] = {}
        """Entry id -> request id of each queue entry this lane holds; replaced (never changed) after each
        loop call, so the keeper thread can read it at any time."""
        self._lost: set[str] = set()
        self._lost_lock = threading.Lock()
        self._outbox: list[_Outgoing] = []
        self._to_finish: list[str] = []
        self._ended: list[str] = []
        """Requests whose cancel flags go with their entries' acknowledgement: the flags have done their job."""
        self._backoff_s = 0.0
        self._redis_retry_at = 0.0
        self._group_missing = False
        self._step_metrics = StepMetrics(self.model)

    @property
    def has_work(self) -> bool:
        """Anything running or waiting, or replies and acknowledgements not yet through to Redis."""
        return bool(self._in_flight or self._outbox or self._to_finish or self._engine.has_work)

    @property
    def idle_for_s(self) -> float | None:
        """How long this lane may wait on the queue before it must step again; None: as long as it likes.

        0 while it generates or has replies to send; for forward-only work,
        the time until its waiting rows are due (max_wait_ms); while only a
        beam search runs (on its own thread), a short poll interval, so its
        result goes out soon after it is ready without the loop spinning.
        """
        if self._outbox or self._to_finish:
            return 0.0
        if isinstance(self._engine, ForwardBatcher | BeamSearchRunner):
            return self._engine.due_in_s
        return 0.0 if self.has_work else None

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
        """Generate two tokens (forward-only models: run one forward) before the model is announced.

        A model the engine cannot run (cache layers it cannot pad and merge,
        a broken device) then fails at start-up with a message saying so,
        not with INTERNAL on every request.
        """
        started = self._clock()
        if isinstance(self._engine, ForwardBatcher):
            try:
                self._engine.warm_up()
            except Exception as exc:
                raise ModelLoadError(f"model {self.model!r} loaded but its forward fails: {exc}") from exc
            log.info("model %s: warm-up forward passed in %.0f ms", self.model, (self._clock() - started) * 1000)
            return
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

    def close(self) -> None:
        """Release the engine (its memory, and threads that would keep the process alive)."""
        self._engine.close()

    def read_new(self, block_ms: int | None) -> None:
        """Take new work only while the engine has free rows, so the rest waits in Redis for any worker."""
        room = self._engine.free_rows
        if room <= 0:
            return
        if self._group_missing and self._redis("group creation", self._consumer.ensure_group) is _FAILED:
            return
        self._group_missing = False
        items = self._redis("read", self._consumer.read, room, block_ms)
        if items is not _FAILED:
            self.accept(items)

    @property
    def consumer(self) -> WorkConsumer | None:
        """The queue consumer, for a read shared with other lanes; None while Redis calls back off or the
        consumer group must be created again (read_new handles those)."""
        if self._group_missing or self.redis_wait_s > 0:
            return None
        return self._consumer

    def accept(self, items: list[tuple[str, queue_pb2.WorkItem]]) -> None:
        """Start work items read from this lane's stream."""
        for entry_id, item in items:
            # Every log line about the item names its request.
            with bound_request_id(item.request_id):
                self._begin(entry_id, item)
        self._note_owned()

    def _begin(self, entry_id: str, item: queue_pb2.WorkItem, published: PublishedReply | None = None) -> None:
        """Start a work item: a new one, or one taken over from a dead worker (``published`` is its resume point)."""
        published = published or PublishedReply()
        if item.deadline_unix_ms and now_ms() >= item.deadline_unix_ms:
            log.info("model %s: request %s expired in the queue; not started", self.model, item.request_id)
            message = "the request's deadline passed while it waited in the queue; it was not started"
            self._refuse(
                entry_id, item.request_id, grpc.StatusCode.DEADLINE_EXCEEDED, message, published.next_sequence_number
            )
            return
        if item.request_id in self._in_flight:
            # Its reply stream belongs to the running request: acknowledge the duplicate without a word.
            log.warning("model %s: dropping a second work item for running request %s", self.model, item.request_id)
            self._to_finish.append(entry_id)
            return
        if item.HasField("forward"):
            self._begin_forward(entry_id, item, published)
            return
        try:
            request = request_from_work_item(item, self._limits)
            continuations = (
                continuation_requests(request, published, encoder_decoder=self._limits.encoder_decoder)
                if published.started
                else {}
            )
            if not published.started:
                self._engine.add(request)
            # Continuations share one final length (prompt + max_new_tokens) and n=1: the engine takes all or none.
            for _index, continuation in continuations.values():
                self._engine.add(continuation)
        except InvalidArgument as exc:
            log.info("model %s: refusing request %s: %s", self.model, item.request_id, exc.message)
            self._refuse(entry_id, item.request_id, exc.code, exc.message, published.next_sequence_number)
            return
        if not published.started:
            self._track(entry_id, item, self._reply_buffer(item.request_id, request.sampling.num_return_sequences))
            return
        if not continuations:
            # Its final chunk went out before its worker died: only the acknowledgement is missing.
            self._to_finish.append(entry_id)
            self._ended.append(item.request_id)
            return
        for engine_id, (index, _continuation) in continuations.items():
            self._routes[engine_id] = (item.request_id, index)
        reply = self._reply_buffer(
            item.request_id,
            request.sampling.num_return_sequences,
            open_indexes=[index for index, _ in continuations.values()],
            next_sequence_number=published.next_sequence_number,
        )
        self._track(entry_id, item, reply, {engine_id: index for engine_id, (index, _) in continuations.items()})

    def _reply_buffer(self, request_id: str, sequences: int, **resume_point) -> ReplyBuffer:
        return ReplyBuffer(
            request_id,
            sequences,
            flush_tokens=self._settings.flush_tokens,
            flush_interval_s=self._settings.flush_interval_ms / 1000,
            now=self._clock(),
            **resume_point,
        )

    def _begin_forward(self, entry_id: str, item: queue_pb2.WorkItem, published: PublishedReply) -> None:
        """Queue a forward-only item for the next batch; one taken over whose outputs are out is only acknowledged."""
        if published.started:
            self._to_finish.append(entry_id)
            self._ended.append(item.request_id)
            return
        try:
            request = forward_request_from_work_item(item, self._limits)
        except InvalidArgument as exc:
            log.info("model %s: refusing request %s: %s", self.model, item.request_id, exc.message)
            self._refuse(entry_id, item.request_id, exc.code, exc.message)
            return
        self._engine.add(request)
        self._track(entry_id, item, self._reply_buffer(item.request_id, 1))

    def _track(
        self, entry_id: str, item: queue_pb2.WorkItem, reply: ReplyBuffer, engine_ids: dict[str, int] | None = None
    ) -> None:
        telemetry = RequestTelemetry(self.model, item)
        self._in_flight[item.request_id] = _InFlight(
            entry_id, reply, item.deadline_unix_ms, telemetry, engine_ids=engine_ids or {}
        )

    def _refuse(
        self, entry_id: str, request_id: str, code: grpc.StatusCode, message: str, sequence_number: int = 0
    ) -> None:
        count_refusal(self.model, code)
        self._outbox.append(_Outgoing(request_id, error_chunk(code, message, sequence_number), entry_id))

    def reclaim(self) -> None:
        """Take over what dead workers left pending, as many requests as rows are free (once per heartbeat).

        Each is resumed from its reply stream; one delivered more than
        max_deliveries times is dead-lettered instead.
        """
        room = self._engine.free_rows
        if room <= 0:
            return
        claimed = self._redis("claim", self._pending.claim, room)
        if claimed is _FAILED:
            return
        for entry in claimed:
            running = self._in_flight.get(entry.item.request_id)
            if running is not None and running.entry_id == entry.entry_id:
                continue  # this worker's own entry, idle while a step stalled: it is still running here
            with bound_request_id(entry.item.request_id):
                chunks = self._redis("reply read", self._pending.published, entry.item.request_id)
                if chunks is _FAILED:
                    # Still pending under this worker's name: it is claimed again once idle (one more delivery).
                    continue
                published = PublishedReply.from_chunks(chunks)
                if entry.deliveries > self._pending.max_deliveries:
                    self._dead_letter(entry, published)
                    continue
                log.warning(
                    "model %s: taking over request %s from a worker that stopped (delivery %d); "
                    "resuming after %d published chunks",
                    self.model,
                    entry.item.request_id,
                    entry.deliveries,
                    published.next_sequence_number,
                )
                self._begin(entry.entry_id, entry.item, published)
        self._note_owned()

    def _dead_letter(self, entry: ClaimedEntry, published: PublishedReply) -> None:
        workers = entry.deliveries - 1
        reason = (
            f"delivered {entry.deliveries} times; each of the {workers} workers that took it stopped before it was done"
        )
        message = (
            f"the request failed on {workers} model workers in turn (each stopped while generating it), "
            "so it was set aside instead of being tried on another; retry it, and report it if it fails again"
        )
        reply = error_chunk(grpc.StatusCode.INTERNAL, message, published.next_sequence_number)
        if self._redis("dead-letter", self._pending.dead_letter, entry, reason, reply) is _FAILED:
            return
        count_refusal(self.model, grpc.StatusCode.INTERNAL)
        log.error(
            "model %s: request %s took down %d workers; moved to the dead-letter stream",
            self.model,
            entry.item.request_id,
            workers,
        )

    def step(self) -> None:
        """Cancel what was cancelled, run one engine step, then publish due chunks and acknowledge finished entries."""
        self._drop_lost()
        if self._in_flight:
            self._cancel_stopped()
        if self._engine.has_work:
            with self._step_metrics.measure(self._engine):
                events = self._engine.step()
            for event in events:
                request_id, index = self._routes.get(event.request_id, (event.request_id, None))
                in_flight = self._in_flight.get(request_id)
                if in_flight is None:
                    continue
                if isinstance(event, ForwardDone):
                    in_flight.reply.complete(forward_result(event.outputs))
                    continue
                if index is not None and isinstance(event, SequenceUpdate):
                    event = SequenceUpdate(request_id, index, event.token_ids, event.finish_reason)
                in_flight.telemetry.record(event)
                if isinstance(event, RequestFailed):
                    in_flight.reply.fail(grpc.StatusCode.INTERNAL, INTERNAL_ERROR_MESSAGE)
                    if in_flight.engine_ids:
                        self._cancel(request_id, None)  # the resumed request's other sequences
                else:
                    in_flight.reply.add(event)
        self._collect_due_chunks()
        self._flush()
        self._note_owned()

    def _cancel(self, request_id: str, indexes: set[int] | None) -> None:
        """Cancel sequences of a request in flight, whichever engine requests run them."""
        engine_ids = self._in_flight[request_id].engine_ids
        if not engine_ids:
            self._engine.cancel(request_id, indexes)
            return
        for engine_id, index in engine_ids.items():
            if indexes is None or index in indexes:
                self._engine.cancel(engine_id, None)

    def keep_ownership(self) -> None:
        """Keep this lane's queue entries from looking abandoned (from the Worker's keeper thread).

        A thread of its own does it so that an engine step longer than
        claim_idle_ms cannot get live requests taken over. Entries found lost
        (taken over while this process was frozen or cut off from Redis for
        that long, or gone with a Redis that restarted empty) are dropped by
        the loop at its next step, before it could write into their replies.
        """
        owned = list(self._owned)
        if not owned:
            return
        try:
            lost = self._pending.keep_owned(owned)
        except RedisError as exc:
            log.warning("model %s: could not refresh this worker's queue entries (%s)", self.model, exc)
            return
        if lost:
            with self._lost_lock:
                self._lost |= lost

    def _note_owned(self) -> None:
        owned = {in_flight.entry_id: request_id for request_id, in_flight in self._in_flight.items()}
        owned.update((out.final_entry_id, out.request_id) for out in self._outbox if out.final_entry_id is not None)
        self._owned = owned

    def _drop_lost(self) -> None:
        with self._lost_lock:
            lost, self._lost = self._lost, set()
        for entry_id in lost:
            # Entries finished since the keeper looked are no longer owned, and not lost.
            if entry_id in self._owned:
                self._drop(self._owned[entry_id])

    def _drop(self, request_id: str) -> None:
        log.warning(
            "model %s: request %s is no longer this worker's (another took it over, or Redis lost it); dropping it",
            self.model,
            request_id,
        )
        if request_id in self._in_flight:
            self._cancel(request_id, None)
            self._forget(request_id)
        self._outbox = [out for out in self._outbox if out.request_id != request_id]

    def _forget(self, request_id: str) -> None:
        for engine_id in self._in_flight.pop(request_id).engine_ids:
            del self._routes[engine_id]

    def _cancel_stopped(self) -> None:
        """Pass raised cancel flags (one Redis round trip) and passed deadlines on to the engine.

        A request past its deadline is cancelled like any other: its reader
        has stopped waiting, so its rows are better spent on someone else.
        """
        flags = self._redis("cancel check", self._consumer.cancelled, self._in_flight)
        if flags is not _FAILED:
            for request_id, indexes in flags.items():
                self._cancel(request_id, indexes)
        now = now_ms()
        for request_id, in_flight in self._in_flight.items():
            if in_flight.deadline_unix_ms and now >= in_flight.deadline_unix_ms and not in_flight.expired:
                in_flight.expired = True
                self._cancel(request_id, None)

    def _collect_due_chunks(self) -> None:
        now = self._clock()
        for request_id, in_flight in list(self._in_flight.items()):
            reply = in_flight.reply
            if not reply.due(now):
                continue
            final = reply.done
            chunk = reply.take(now)
            if final and not (chunk.deltas or chunk.HasField("error") or chunk.HasField("forward")):
                # Cancelled to the last sequence: no reader is left for a last chunk, and none recreates the stream.
                self._to_finish.append(in_flight.entry_id)
                self._ended.append(request_id)
            else:
                self._outbox.append(_Outgoing(request_id, chunk, in_flight.entry_id if final else None))
            if final:
                in_flight.telemetry.finished(chunk)
                self._forget(request_id)

    def _flush(self) -> None:
        if self._outbox:
            published = self._redis(
                "publish", self._consumer.publish, [(out.request_id, out.chunk) for out in self._outbox]
            )
            if published is _FAILED:
                return
            finals = [out for out in self._outbox if out.final_entry_id is not None]
            self._to_finish.extend(out.final_entry_id for out in finals)
            self._ended.extend(out.request_id for out in finals)
            self._outbox = []
        if (
            self._to_finish
            and self._redis("acknowledge", self._consumer.finish, self._to_finish, self._ended) is not _FAILED
        ):
            self._to_finish, self._ended = [], []


def create_lane(loaded: LoadedModel, client: redis.Redis, settings: WorkerSettings) -> ModelLane:
    """A lane for a loaded model: a consumer on its request stream and the configured engine around it.

    Generation models get the generation engine, with beam searches beside it; forward-only models
    (classification, fill-mask, embeddings, ...) the dynamic batcher.
    """
    keys = Keys(settings.key_prefix)
    consumer = WorkConsumer(client, keys, loaded.name, settings.worker_id, key_ttl_s=settings.key_ttl_s)
    pending = PendingWork(
        client,
        keys,
        loaded.name,
        settings.worker_id,
        key_ttl_s=settings.key_ttl_s,
        claim_idle_ms=settings.claim_idle_ms,
        max_deliveries=settings.max_deliveries,
    )
    if loaded.task in FORWARD_TASKS:
        engine = ForwardBatcher(
            loaded.model,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            pad_token_id=loaded.pad_token_id,
            device=loaded.device,
        )
    else:
        batch = create_engine(
            settings.engine_settings(), loaded.model, vocab_size=loaded.output_vocab_size, device=loaded.device
        )
        engine = BeamSearchRunner(batch, loaded.model, device=loaded.device)
    limits = ModelLimits(
        loaded.name,
        loaded.input_vocab_size,
        loaded.context_length,
        settings.max_batch_size,
        encoder_decoder=bool(getattr(loaded.model.config, "is_encoder_decoder", False)),
    )
    return ModelLane(consumer, pending, engine, limits, settings)


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
        keeper_stop = threading.Event()
        keeper = threading.Thread(
            target=self._keep_ownership, args=(keeper_stop,), name="ownership-keeper", daemon=True
        )
        keeper.start()
        try:
            self._serve(stop, abort)
        finally:
            keeper_stop.set()
            keeper.join()
        for lane in self._lanes:
            lane.leave()
            lane.close()
        log.info("stopped")

    def _keep_ownership(self, stop: threading.Event) -> None:
        """Refresh every lane's queue entries once per heartbeat interval, beside the loop however long its steps."""
        while not stop.wait(self._settings.heartbeat_interval_s):
            for lane in self._lanes:
                lane.keep_ownership()

    def _serve(self, stop: threading.Event, abort: threading.Event) -> None:
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
            # With nothing to do, block on every lane's stream at once. Forward rows waiting for company
            # (max_wait_ms) are waited for here instead: Redis times out a blocked read only at its cron
            # tick (100 ms at the default hz), far coarser than a few milliseconds.
            waits = [lane.idle_for_s for lane in self._lanes]
            if all(wait is None or wait > 0 for wait in waits):
                due = [wait for wait in waits if wait is not None]
                if drain_until is not None:
                    # Draining: wait as when serving (a beam search's poll interval), not spin; abort cuts it short.
                    abort.wait(min(due, default=0))
                elif due:
                    stop.wait(min(due))
                else:
                    self._wait_for_work()
            for lane in self._lanes:
                if drain_until is None:
                    lane.read_new(None)
                lane.step()
            if drain_until is None and self._clock() - last_heartbeat >= self._settings.heartbeat_interval_s:
                for lane in self._lanes:
                    lane.heartbeat()
                    lane.reclaim()
                last_heartbeat = self._clock()
            self._pause_while_redis_is_away(stop if drain_until is None else abort)

    def _wait_for_work(self) -> None:
        """Block up to idle_block_ms until any lane's stream has work, and hand it to its lane.

        Lanes whose Redis calls back off (or must recreate their group) are
        left to their own reads; with none left, this waits for the backoff.
        """
        ready = {lane.model: lane for lane in self._lanes if lane.consumer is not None}
        if not ready:
            return
        try:
            items = read_any([lane.consumer for lane in ready.values()], self._settings.idle_block_ms)
        except RedisError as exc:
            log.warning("waiting for work failed (%s); each model reads on its own next", exc)
            return
        for model, model_items in items.items():
            ready[model].accept(model_items)

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
