"""One request's trace across the three services, in one process over real gRPC and a real Redis.

The gateway, the tokenizer service and a model worker (the tiny Llama, in a
thread) run here with one in-memory span exporter: everything between them
is real (gRPC metadata, the WorkItem on the Redis stream), so the trace is
joined up exactly as between processes; only the exporter is shared, which
is what lets one test see every service's spans.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.config import GatewaySettings
from gateway.server import build_gateway
from model_service.config import WorkerSettings
from model_service.loader import load_model
from model_service.worker import Worker, create_lane
from pipeserve import tracing
from pipeserve.config import ModelSpec
from pipeserve.local_models import TINY_LLAMA
from pipeserve.queue.connection import sync_client
from pipeserve.request_context import REQUEST_ID_METADATA
from pipeserve.v1 import generation_pb2, generation_pb2_grpc
from tokenizer_service.config import TokenizerSettings
from tokenizer_service.server import create_server

WAIT_S = 30.0
GATEWAY_SPAN = "pipeserve.v1.GenerationService/GenerateStream"
TOKENIZER_SPANS = (
    "pipeserve.internal.v1.TokenizerService/Preprocess",
    "pipeserve.internal.v1.TokenizerService/StreamText",
)
WORKER_SPANS = ("queue wait", "generate", "prefill")


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    """Every span this process records, from here on (the global provider can be set only once per process)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    yield exporter
    exporter.shutdown()


@pytest.fixture
async def stack(spans, models_file, tiny_llama_dir, redis_url, redis, keys) -> AsyncIterator[str]:
    """Tokenizer service, one model worker thread and the gateway; yields the gateway's address."""
    tokenizer, tokenizer_port = create_server(
        TokenizerSettings(models_file=models_file, key_prefix=keys.prefix, key_ttl_s=60), "127.0.0.1:0", redis=redis
    )
    await tokenizer.start()
    worker_settings = WorkerSettings(
        redis_url=redis_url, key_prefix=keys.prefix, models_file=models_file, worker_id="trace-test", idle_block_ms=50
    )
    lane = create_lane(
        load_model(ModelSpec(name=TINY_LLAMA, path=str(tiny_llama_dir))), sync_client(redis_url), worker_settings
    )
    stop = threading.Event()
    worker = threading.Thread(target=Worker([lane], worker_settings).run, args=(stop,), name="worker-under-test")
    worker.start()
    gateway = build_gateway(
        GatewaySettings(
            redis_url=redis_url,
            key_prefix=keys.prefix,
            models_file=models_file,
            tokenizer_target=f"127.0.0.1:{tokenizer_port}",
        ),
        "127.0.0.1:0",
    )
    await gateway.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while not await redis.zscore(keys.workers(TINY_LLAMA), "trace-test"):
            assert time.monotonic() < deadline, "the worker never heartbeated"
            await asyncio.sleep(0.02)
        yield f"127.0.0.1:{gateway.port}"
    finally:
        await gateway.stop(None)
        stop.set()
        await asyncio.to_thread(worker.join, WAIT_S)
        await tokenizer.stop(None)


async def wait_for_spans(spans: InMemorySpanExporter, names: set[str]):
    deadline = time.monotonic() + WAIT_S
    while not names <= {span.name for span in spans.get_finished_spans()}:
        assert time.monotonic() < deadline, f"missing spans: {names - {s.name for s in spans.get_finished_spans()}}"
        await asyncio.sleep(0.02)
    return {span.name: span for span in spans.get_finished_spans()}


async def test_one_request_is_one_trace_across_gateway_tokenizer_and_worker(stack, spans):
    spans.clear()
    client_tracer = trace.get_tracer("test-client")
    with client_tracer.start_as_current_span("client call") as client_span:
        carrier: dict[str, str] = {}
        tracing.inject(carrier)
        async with grpc.aio.insecure_channel(stack) as channel:
            call = generation_pb2_grpc.GenerationServiceStub(channel).GenerateStream(
                generation_pb2.GenerateStreamRequest(
                    model=TINY_LLAMA,
                    prompt="def main():",
                    parameters=generation_pb2.GenerationParameters(max_new_tokens=6, ignore_eos=True),
                ),
                metadata=tuple(carrier.items()),
                timeout=WAIT_S,
            )
            request_id = dict(await call.initial_metadata())[REQUEST_ID_METADATA]
            assert sum([len(message.token_ids) async for message in call]) == 6

    by_name = await wait_for_spans(spans, {GATEWAY_SPAN, *TOKENIZER_SPANS, *WORKER_SPANS})
    ours = [span for span in spans.get_finished_spans() if span.name != "client call"]
    assert {span.context.trace_id for span in ours} == {client_span.get_span_context().trace_id}, "one trace"
    assert {span.instrumentation_scope.name for span in ours} >= {
        tracing.GATEWAY,
        tracing.TOKENIZER,
        tracing.MODEL_WORKER,
    }

    gateway_span = by_name[GATEWAY_SPAN]
    assert gateway_span.parent.span_id == client_span.get_span_context().span_id, "continues the client's traceparent"
    assert gateway_span.kind == trace.SpanKind.SERVER
    assert gateway_span.attributes["pipeserve.request_id"] == request_id
    for name in TOKENIZER_SPANS:
        assert by_name[name].parent.span_id == gateway_span.context.span_id, f"{name}: context crossed in metadata"
        assert by_name[name].attributes["pipeserve.request_id"] == request_id
    for name in ("queue wait", "generate"):
        assert by_name[name].parent.span_id == gateway_span.context.span_id, f"{name}: context crossed in the WorkItem"
        assert by_name[name].attributes["pipeserve.request_id"] == request_id
    assert by_name["prefill"].parent.span_id == by_name["generate"].context.span_id

    queue_wait, generate, prefill = (by_name[name] for name in WORKER_SPANS)
    assert gateway_span.start_time <= queue_wait.start_time <= queue_wait.end_time == generate.start_time
    assert generate.start_time == prefill.start_time <= prefill.end_time <= generate.end_time <= gateway_span.end_time
    assert generate.attributes["pipeserve.completion_tokens"] == 6
    assert generate.attributes["pipeserve.outcome"] == "length"
