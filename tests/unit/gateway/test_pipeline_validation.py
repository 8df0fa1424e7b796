"""The gateway's checks of a PipelineRequest: model, task (aliases, the model's default), input, sizes."""

from __future__ import annotations

import pytest

from gateway.pipeline_validation import validate_pipeline_request
from gateway.validation import RequestLimits
from pipeserve.config import ModelSpec
from pipeserve.errors import InvalidArgument, NotFound
from pipeserve.v1 import pipelines_pb2 as pb
from pipeserve.v1 import table_question_answering_pb2 as tqa

MODELS = {
    "sentiment": ModelSpec(name="sentiment", path="/m/s", task="sentiment-analysis"),
    "ner": ModelSpec(name="ner", path="/m/n", task="token-classification"),
    "llama": ModelSpec(name="llama", path="/m/l", task="text-generation"),
}
LIMITS = RequestLimits(max_pipeline_rows=8, max_prompt_chars=100)


def classify(*texts: str, **fields) -> pb.PipelineRequest:
    items = [pb.TextClassificationItem(text=text) for text in texts]
    return pb.PipelineRequest(text_classification=pb.TextClassificationInput(items=items), **fields)


def test_the_task_defaults_to_the_models_and_aliases_resolve():
    assert validate_pipeline_request(classify("x", model="sentiment"), MODELS, LIMITS) == "text-classification"
    assert validate_pipeline_request(classify("x", model="sentiment", task="sentiment-analysis"), MODELS, LIMITS) == (
        "text-classification"
    )
    ner = pb.PipelineRequest(model="ner", task="ner", token_classification=pb.TokenClassificationInput(texts=["x"]))
    assert validate_pipeline_request(ner, MODELS, LIMITS) == "token-classification"


def test_a_classifier_also_serves_zero_shot():
    request = pb.PipelineRequest(
        model="sentiment",
        task="zero-shot-classification",
        zero_shot_classification=pb.ZeroShotClassificationInput(sequences=["x"], candidate_labels=["a", "b"]),
    )
    assert validate_pipeline_request(request, MODELS, LIMITS) == "zero-shot-classification"


@pytest.mark.parametrize(
    "request_, error, message",
    [
        (classify("x", model="nope"), NotFound, "unknown model 'nope'; served models: llama, ner, sentiment"),
        (classify("x", model="sentiment", task="summarise"), InvalidArgument, "unknown task 'summarise'"),
        (classify("x", model="ner", task="text-classification"), InvalidArgument,
         "model 'ner' cannot do 'text-classification'; its tasks: token-classification"),
        (classify("x", model="llama"), InvalidArgument, "cannot do 'text-generation'.*GenerationService"),
        (pb.PipelineRequest(model="sentiment"), InvalidArgument, "takes the text_classification input; .* no input"),
        (classify(model="sentiment"), InvalidArgument, "text_classification has no items"),
        (classify(*"abcdefghi", model="sentiment"), InvalidArgument, "9 model rows .* at most 8"),
        (classify("x" * 101, model="sentiment"), InvalidArgument, "101 characters"),
        (pb.PipelineRequest(model="sentiment", task="zero-shot-classification",
                            zero_shot_classification=pb.ZeroShotClassificationInput(sequences=["x"])),
         InvalidArgument, "candidate_labels is empty"),
        (pb.PipelineRequest(model="sentiment", task="zero-shot-classification",
                            zero_shot_classification=pb.ZeroShotClassificationInput(
                                sequences=["x"] * 3, candidate_labels=["a", "b", "c"])),
         InvalidArgument, "9 model rows"),
    ],
)  # fmt: skip
def test_bad_envelopes_are_refused_with_what_to_change(request_, error, message):
    with pytest.raises(error, match=message):
        validate_pipeline_request(request_, MODELS, LIMITS)


TABLE_MODELS = {**MODELS, "tapas": ModelSpec(name="tapas", path="/m/t", task="table-question-answering")}


def ask_table(columns: dict[str, list[str]], queries: list[str], **fields) -> pb.PipelineRequest:
    table = tqa.TableQuestionAnsweringInput(
        columns=[tqa.TableColumn(header=header, cells=cells) for header, cells in columns.items()], queries=queries
    )
    return pb.PipelineRequest(model=fields.pop("model", "tapas"), table_question_answering=table, **fields)


def test_a_table_question_is_checked_and_its_queries_count_as_rows():
    request = ask_table({"City": ["Paris", "Rome"], "Country": ["France", ""]}, ["Where is Rome?", "Which city?"])
    assert validate_pipeline_request(request, TABLE_MODELS, LIMITS) == "table-question-answering"


@pytest.mark.parametrize(
    "request_, message",
    [
        (ask_table({}, ["q"]), r"table_question_answering.columns is empty; send the table as columns"),
        (ask_table({"a": ["1", "2"], "b": ["3"]}, ["q"]),
         r"columns\[1\] \('b'\) has 1 cells but columns\[0\] \('a'\) has 2; every column needs one cell per row"),
        (ask_table({"a": [], "b": []}, ["q"]), r"columns have no cells, so the table has no rows"),
        (ask_table({"a": ["1"]}, []), r"table_question_answering.queries is empty; ask at least one question"),
        (ask_table({"a": ["1"]}, ["q", ""]), r"table_question_answering.queries\[1\] is empty"),
        (ask_table({"a": ["1"]}, ["q"] * 9), r"9 model rows .* at most 8"),
        (ask_table({"a": ["x" * 90]}, ["a question"]), r"101 characters"),
        (ask_table({"a": ["1"]}, ["q"], task="question-answering"),
         r"model 'tapas' cannot do 'question-answering'; its tasks: table-question-answering"),
        (ask_table({"a": ["1"]}, ["q"], model="sentiment", task="table-question-answering"),
         r"model 'sentiment' cannot do 'table-question-answering'; its tasks: text-classification"),
    ],
)  # fmt: skip
def test_bad_tables_and_queries_are_refused_with_what_to_change(request_, message):
    with pytest.raises(InvalidArgument, match=message):
        validate_pipeline_request(request_, TABLE_MODELS, LIMITS)
