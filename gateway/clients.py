"""The gateway's client of the tokenizer service, and the edge where public messages become internal ones."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

import grpc

from gateway.deadline import Deadline
from pipeserve.call_context import outgoing_call_context
from pipeserve.errors import Unavailable
from pipeserve.internal.v1 import tokenizer_pb2, tokenizer_pb2_grpc
from pipeserve.v1 import models_pb2, pipelines_pb2

# round_robin spreads calls over every address the target resolves to: with a
# dns:/// target naming a headless Service, each tokenizer pod takes its
# share without a proxy (pick_first, the default, would pin one pod).
ROUND_ROBIN_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
# Pings on an active call notice a tokenizer pod that vanished without a FIN
# (node loss) in tens of seconds rather than at the request's deadline.
KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000
# Token strings of a large prompt can be several times its size in bytes.
INTERNAL_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Every call carries the request id and trace context to the tokenizer service.
CALL_CONTEXT = outgoing_call_context()
# A call that fails with UNAVAILABLE (its tokenizer died, or the connection to
# it broke) is tried again, and the round-robin channel sends the next attempt
# to another tokenizer. Few attempts, briefly spaced, so that a tokenizer
# service that is down altogether still fails fast.
TOKENIZER_ATTEMPTS = 3
RETRY_BACKOFF_S = 0.05
# RunTask is tried twice: a second try after a tokenizer died costs a whole forward again.
RUN_TASK_ATTEMPTS = 2

log = logging.getLogger(__name__)
Reply = TypeVar("Reply")


def channel_options() -> list[tuple[str, object]]:
    return [
        ("grpc.service_config", ROUND_ROBIN_SERVICE_CONFIG),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.max_receive_message_length", INTERNAL_MAX_MESSAGE_BYTES),
    ]


def _copy_input(source, target) -> None:
    """Copy the `input` oneof (prompt or chat) between messages that share its shape."""
    if source.WhichOneof("input") == "prompt":
        target.prompt = source.prompt
    else:
        target.chat.CopyFrom(source.chat)


class TokenizerClient:
    """One grpc.aio channel to the tokenizer service; every call bounded by the request's deadline.

    Calls fail fast (no wait_for_ready) when no tokenizer is reachable, so a
    client sees UNAVAILABLE at once instead of waiting out its deadline; a
    call that meets UNAVAILABLE is retried up to TOKENIZER_ATTEMPTS times
    (StreamText resumes where it broke).
    """

    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None = None):
        """credentials: TLS (pipeserve.tls.channel_credentials); None dials in plaintext."""
        self._target = target
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=channel_options(), interceptors=CALL_CONTEXT)
        else:
            self._channel = grpc.aio.secure_channel(
                target, credentials, options=channel_options(), interceptors=CALL_CONTEXT
            )
        self._stub = tokenizer_pb2_grpc.TokenizerServiceStub(self._channel)

    async def preprocess(self, request, deadline: Deadline) -> tokenizer_pb2.PreprocessResponse:
        """Preprocess a GenerateRequest or GenerateStreamRequest (they share their fields)."""
        internal = tokenizer_pb2.PreprocessRequest(
            model=request.model,
            parameters=request.parameters,
            task=request.task,
            src_lang=request.src_lang,
            tgt_lang=request.tgt_lang,
        )
        _copy_input(request, internal)
        return await self._unary(
            deadline, "preprocessing", lambda timeout: self._stub.Preprocess(internal, timeout=timeout)
        )

    async def tokenize(self, request: models_pb2.TokenizeRequest, deadline: Deadline) -> models_pb2.TokenizeResponse:
        internal = tokenizer_pb2.TokenizeRequest(model=request.model)
        _copy_input(request, internal)
        reply = await self._unary(
            deadline, "tokenization", lambda timeout: self._stub.Tokenize(internal, timeout=timeout)
        )
        return models_pb2.TokenizeResponse(token_ids=reply.token_ids, tokens=reply.tokens, text=reply.text)

    async def describe_models(self, deadline: Deadline) -> list[models_pb2.ModelInfo]:
        reply = await self._unary(
            deadline,
            "describing the models",
            lambda timeout: self._stub.DescribeModels(tokenizer_pb2.DescribeModelsRequest(), timeout=timeout),
        )
        return list(reply.models)

    async def run_task(
        self, request_id: str, task: str, request: pipelines_pb2.PipelineRequest, deadline: Deadline
    ) -> pipelines_pb2.PipelineResponse:
        """Run a forward-only pipeline request on a tokenizer; once more on another if that one is unavailable.

        The retry is safe because a forward is idempotent, and it runs as a
        new request (its own id, reply stream and cancel flag): the first
        attempt's tokenizer cancelled its work item, or died, leaving it to
        run into a reply stream that expires unread.
        """
        attempt = 1
        while True:
            attempt_id = request_id if attempt == 1 else f"{request_id}-{attempt}"
            internal = tokenizer_pb2.RunTaskRequest(request_id=attempt_id, task=task, request=request)
            try:
                with self._downstream_errors(deadline, task):
                    reply = await self._stub.RunTask(internal, timeout=deadline.timeout_for(task))
                return reply.response
            except Unavailable as exc:
                if attempt == RUN_TASK_ATTEMPTS:
                    raise
                reason = exc
            await self._back_off(deadline, task, attempt, reason, attempts=RUN_TASK_ATTEMPTS)
            attempt += 1

    async def stream_text(
        self, request: tokenizer_pb2.StreamTextRequest, deadline: Deadline
    ) -> AsyncIterator[tokenizer_pb2.StreamTextResponse]:
        """Relay StreamText; leaving early (client gone, error) cancels the call so the tokenizer stops reading.

        A stream that breaks with UNAVAILABLE is opened again, resuming after
        the messages already relayed: the tokenizer that takes it over
        rebuilds the text from the reply stream, so the client sees neither a
        gap nor a repeat. Attempts count from the last message that got through.
        """
        relayed = 0
        failed_attempts = 0
        while True:
            attempt = tokenizer_pb2.StreamTextRequest()
            attempt.CopyFrom(request)
            attempt.resume_after_messages = relayed
            call = self._stub.StreamText(attempt, timeout=deadline.timeout_for("generation"))
            try:
                with self._downstream_errors(deadline, "generation"):
                    async for response in call:
                        relayed += 1
                        failed_attempts = 0
                        yield response
                return
            except Unavailable as exc:
                failed_attempts += 1
                if failed_attempts >= TOKENIZER_ATTEMPTS:
                    raise
                reason = exc
            finally:
                call.cancel()
            await self._back_off(deadline, "generation", failed_attempts, reason, relayed)

    async def close(self) -> None:
        await self._channel.close()

    async def _unary(self, deadline: Deadline, step: str, call: Callable[[float], Awaitable[Reply]]) -> Reply:
        """Run one unary call (given its timeout), again on UNAVAILABLE: it is idempotent."""
        attempt = 1
        while True:
            try:
                with self._downstream_errors(deadline, step):
                    return await call(deadline.timeout_for(step))
            except Unavailable as exc:
                if attempt == TOKENIZER_ATTEMPTS:
                    raise
                reason = exc
            await self._back_off(deadline, step, attempt, reason)
            attempt += 1

    async def _back_off(
        self,
        deadline: Deadline,
        step: str,
        attempt: int,
        reason: Unavailable,
        relayed: int = 0,
        attempts: int = TOKENIZER_ATTEMPTS,
    ) -> None:
        delay = min(RETRY_BACKOFF_S * 2 ** (attempt - 1), deadline.timeout_for(step))
        log.warning(
            "unavailable during %s (attempt %d of %d, %d messages relayed): %s; retrying",
            step,
            attempt,
            attempts,
            relayed,
            reason,
        )
        await asyncio.sleep(delay)

    @contextlib.contextmanager
    def _downstream_errors(self, deadline: Deadline, step: str) -> Iterator[None]:
        """Say which deadline or which service failed; other statuses pass through as the tokenizer chose them."""
        try:
            yield
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and deadline.expired():
                raise deadline.exceeded(step) from exc
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                raise Unavailable(f"tokenizer service ({self._target}): {exc.details()}") from exc
            raise
