"""Work items the loaded model cannot run are refused with a message saying what to change."""

from __future__ import annotations

import numpy as np
import pytest

from model_service.work_items import ModelLimits, forward_request_from_work_item, request_from_work_item
from pipeserve.errors import InvalidArgument
from pipeserve.internal.v1 import queue_pb2
from pipeserve.queue.forward_rows import forward_work

LIMITS = ModelLimits(model="tiny", vocab_size=100, context_length=50, max_sequences=4)


def item(prompt=(1, 2, 3), **sampling) -> queue_pb2.WorkItem:
    params = {"max_new_tokens": 10, "temperature": 1.0, "top_p": 1.0, "repetition_penalty": 1.0}
    params["num_return_sequences"] = 1
    params.update(sampling)
    return queue_pb2.WorkItem(
        request_id="r", model="tiny", prompt_token_ids=list(prompt), sampling=queue_pb2.SamplingParams(**params)
    )


def test_a_valid_item_becomes_an_engine_request():
    request = request_from_work_item(
        item(do_sample=True, top_k=5, seed=7, eos_token_ids=[2, 0], num_return_sequences=3), LIMITS
    )
    assert request.request_id == "r" and list(request.prompt_token_ids) == [1, 2, 3]
    sampling = request.sampling
    assert (sampling.seed, sampling.top_k, sampling.num_return_sequences) == (7, 5, 3)
    assert sampling.eos_token_ids == {0, 2}
    assert request_from_work_item(item(), LIMITS).sampling.seed is None


@pytest.mark.parametrize(
    ("work_item", "phrase"),
    [
        (item(prompt=()), "prompt_token_ids is empty"),
        (item(prompt=(1, 100)), "holds 100, outside the vocabulary of model 'tiny' [0, 100)"),
        (item(prompt=(-1, 5)), "holds -1"),
        (item(prompt=[1] * 45, max_new_tokens=10), "is 55 tokens, more than the context length of model 'tiny' (50)"),
        (item(max_new_tokens=0), "max_new_tokens must be at least 1"),
        (item(num_return_sequences=2), "needs do_sample=true"),
        (item(do_sample=True, num_return_sequences=5), "between 1 and 4"),
        (item(do_sample=True, temperature=0.0), "temperature must be > 0"),
        (item(do_sample=True, top_p=0.0), "top_p must be in (0, 1]"),
        (item(do_sample=True, top_k=-1), "top_k must be >= 0"),
        (item(repetition_penalty=0.0), "repetition_penalty must be > 0"),
    ],
)
def test_refusals_name_the_field_and_the_limit(work_item, phrase):
    with pytest.raises(InvalidArgument) as refused:
        request_from_work_item(work_item, LIMITS)
    assert phrase in refused.value.message


def table_rows(*type_shapes: tuple[int, ...]) -> queue_pb2.WorkItem:
    """Forward rows of 3 tokens whose token_type_ids have the given shapes (TAPAS's: (3, 7))."""
    rows = [
        {"input_ids": np.array([1, 2, 3]), "token_type_ids": np.zeros(shape, dtype=np.int64)} for shape in type_shapes
    ]
    return queue_pb2.WorkItem(request_id="t", forward=forward_work(rows, ["logits", "logits_aggregation"], ["logits"]))


def test_forward_rows_may_carry_several_values_per_token():
    request = forward_request_from_work_item(table_rows((3, 7), (3, 7)), LIMITS)
    assert [row["token_type_ids"].shape for row in request.rows] == [(3, 7), (3, 7)]
    assert request.output_names == ("logits", "logits_aggregation")


@pytest.mark.parametrize("type_shapes", [((3, 7), (3, 6)), ((3, 7), (3,)), ((3, 7), (2, 7))])
def test_forward_rows_whose_inputs_disagree_in_shape_are_refused(type_shapes):
    with pytest.raises(InvalidArgument, match="row 1: every row needs the same inputs"):
        forward_request_from_work_item(table_rows(*type_shapes), LIMITS)
