"""text-classification (alias sentiment-analysis): TextClassificationPipeline's pre/post-processing."""

from __future__ import annotations

from typing import Any

from transformers.pipelines import TextClassificationPipeline

from pipeserve.tasks import TEXT_CLASSIFICATION
from pipeserve.v1 import pipelines_pb2
from tokenizer_service.tasks.transformers_pipeline import TransformersPipelineTask

FUNCTIONS = {
    pipelines_pb2.CLASSIFICATION_FUNCTION_SIGMOID: "sigmoid",
    pipelines_pb2.CLASSIFICATION_FUNCTION_SOFTMAX: "softmax",
    pipelines_pb2.CLASSIFICATION_FUNCTION_NONE: "none",
}


class TextClassification(TransformersPipelineTask):
    task = TEXT_CLASSIFICATION
    input_field = "text_classification"
    output_names = ("logits",)
    pipeline_class = TextClassificationPipeline

    def inputs(self, input_msg: pipelines_pb2.TextClassificationInput) -> list[Any]:
        return [
            {"text": item.text, "text_pair": item.text_pair} if item.HasField("text_pair") else item.text
            for item in input_msg.items
        ]

    def parameters(self, input_msg: pipelines_pb2.TextClassificationInput) -> dict[str, Any]:
        # Always the list form (top_k given): one message type whether one label or all are asked for.
        top_k = input_msg.top_k if input_msg.HasField("top_k") else 1
        parameters: dict[str, Any] = {"top_k": top_k or None}
        if input_msg.function_to_apply:
            parameters["function_to_apply"] = FUNCTIONS[input_msg.function_to_apply]
        if input_msg.truncation:
            parameters["truncation"] = True  # a tokenizer argument: the pipeline passes it to preprocess
        return parameters

    def to_output(self, input_msg, results: list[list[dict]]) -> pipelines_pb2.TextClassificationOutput:
        return pipelines_pb2.TextClassificationOutput(
            results=[
                pipelines_pb2.TextClassificationResult(
                    labels=[pipelines_pb2.LabelScore(label=str(r["label"]), score=r["score"]) for r in result]
                )
                for result in results
            ]
        )
