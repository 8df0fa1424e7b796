"""question-answering pre/post-processing against a reference computed directly from the model's logits.

transformers 5 has no QuestionAnsweringPipeline to compare with; the
reference (tests/question_answering_reference.py) is the task's definition,
written plainly. Rows run through the model one by one here, as a stand-in
for the worker's batched forward.
"""

from __future__ import annotations

import re

import grpc
import numpy as np
import pytest
import torch
from question_answering_reference import reference
from transformers import AutoConfig, AutoModelForQuestionAnswering, AutoTokenizer

from pipeserve.config import ModelSpec
from pipeserve.errors import InvalidArgument
from pipeserve.local_encoder_models import TINY_BERT_QA, build_tiny_bert_qa
from pipeserve.v1 import question_answering_pb2 as qa_pb2
from tokenizer_service.tasks.forward import ForwardModel
from tokenizer_service.tasks.question_answering import QuestionAnswering

QUESTION = "Who created the Python language?"
CONTEXT = (
    "Python is a programming language created by Guido van Rossum and first released in 1991. "
    "It emphasizes code readability with the use of significant indentation."
)
LONG_CONTEXT = " ".join(
    [
        "The standard library ships modules for files, networking, threads and text processing.",
        "Guido van Rossum began working on Python in the late 1980s in the Netherlands.",
        "Packages are installed from the Python Package Index with pip into virtual environments.",
        "Type hints were added in version 3.5 and are checked by external tools such as mypy.",
    ]
    * 3
)


@pytest.fixture(scope="module")
def qa_dir(tmp_path_factory):
    return build_tiny_bert_qa(tmp_path_factory.mktemp("qa") / TINY_BERT_QA)


@pytest.fixture(scope="module")
def model(qa_dir):
    return AutoModelForQuestionAnswering.from_pretrained(qa_dir).eval()


@pytest.fixture(scope="module")
def tokenizer(qa_dir):
    return AutoTokenizer.from_pretrained(qa_dir)


@pytest.fixture(scope="module")
def task(qa_dir, tokenizer):
    spec = ModelSpec(name=TINY_BERT_QA, path=str(qa_dir), task="question-answering")
    return QuestionAnswering(ForwardModel(spec, tokenizer, AutoConfig.from_pretrained(qa_dir)))


def run(task, model, msg):
    """Preprocess, one forward per row (what the worker computes for them), postprocess."""
    prepared = task.preprocess(msg)
    outputs = []
    with torch.inference_mode():
        for row in prepared.rows:
            result = model(**{name: torch.as_tensor(values)[None] for name, values in row.items()})
            outputs.append({name: getattr(result, name)[0].numpy() for name in task.output_names})
    return task.postprocess(msg, prepared.state, outputs), len(prepared.rows)


def answers_of(result):
    return [(a.answer, a.start, a.end) for a in result.answers]


def assert_same(result, expected):
    assert answers_of(result) == [(text, start, end) for text, start, end, _ in expected]
    np.testing.assert_allclose([a.score for a in result.answers], [e[3] for e in expected], rtol=1e-5, atol=1e-7)


def test_short_context_best_span_equals_the_reference(task, model, tokenizer):
    msg = qa_pb2.QuestionAnsweringInput(
        items=[qa_pb2.QuestionAnsweringItem(question=QUESTION, context=CONTEXT)], align_to_words=False
    )
    output, rows = run(task, model, msg)
    expected, _ = reference(model, tokenizer, QUESTION, CONTEXT)
    assert rows == 1
    assert_same(output.results[0], expected)
    answer = output.results[0].answers[0]
    assert CONTEXT[answer.start : answer.end] == answer.answer


def test_top_k_and_max_answer_len(task, model, tokenizer):
    msg = qa_pb2.QuestionAnsweringInput(
        items=[qa_pb2.QuestionAnsweringItem(question=QUESTION, context=CONTEXT)],
        top_k=4,
        max_answer_len=3,
        align_to_words=False,
    )
    output, _ = run(task, model, msg)
    expected, _ = reference(model, tokenizer, QUESTION, CONTEXT, top_k=4, max_answer_len=3)
    assert len(expected) == 4
    assert_same(output.results[0], expected)


