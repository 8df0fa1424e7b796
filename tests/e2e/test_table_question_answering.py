"""table-question-answering through the running services, equal to transformers.pipeline on the same TAPAS model.

The stack serves the small local TAPAS only. Each request asks several
queries of one table (one row each, one forward); two requests with tables
of different sizes run concurrently, so their rows of different lengths
share padded forwards on the worker.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from table_question_answering_samples import (
    CITIES,
    CITY_QUERIES,
    REPOSITORIES,
    REPOSITORY_QUERIES,
    pipeline_answers,
    served_answers,
    table_input,
)
from transformers import pipeline

from pipeserve.local_encoder_models import TINY_TAPAS
from pipeserve.v1 import pipelines_pb2 as pb
from pipeserve.v1 import pipelines_pb2_grpc
from pipeserve.v1 import table_question_answering_pb2 as tqa

from .conftest import one_model_stack

SAMPLES = [(REPOSITORIES, REPOSITORY_QUERIES), (CITIES, CITY_QUERIES)]


@pytest.fixture(scope="module")
def tapas_stack(redis_url, tmp_path_factory):
    with one_model_stack(TINY_TAPAS, redis_url, tmp_path_factory) as stack:
        yield stack


@pytest.fixture(scope="module")
def pipelines(tapas_stack) -> Iterator[pipelines_pb2_grpc.PipelineServiceStub]:
    running, _ = tapas_stack
    with running.channel() as channel:
        yield pipelines_pb2_grpc.PipelineServiceStub(channel)


@pytest.fixture(scope="module")
def expected(tapas_stack) -> list[list[tuple]]:
    """transformers.pipeline's answers to each sample table's queries, all asked in one call as the service gets them."""
    _, model_dir = tapas_stack
    reference = pipeline("table-question-answering", model=str(model_dir))
    return [pipeline_answers(reference(table=table, query=queries)) for table, queries in SAMPLES]


def ask(stub, table_question: tqa.TableQuestionAnsweringInput, **fields) -> pb.PipelineResponse:
    request = pb.PipelineRequest(model=TINY_TAPAS, table_question_answering=table_question, **fields)
    return stub.Run(request, timeout=60)


def test_several_queries_of_one_table_equal_the_pipeline(pipelines, expected):
    response = ask(pipelines, table_input(*SAMPLES[0]))
    assert response.task == "table-question-answering"
    assert served_answers(response.table_question_answering) == expected[0]
    # A random model might select nothing; then equality would prove little.
    assert any(cells for _, _, cells, _ in expected[0])


def test_concurrent_requests_with_tables_of_different_sizes_get_their_own_answers(pipelines, expected):
    requests = [table_input(*SAMPLES[i % 2]) for i in range(6)]
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        responses = list(pool.map(lambda request: ask(pipelines, request), requests))
    for index, response in enumerate(responses):
        assert served_answers(response.table_question_answering) == expected[index % 2]


@pytest.mark.parametrize(
    "table_question, fields, message",
    [
        (table_input({"a": ["1", "2"], "b": ["3"]}, ["q"]), {},
         r"columns\[1\] \('b'\) has 1 cells but columns\[0\] \('a'\) has 2"),
        (table_input({"a": []}, ["q"]), {}, "the table has no rows"),
        (table_input({"a": ["1"]}, []), {}, "queries is empty"),
        (table_input({"a": ["1"]}, ["q", ""]), {}, r"queries\[1\] is empty"),
        (table_input({"a": ["1"]}, ["q"]), {"task": "question-answering"},
         "model 'tiny-tapas' cannot do 'question-answering'; its tasks: table-question-answering"),
    ],
)  # fmt: skip
def test_bad_tables_are_invalid_argument(pipelines, table_question, fields, message):
    with pytest.raises(grpc.RpcError) as raised:
        ask(pipelines, table_question, **fields)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(message, raised.value.details() or ""), raised.value.details()
