"""What one of pipeserve's gRPC calls carries to the next service: the request id and the trace context.

The gateway's channel to the tokenizer service adds both to each call's
metadata (``outgoing_call_context``); the receiving server continues the
trace with a span around the handler and, where the caller is our own
gateway, binds the request id for the handler's log lines
(``IncomingCallContext``). Only pipeserve's own RPCs are wrapped: health
checks and reflection stay untraced, so probes do not flood the traces.
"""

from __future__ import annotations

import contextlib

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from pipeserve import tracing
from pipeserve.request_context import REQUEST_ID_METADATA, bind_request_id, current_request_id

OWN_METHODS_PREFIX = "/pipeserve."


def _with_call_context(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    request_id = current_request_id()
    if request_id and REQUEST_ID_METADATA not in metadata:
        metadata.add(REQUEST_ID_METADATA, request_id)
    carrier: dict[str, str] = {}
    tracing.inject(carrier)
    for key, value in carrier.items():
        metadata.add(key, value)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _OutgoingUnary(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(_with_call_context(client_call_details), request)


class _OutgoingServerStreaming(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(_with_call_context(client_call_details), request)


def outgoing_call_context() -> list[grpc.aio.ClientInterceptor]:
    """Client interceptors putting the bound request id (``x-request-id``) and the trace context on every call.

    One per call type: a channel files each interceptor under the first
    type it is an instance of, so one class for both would miss the streams.
    """
    return [_OutgoingUnary(), _OutgoingServerStreaming()]


class IncomingCallContext(grpc.aio.ServerInterceptor):
    """Server interceptor: a SERVER span per unary or server-streaming pipeserve call, child of the caller's trace.

    ``trust_request_id``: bind the caller's ``x-request-id`` for the
    handler's log lines. Internal services trust the gateway's; the gateway
    assigns its own ids and ignores what a client sends.
    """

    def __init__(self, tracer_name: str, *, trust_request_id: bool):
        self._tracer = trace.get_tracer(tracer_name)
        self._trust_request_id = trust_request_id

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.request_streaming or not method.startswith(OWN_METHODS_PREFIX):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        parent = tracing.extract(metadata)
        request_id = metadata.get(REQUEST_ID_METADATA) if self._trust_request_id else None
        name = method.removeprefix("/")
        service, _, rpc = name.partition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc}
        if request_id:
            attributes["pipeserve.request_id"] = request_id
        tracer = self._tracer

        if handler.response_streaming:
            stream = handler.unary_stream

            # A coroutine writing with context.write, not an async generator: grpc never
            # closes a generator handler whose client left while it waited at a yield, so
            # its cleanup (cancelling downstream calls, ending the span) would wait for the
            # garbage collector and run in another context. Here a cancelled call raises
            # at context.write, in this task, and aclosing closes the handler at once.
            async def traced_stream(request, context):
                bind_request_id(request_id)
                with tracer.start_as_current_span(
                    name, context=parent, kind=SpanKind.SERVER, attributes=attributes
                ) as span:
                    try:
                        async with contextlib.aclosing(stream(request, context)) as responses:
                            async for response in responses:
                                await context.write(response)
                    finally:
                        _record_status(span, context)

            return grpc.unary_stream_rpc_method_handler(
                traced_stream, handler.request_deserializer, handler.response_serializer
            )

        unary = handler.unary_unary

        async def traced_unary(request, context):
            bind_request_id(request_id)
            with tracer.start_as_current_span(
                name, context=parent, kind=SpanKind.SERVER, attributes=attributes
            ) as span:
                try:
                    return await unary(request, context)
                finally:
                    _record_status(span, context)

        return grpc.unary_unary_rpc_method_handler(
            traced_unary, handler.request_deserializer, handler.response_serializer
        )


def _record_status(span: trace.Span, context: grpc.aio.ServicerContext) -> None:
    """The status code the handler ended the call with (an abort sets it; a plain return leaves OK)."""
    if not span.is_recording():
        return
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        span.set_attribute("rpc.grpc.status_code", code.value[0])
