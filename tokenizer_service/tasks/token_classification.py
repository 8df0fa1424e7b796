"""token-classification (alias ner): TokenClassificationPipeline's pre/post-processing, offsets included."""

from __future__ import annotations

from typing import Any

from transformers.pipelines import TokenClassificationPipeline

from pipeserve.tasks import TOKEN_CLASSIFICATION
from pipeserve.v1 import pipelines_pb2
from tokenizer_service.tasks.transformers_pipeline import TransformersPipelineTask

STRATEGIES = {
    pipelines_pb2.AGGREGATION_STRATEGY_UNSPECIFIED: "none",
    pipelines_pb2.AGGREGATION_STRATEGY_NONE: "none",
    pipelines_pb2.AGGREGATION_STRATEGY_SIMPLE: "simple",
    pipelines_pb2.AGGREGATION_STRATEGY_FIRST: "first",
    pipelines_pb2.AGGREGATION_STRATEGY_AVERAGE: "average",
    pipelines_pb2.AGGREGATION_STRATEGY_MAX: "max",
}


class TokenClassification(TransformersPipelineTask):
    task = TOKEN_CLASSIFICATION
    input_field = "token_classification"
    output_names = ("logits",)
    token_outputs = ("logits",)
    pipeline_class = TokenClassificationPipeline

    def inputs(self, input_msg: pipelines_pb2.TokenClassificationInput) -> list[Any]:
        return list(input_msg.texts)

    def parameters(self, input_msg: pipelines_pb2.TokenClassificationInput) -> dict[str, Any]:
        parameters: dict[str, Any] = {"aggregation_strategy": STRATEGIES[input_msg.aggregation_strategy]}
        if input_msg.HasField("ignore_labels"):
            parameters["ignore_labels"] = list(input_msg.ignore_labels.labels)
        if input_msg.HasField("stride"):
            parameters["stride"] = input_msg.stride
        return parameters

    def to_output(self, input_msg, results: list[list[dict]]) -> pipelines_pb2.TokenClassificationOutput:
        return pipelines_pb2.TokenClassificationOutput(
            results=[
                pipelines_pb2.TokenClassificationResult(entities=[_entity(e) for e in result]) for result in results
            ]
        )


def _entity(entity: dict[str, Any]) -> pipelines_pb2.Entity:
    """One pipeline entity; "entity" (per token) and "entity_group" (aggregated) both become ``label``."""
    message = pipelines_pb2.Entity(
        label=entity.get("entity_group", entity.get("entity")),
        score=float(entity["score"]),
        word=entity["word"],
        start=entity["start"] or 0,
        end=entity["end"] or 0,
    )
    if "index" in entity:
        message.index = int(entity["index"])
    return message
