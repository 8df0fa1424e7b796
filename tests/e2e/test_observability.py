"""Metrics, request ids in the logs and worker health, as an operator sees them on the real stack."""

from __future__ import annotations

import json
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from polling import wait_for
from prometheus_client.parser import text_string_to_metric_families

from pipeserve.local_models import TINY_LLAMA

from .conftest import stream_request

WAIT_S = 30
REQUESTS = 3
TOKENS = 8


def scrape(address: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a /metrics page: (name, labels) -> value."""
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def generate(generation) -> str:
    """One streamed request of TOKENS tokens; its request id."""
    call = generation.GenerateStream(stream_request(max_new_tokens=TOKENS, ignore_eos=True), timeout=60)
    assert sum(len(message.token_ids) for message in call) == TOKENS
    return dict(call.initial_metadata())["x-request-id"]


def test_gateway_worker_and_tokenizer_export_the_named_series(stack, generation):
    gateway, tokenizer, worker = (stack.metrics[name] for name in ("gateway", "tokenizer", "model-worker-1"))
    before = {address: scrape(address) for address in (gateway, tokenizer, worker)}
    for _ in range(REQUESTS):
        generate(generation)
    # The worker and tokenizer count a request as it ends, which can be a moment after the client saw its end.
    after = {
        gateway: scrape(gateway),
        worker: wait_for(
            lambda: (
                (s := scrape(worker))
                and sample(s, "pipeserve_worker_requests_total", model=TINY_LLAMA, finish_reason="length")
                >= sample(before[worker], "pipeserve_worker_requests_total", model=TINY_LLAMA, finish_reason="length")
                + REQUESTS
                and s
            ),
            "the worker to count the requests",
            timeout_s=WAIT_S,
        ),
        tokenizer: scrape(tokenizer),
    }

    def grew(address: str, name: str, **labels) -> float:
        return sample(after[address], name, **labels) - sample(before[address], name, **labels)

    call = {"rpc": "GenerateStream", "model": TINY_LLAMA}
    assert grew(gateway, "pipeserve_requests_total", **call, code="OK") == REQUESTS
    assert grew(gateway, "pipeserve_request_duration_seconds_count", **call) == REQUESTS
    assert grew(gateway, "pipeserve_generated_tokens_total", model=TINY_LLAMA) == REQUESTS * TOKENS
    assert grew(gateway, "pipeserve_time_to_first_token_seconds_count", model=TINY_LLAMA) == REQUESTS
    # Every token after a sequence's first message is one inter-token observation.
    assert (
        REQUESTS <= grew(gateway, "pipeserve_inter_token_latency_seconds_count", model=TINY_LLAMA) < REQUESTS * TOKENS
    )
    ttft = grew(gateway, "pipeserve_time_to_first_token_seconds_sum", model=TINY_LLAMA)
    duration = grew(gateway, "pipeserve_request_duration_seconds_sum", **call)
    assert 0 < ttft < duration, "the first token comes before the call's end"
    # Sampled every few seconds by the gateway; nothing is left queued once the requests are done.
    queue = wait_for(
        lambda: (s := scrape(gateway)) and ("pipeserve_queue_pending", frozenset({("model", TINY_LLAMA)})) in s and s,
        "queue gauges",
        timeout_s=WAIT_S,
    )
    assert sample(queue, "pipeserve_queue_depth", model=TINY_LLAMA) >= 0

    assert grew(worker, "pipeserve_queue_wait_seconds_count", model=TINY_LLAMA) == REQUESTS
    assert grew(worker, "pipeserve_engine_step_seconds_count", model=TINY_LLAMA) >= TOKENS
    assert ("pipeserve_batch_size", frozenset({("model", TINY_LLAMA)})) in after[worker]
    assert ("pipeserve_kv_cache_tokens", frozenset({("model", TINY_LLAMA)})) in after[worker]

    assert grew(tokenizer, "pipeserve_tokenizer_seconds_count", op="preprocess") == REQUESTS
    assert grew(tokenizer, "pipeserve_tokenizer_seconds_count", op="detokenize") >= REQUESTS


def test_one_requests_id_is_in_the_json_logs_of_all_three_services(stack, generation):
    request_id = generate(generation)

    def services_that_logged_it() -> set[str]:
        services = set()
        for line in stack.logs().splitlines():
            if request_id not in line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("request_id") == request_id:
                services.add(record["service"])
        return services

    wait_for(
        lambda: services_that_logged_it() == {"gateway", "tokenizer", "model-worker"},
        "every service's line",
        timeout_s=WAIT_S,
    )


def test_the_workers_health_is_serving(stack):
    with grpc.insecure_channel(stack.worker_health["model-worker-1"]) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