def test_answers_widen_to_whole_words_by_default(task, model, tokenizer):
    msg = qa_pb2.QuestionAnsweringInput(
        items=[qa_pb2.QuestionAnsweringItem(question=QUESTION, context=CONTEXT)], top_k=5
    )
    output, _ = run(task, model, msg)
    tokens, _ = reference(model, tokenizer, QUESTION, CONTEXT, top_k=5)
    words = [(m.start(), m.end()) for m in re.finditer(r"\w+|[^\w\s]", CONTEXT)]
    for answer in output.results[0].answers:
        assert any(start == answer.start for start, _ in words) and any(end == answer.end for _, end in words)
        assert CONTEXT[answer.start : answer.end] == answer.answer
        # Each widened answer grew out of one of the best token spans (equal words then add up their scores).
        assert any(answer.start <= start and end <= answer.end for _, start, end, _ in tokens)


def test_long_context_is_split_into_overlapping_windows(task, model, tokenizer):
    options = {"max_seq_len": 48, "doc_stride": 16}
    msg = qa_pb2.QuestionAnsweringInput(
        items=[qa_pb2.QuestionAnsweringItem(question=QUESTION, context=LONG_CONTEXT)],
        top_k=2,
        align_to_words=False,
        **options,
    )
    output, rows = run(task, model, msg)
    expected, _ = reference(model, tokenizer, QUESTION, LONG_CONTEXT, top_k=2, **options)
    assert rows > 3
    assert_same(output.results[0], expected)


def test_handle_impossible_answer_adds_the_null_answer(task, model, tokenizer):
    # top_k past the number of spans: every candidate comes back, the null answer among them at its score.
    msg = qa_pb2.QuestionAnsweringInput(
        items=[qa_pb2.QuestionAnsweringItem(question=QUESTION, context=CONTEXT)],
        top_k=10_000,
        handle_impossible_answer=True,
        align_to_words=False,
    )
    output, _ = run(task, model, msg)
    _, null_score = reference(model, tokenizer, QUESTION, CONTEXT)
    answers = output.results[0].answers
    # Zero-score spans on the first token also read "" (the pipeline's way); the null answer is the scored one.
    null = [a for a in answers if a.answer == "" and a.score > 0]
    assert len(null) == 1 and (null[0].start, null[0].end) == (0, 0)
    assert null[0].score == pytest.approx(null_score, rel=1e-5)
    scores = [a.score for a in answers]
    assert scores == sorted(scores, reverse=True)


def test_items_answer_in_order_each_from_its_own_windows(task, model, tokenizer):
    items = [
        qa_pb2.QuestionAnsweringItem(question=QUESTION, context=LONG_CONTEXT),
        qa_pb2.QuestionAnsweringItem(question="When was it released?", context=CONTEXT),
    ]
    msg = qa_pb2.QuestionAnsweringInput(items=items, max_seq_len=64, doc_stride=16, align_to_words=False)
    output, _ = run(task, model, msg)
    for item, result in zip(items, output.results, strict=True):
        expected, _ = reference(model, tokenizer, item.question, item.context, max_seq_len=64, doc_stride=16)
        assert_same(result, expected)


@pytest.mark.parametrize(
    ("msg", "message"),
    [
        (qa_pb2.QuestionAnsweringInput(items=[qa_pb2.QuestionAnsweringItem(question=QUESTION)]), "context is empty"),
        (
            qa_pb2.QuestionAnsweringInput(items=[qa_pb2.QuestionAnsweringItem(question=QUESTION, context="  ")]),
            "context is empty",
        ),
        (qa_pb2.QuestionAnsweringInput(items=[qa_pb2.QuestionAnsweringItem(context=CONTEXT)]), "question is empty"),
        (qa_pb2.QuestionAnsweringInput(), "items is empty"),
        (
            qa_pb2.QuestionAnsweringInput(
                items=[qa_pb2.QuestionAnsweringItem(question=QUESTION, context=CONTEXT)], top_k=0
            ),
            "top_k",
        ),
        (
            qa_pb2.QuestionAnsweringInput(
                items=[qa_pb2.QuestionAnsweringItem(question=QUESTION, context=CONTEXT)], max_seq_len=8, doc_stride=9
            ),
            "doc_stride",
        ),
        (
            qa_pb2.QuestionAnsweringInput(
                items=[qa_pb2.QuestionAnsweringItem(question=QUESTION * 4, context=LONG_CONTEXT)],
                max_seq_len=32,
                doc_stride=8,
            ),
            "shorten the question",
        ),
        (
            qa_pb2.QuestionAnsweringInput(
                items=[qa_pb2.QuestionAnsweringItem(question=QUESTION, context=CONTEXT)], max_seq_len=4096
            ),
            "max_seq_len",
        ),
    ],
)
def test_bad_input_is_invalid_argument(task, msg, message):
    with pytest.raises(InvalidArgument) as raised:
        task.preprocess(msg)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in raised.value.message
