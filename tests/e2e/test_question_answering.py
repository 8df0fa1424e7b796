"""question-answering through the running services, against the task's reference computed from the model's logits.

transformers 5 dropped the pipeline, so the reference is
tests/question_answering_reference.py on the same model in this process.
Requests carry contexts of mixed lengths (one cut into several windows) and
run concurrently, so rows of several requests share padded forwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from question_answering_reference import reference

from pipeserve.local_encoder_models import TINY_BERT_QA
from pipeserve.v1 import pipelines_pb2 as pb
from pipeserve.v1 import pipelines_pb2_grpc
from pipeserve.v1 import question_answering_pb2 as qa

from .conftest import one_model_stack

CONTEXTS = [
    "Python is a programming language created by Guido van Rossum and first released in 1991.",
    "Berlin is the capital of Germany.",
    " ".join(
        [
            "The standard library ships modules for files, networking, threads and text processing.",
            "Guido van Rossum began working on Python in the late 1980s in the Netherlands.",
            "Type hints were added in version 3.5 and are checked by external tools such as mypy.",
        ]
        * 2
    ),
]
QUESTIONS = ["Who created Python?", "What is the capital?", "When did the work on Python begin?"]
OPTIONS = {"max_seq_len": 48, "doc_stride": 16}


@pytest.fixture(scope="module")
def qa_stack(redis_url, tmp_path_factory):
    with one_model_stack(TINY_BERT_QA, redis_url, tmp_path_factory) as stack:
        yield stack


@pytest.fixture(scope="module")
def pipelines(qa_stack) -> Iterator[pipelines_pb2_grpc.PipelineServiceStub]:
    running, _ = qa_stack
    with running.channel() as channel:
        yield pipelines_pb2_grpc.PipelineServiceStub(channel)


@pytest.fixture(scope="module")
def model_and_tokenizer(qa_stack):
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    _, model_dir = qa_stack
    return AutoModelForQuestionAnswering.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)


def ask(stub, items, **options) -> qa.QuestionAnsweringOutput:
    request = pb.PipelineRequest(
        model=TINY_BERT_QA, question_answering=qa.QuestionAnsweringInput(items=items, **options)
    )
    return stub.Run(request, timeout=60).question_answering


def test_answers_equal_the_reference_for_concurrent_requests_of_mixed_lengths(pipelines, model_and_tokenizer):
    items = [qa.QuestionAnsweringItem(question=q, context=c) for q, c in zip(QUESTIONS, CONTEXTS, strict=True)]
    requests = [items, items[::-1], items[1:], items[2:]]
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        outputs = list(pool.map(lambda its: ask(pipelines, its, top_k=2, align_to_words=False, **OPTIONS), requests))
    model, tokenizer = model_and_tokenizer
    for request_items, output in zip(requests, outputs, strict=True):
        assert len(output.results) == len(request_items)
        for item, result in zip(request_items, output.results, strict=True):
            expected, _ = reference(model, tokenizer, item.question, item.context, top_k=2, **OPTIONS)
            assert [(a.answer, a.start, a.end) for a in result.answers] == [e[:3] for e in expected]
            np.testing.assert_allclose([a.score for a in result.answers], [e[3] for e in expected], atol=1e-5)


def test_whole_words_by_default_and_the_impossible_answer(pipelines, model_and_tokenizer):
    item = qa.QuestionAnsweringItem(question=QUESTIONS[0], context=CONTEXTS[0])
    output = ask(pipelines, [item], top_k=10_000, handle_impossible_answer=True)
    answers = output.results[0].answers
    assert all(CONTEXTS[0][a.start : a.end] == a.answer for a in answers)
    model, tokenizer = model_and_tokenizer
    _, null_score = reference(model, tokenizer, item.question, item.context)
    null = [a for a in answers if a.answer == "" and a.score > 0]
    assert len(null) == 1 and null[0].score == pytest.approx(null_score, abs=1e-5)


def test_an_empty_context_is_invalid_argument(pipelines):
    with pytest.raises(grpc.RpcError) as raised:
        ask(pipelines, [qa.QuestionAnsweringItem(question="Who?", context="")])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "context is empty" in raised.value.details()
