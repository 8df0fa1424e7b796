"""Domain errors and the one place they become gRPC status codes.

Domain code raises these; servicer methods are wrapped with ``grpc_errors``,
which aborts the call with the precise code and the message for a person.
Anything else is our bug: logged with its traceback, sent as INTERNAL
without one.
"""

from __future__ import annotations

import functools
import inspect
import logging

import grpc

log = logging.getLogger(__name__)


class PipeserveError(Exception):
    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(PipeserveError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(PipeserveError):
    code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(PipeserveError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(PipeserveError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(PipeserveError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(PipeserveError):
    code = grpc.StatusCode.CANCELLED


class StatusError(PipeserveError):
    """An error that already carries a status code (from a worker or a downstream call)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def status_code_from_int(value: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code
    return grpc.StatusCode.UNKNOWN


def grpc_errors(method):
    """Wrap a grpc.aio servicer method (coroutine or async generator) with the error mapping."""

    async def _abort(context: grpc.aio.ServicerContext, exc: BaseException):
        if isinstance(exc, PipeserveError):
            await context.abort(exc.code, exc.message)
        if isinstance(exc, grpc.aio.AioRpcError):
            # A downstream service already chose a precise status: pass it through.
            await context.abort(exc.code(), exc.details() or "")
        log.exception("unhandled error in %s", method.__qualname__, exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error; the server logged the details")

    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(self, request, context):
            try:
                async for item in method(self, request, context):
                    yield item
            except Exception as exc:
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                await _abort(context, exc)

        return stream_wrapper

    @functools.wraps(method)
    async def unary_wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await _abort(context, exc)

    return unary_wrapper
