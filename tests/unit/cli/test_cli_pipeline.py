"""`pipeserve pipeline`: how texts and --options become the request, and how the reply is printed."""

from __future__ import annotations

import numpy as np
import pytest

from pipeserve.cli.client_channel import ClientError
from pipeserve.cli.parser import parse_args
from pipeserve.cli.pipeline import build_request, output_json
from pipeserve.tensors import to_tensor
from pipeserve.v1 import pipelines_pb2 as pb


@pytest.mark.parametrize(
    "task, field, texts_of",
    [
        ("sentiment-analysis", "text_classification", lambda m: [item.text for item in m.items]),
        ("ner", "token_classification", lambda m: list(m.texts)),
        ("fill-mask", "fill_mask", lambda m: list(m.texts)),
        ("zero-shot-classification", "zero_shot_classification", lambda m: list(m.sequences)),
        ("feature-extraction", "feature_extraction", lambda m: list(m.texts)),
        ("table-question-answering", "table_question_answering", lambda m: list(m.queries)),
    ],
)
def test_texts_go_where_the_task_keeps_them(task, field, texts_of):
    request = build_request("m", task, ["one", "two"], "{}")
    assert request.task == task and request.WhichOneof("input") == field
    assert texts_of(getattr(request, field)) == ["one", "two"]


def test_options_set_the_rest_of_the_input_message():
    request = build_request(
        "m", "text-classification", ["x"], '{"top_k": 0, "function_to_apply": "CLASSIFICATION_FUNCTION_NONE"}'
    )
    assert request.text_classification.HasField("top_k") and request.text_classification.top_k == 0
    assert request.text_classification.function_to_apply == pb.CLASSIFICATION_FUNCTION_NONE


def test_question_answering_takes_its_items_from_options_only():
    options = '{"items": [{"question": "Who?", "context": "Guido wrote it."}], "top_k": 2}'
    request = build_request("m", "question-answering", [], options)
    assert request.question_answering.items[0].context == "Guido wrote it."
    with pytest.raises(ClientError, match="question-answering takes no plain texts: give its items in --options"):
        build_request("m", "question-answering", ["a text"], "{}")


def test_no_texts_still_sets_the_input_so_the_gateway_can_say_what_is_missing():
    assert build_request("m", "fill-mask", [], "{}").WhichOneof("input") == "fill_mask"


@pytest.mark.parametrize(
    "task, options, message",
    [
        ("text-classification", '{"top_kk": 1}', 'not a valid TextClassificationInput in JSON: .*"top_kk"'),
        ("text-classification", "[1, 2]", "not a valid TextClassificationInput in JSON"),
        ("text-generation", "{}", "'m' is a text-generation model: use `pipeserve generate --model m`"),
    ],
)
def test_what_cannot_be_sent_is_refused_before_sending(task, options, message):
    with pytest.raises(ClientError, match=message):
        build_request("m", task, ["x"], options)


def test_unknown_tasks_and_models_are_left_for_the_gateway_to_name():
    request = build_request("m", "summarise", ["x"], "{}")
    assert request.task == "summarise" and request.WhichOneof("input") is None


def test_the_reply_prints_per_item_with_zeros_and_tensors_unpacked():
    entity = pb.Entity(label="PER", score=0.5, word="jo", start=0, end=2)
    reply = pb.PipelineResponse(
        token_classification=pb.TokenClassificationOutput(results=[pb.TokenClassificationResult(entities=[entity])])
    )
    assert output_json(reply) == [{"entities": [{"label": "PER", "score": 0.5, "word": "jo", "start": 0, "end": 2}]}]
    tokens = np.arange(6, dtype=np.float32).reshape(2, 3)
    result = pb.FeatureExtractionResult(token_embeddings=to_tensor(tokens), sentence_embedding=to_tensor(tokens[0]))
    reply = pb.PipelineResponse(feature_extraction=pb.FeatureExtractionOutput(results=[result]))
    assert output_json(reply) == [{"token_embeddings": tokens.tolist(), "sentence_embedding": [0.0, 1.0, 2.0]}]


def test_options_may_sit_between_the_texts():
    args = parse_args(["pipeline", "m", "first", "--task", "ner", "second", "--options", "{}"])
    assert (args.model, args.task, args.texts) == ("m", "ner", ["first", "second"])
