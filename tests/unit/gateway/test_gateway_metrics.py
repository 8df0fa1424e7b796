"""The gateway's metrics: per-call counts and durations, token timing, and the queue gauges it samples."""

from __future__ import annotations

import grpc
import pytest
from gateway_fakes import MODEL
from prometheus_client import REGISTRY

from gateway.queue_metrics import QueueSampler
from pipeserve.queue.keys import CONSUMER_GROUP
from pipeserve.v1 import generation_pb2, models_pb2


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_streamed_call_is_counted_timed_and_its_tokens_measured(gateway):
    before = {
        "calls": value("pipeserve_requests_total", rpc="GenerateStream", model=MODEL, code="OK"),
        "durations": value("pipeserve_request_duration_seconds_count", rpc="GenerateStream", model=MODEL),
        "ttft": value("pipeserve_time_to_first_token_seconds_count", model=MODEL),
        "itl": value("pipeserve_inter_token_latency_seconds_count", model=MODEL),
        "tokens": value("pipeserve_generated_tokens_total", model=MODEL),
    }
    request = generation_pb2.GenerateStreamRequest(model=MODEL, prompt="Say hello")
    messages = [message async for message in gateway.generation.GenerateStream(request, timeout=10)]
    assert [len(m.token_ids) for m in messages] == [1, 1, 1]

    assert value("pipeserve_requests_total", rpc="GenerateStream", model=MODEL, code="OK") == before["calls"] + 1
    assert (
        value("pipeserve_request_duration_seconds_count", rpc="GenerateStream", model=MODEL) == before["durations"] + 1
    )
    assert value("pipeserve_time_to_first_token_seconds_count", model=MODEL) == before["ttft"] + 1
    assert value("pipeserve_inter_token_latency_seconds_count", model=MODEL) == before["itl"] + 2, "tokens 2 and 3"
    assert value("pipeserve_generated_tokens_total", model=MODEL) == before["tokens"] + 3


async def test_a_name_no_model_has_is_counted_under_a_placeholder(gateway):
    before = value("pipeserve_requests_total", rpc="Generate", model="-", code="NOT_FOUND")
    with pytest.raises(grpc.aio.AioRpcError):
        await gateway.generation.Generate(generation_pb2.GenerateRequest(model="typo-model", prompt="x"), timeout=10)
    assert value("pipeserve_requests_total", rpc="Generate", model="-", code="NOT_FOUND") == before + 1
    assert (
        REGISTRY.get_sample_value(
            "pipeserve_requests_total", {"rpc": "Generate", "model": "typo-model", "code": "NOT_FOUND"}
        )
        is None
    )


async def test_other_calls_are_counted_too(gateway):
    before = value("pipeserve_requests_total", rpc="Tokenize", model=MODEL, code="OK")
    await gateway.models.Tokenize(models_pb2.TokenizeRequest(model=MODEL, prompt="hello"), timeout=10)
    assert value("pipeserve_requests_total", rpc="Tokenize", model=MODEL, code="OK") == before + 1


async def test_the_sampler_reports_depth_lag_and_pending_per_model(redis, keys):
    stream = keys.request_stream(MODEL)
    await redis.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
    for number in range(5):
        await redis.xadd(stream, {"p": str(number)})
    await redis.xreadgroup(CONSUMER_GROUP, "worker-1", {stream: ">"}, count=2)  # two in flight, three waiting

    await QueueSampler(redis, keys, [MODEL, "no-stream-yet"]).sample()

    assert value("pipeserve_queue_depth", model=MODEL) == 5
    assert value("pipeserve_queue_pending", model=MODEL) == 2
    assert value("pipeserve_queue_lag", model=MODEL) == 3
    assert value("pipeserve_queue_depth", model="no-stream-yet") == 0
