"""The gateway's checks of a PipelineRequest: model, task (aliases, the model's default), input, sizes."""

from __future__ import annotations

import pytest

from gateway.pipeline_validation import validate_pipeline_request
from gateway.validation import RequestLimits
from pipeserve.config import ModelSpec
from pipeserve.errors import InvalidArgument, NotFound
from pipeserve.v1 import pipelines_pb2 as pb

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
