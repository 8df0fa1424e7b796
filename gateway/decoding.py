"""INVALID_ARGUMENT for request bytes that are not a valid message of the method's type.

grpc deserializes a request before any servicer code runs, and an exception
there (protobuf's DecodeError: corrupt wire format, a string field with bad
UTF-8) reaches the client as UNKNOWN with the exception's repr. The caller
sent the bad bytes and can fix them, so the interceptor below makes the
deserializer hand over a marker instead and aborts the call with
INVALID_ARGUMENT before the servicer sees it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable

import grpc
from google.protobuf.message import DecodeError

log = logging.getLogger(__name__)


class _Undecodable:
    """Stands in for a request whose bytes did not parse."""

    __slots__ = ("error",)

    def __init__(self, error: DecodeError):
        self.error = error


def _tolerant(deserializer: Callable[[bytes], object]) -> Callable[[bytes], object]:
    def deserialize(data: bytes) -> object:
        try:
            return deserializer(data)
        except DecodeError as exc:
            return _Undecodable(exc)

    return deserialize


async def _refuse(request: _Undecodable, context: grpc.aio.ServicerContext) -> None:
    log.info("refused undecodable request from %s: %s", context.peer(), request.error)
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"the request is not a valid protobuf message of this method's type ({request.error}); "
        "serialize it with the pipeserve.v1 stubs (string fields must be valid UTF-8)",
    )


async def _checked(requests: AsyncIterator, context: grpc.aio.ServicerContext) -> AsyncIterator:
    async for request in requests:
        if isinstance(request, _Undecodable):
            await _refuse(request, context)
        yield request


def _unary_request(behavior):
    if inspect.isasyncgenfunction(behavior):

        async def checked_stream(request, context):
            if isinstance(request, _Undecodable):
                await _refuse(request, context)
            async for response in behavior(request, context):
                yield response

        return checked_stream

    async def checked(request, context):
        if isinstance(request, _Undecodable):
            await _refuse(request, context)
        return await behavior(request, context)

    return checked


def _streaming_request(behavior):
    if inspect.isasyncgenfunction(behavior):

        async def checked_stream(requests, context):
            async for response in behavior(_checked(requests, context), context):
                yield response

        return checked_stream

    async def checked(requests, context):
        return await behavior(_checked(requests, context), context)

    return checked


class UndecodableRequestInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details: grpc.HandlerCallDetails):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        field = {
            (False, False): "unary_unary",
            (False, True): "unary_stream",
            (True, False): "stream_unary",
            (True, True): "stream_stream",
        }[(handler.request_streaming, handler.response_streaming)]
        wrap = _streaming_request if handler.request_streaming else _unary_request
        return handler._replace(
            request_deserializer=_tolerant(handler.request_deserializer),
            **{field: wrap(getattr(handler, field))},
        )
