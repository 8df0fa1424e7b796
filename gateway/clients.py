"""The gateway's client of the tokenizer service, and the edge where public messages become internal ones."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator

import grpc

from gateway.deadline import Deadline
from pipeserve.errors import Unavailable
from pipeserve.internal.v1 import tokenizer_pb2, tokenizer_pb2_grpc
from pipeserve.v1 import models_pb2

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
    client sees UNAVAILABLE at once instead of waiting out its deadline.
    """

    def __init__(self, target: str):
        self._target = target
        self._channel = grpc.aio.insecure_channel(target, options=channel_options())
        self._stub = tokenizer_pb2_grpc.TokenizerServiceStub(self._channel)

    async def preprocess(self, request, deadline: Deadline) -> tokenizer_pb2.PreprocessResponse:
        """Preprocess a GenerateRequest or GenerateStreamRequest (they share their fields)."""
        internal = tokenizer_pb2.PreprocessRequest(model=request.model, parameters=request.parameters)
        _copy_input(request, internal)
        with self._downstream_errors(deadline, "preprocessing"):
            return await self._stub.Preprocess(internal, timeout=deadline.timeout_for("preprocessing"))

    async def tokenize(self, request: models_pb2.TokenizeRequest, deadline: Deadline) -> models_pb2.TokenizeResponse:
        internal = tokenizer_pb2.TokenizeRequest(model=request.model)
        _copy_input(request, internal)
        with self._downstream_errors(deadline, "tokenization"):
            reply = await self._stub.Tokenize(internal, timeout=deadline.timeout_for("tokenization"))
        return models_pb2.TokenizeResponse(token_ids=reply.token_ids, tokens=reply.tokens, text=reply.text)

    async def describe_models(self, deadline: Deadline) -> list[models_pb2.ModelInfo]:
        with self._downstream_errors(deadline, "describing the models"):
            reply = await self._stub.DescribeModels(
                tokenizer_pb2.DescribeModelsRequest(), timeout=deadline.timeout_for("describing the models")
            )
        return list(reply.models)

    async def stream_text(
        self, request: tokenizer_pb2.StreamTextRequest, deadline: Deadline
    ) -> AsyncIterator[tokenizer_pb2.StreamTextResponse]:
        """Relay StreamText; leaving early (client gone, error) cancels the call so the tokenizer stops reading."""
        call = self._stub.StreamText(request, timeout=deadline.timeout_for("generation"))
        try:
            with self._downstream_errors(deadline, "generation"):
                async for response in call:
                    yield response
        finally:
            call.cancel()

    async def close(self) -> None:
        await self._channel.close()

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
