"""PipelineService.Run in the gateway: the envelope checked here, the rest one RunTask on a tokenizer."""

from __future__ import annotations

import grpc
import pytest
from gateway_fakes import MODEL, OTHER_MODEL

from pipeserve.v1 import pipelines_pb2 as pb


def classify(model: str = OTHER_MODEL, **fields) -> pb.PipelineRequest:
    items = [pb.TextClassificationItem(text="great"), pb.TextClassificationItem(text="a much longer text")]
    return pb.PipelineRequest(model=model, text_classification=pb.TextClassificationInput(items=items), **fields)


async def test_a_request_goes_to_the_tokenizer_with_its_resolved_task(gateway):
    call = gateway.pipelines.Run(classify(task="sentiment-analysis"), timeout=10)
    response = await call
    assert response.text_classification.results[0].labels[0].label == "POS"
    (sent,) = gateway.tokenizer.run_task_requests
    assert sent.task == "text-classification" and sent.request == classify(task="sentiment-analysis")
    assert dict(await call.initial_metadata())["x-request-id"] == sent.request_id


async def test_a_dead_tokenizer_is_retried_once_as_a_new_request(gateway):
    gateway.tokenizer.run_task_unavailable = 1
    await gateway.pipelines.Run(classify(), timeout=10)
    first, second = gateway.tokenizer.run_task_requests
    assert second.request_id == f"{first.request_id}-2"

    gateway.tokenizer.run_task_requests.clear()
    gateway.tokenizer.run_task_unavailable = 2
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await gateway.pipelines.Run(classify(), timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(gateway.tokenizer.run_task_requests) == 2


@pytest.mark.parametrize(
    "request_, code, message",
    [
        (classify(model="nope"), grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
        (classify(task="translate"), grpc.StatusCode.INVALID_ARGUMENT, "unknown task 'translate'"),
        (classify(model=MODEL), grpc.StatusCode.INVALID_ARGUMENT, "cannot do 'text-generation'"),
    ],
)
async def test_bad_envelopes_never_reach_the_tokenizer(gateway, request_, code, message):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await gateway.pipelines.Run(request_, timeout=10)
    assert raised.value.code() == code and message in raised.value.details()
    assert not gateway.tokenizer.run_task_requests
