"""zero-shot-classification: ZeroShotClassificationPipeline's pre/post-processing.

The pipeline runs one NLI forward per (sequence, candidate label) pair;
here every pair of every sequence is a row of the request's one work item,
so the worker runs them in one batch instead of one forward each.
"""

from __future__ import annotations

from typing import Any

from transformers.pipelines import ZeroShotClassificationPipeline

from pipeserve.errors import InvalidArgument
from pipeserve.tasks import ZERO_SHOT_CLASSIFICATION
from pipeserve.v1 import pipelines_pb2
from tokenizer_service.tasks.forward import ForwardModel, Prepared
from tokenizer_service.tasks.transformers_pipeline import TransformersPipelineTask


class ZeroShotClassification(TransformersPipelineTask):
    task = ZERO_SHOT_CLASSIFICATION
    input_field = "zero_shot_classification"
    output_names = ("logits",)
    pipeline_class = ZeroShotClassificationPipeline

    def __init__(self, model: ForwardModel):
        super().__init__(model)
        self._labels = sorted(str(label) for label in model.config.id2label.values())

    def inputs(self, input_msg: pipelines_pb2.ZeroShotClassificationInput) -> list[Any]:
        return list(input_msg.sequences)

    def parameters(self, input_msg: pipelines_pb2.ZeroShotClassificationInput) -> dict[str, Any]:
        if not input_msg.candidate_labels:
            raise InvalidArgument("zero_shot_classification.candidate_labels is empty; give at least one label")
        parameters: dict[str, Any] = {
            "candidate_labels": list(input_msg.candidate_labels),
            "multi_label": input_msg.multi_label,
        }
        if input_msg.HasField("hypothesis_template"):
            template = input_msg.hypothesis_template
            if "{}" not in template:
                raise InvalidArgument(
                    f"zero_shot_classification.hypothesis_template {template!r} has no {{}} for the label to go in"
                )
            parameters["hypothesis_template"] = template
        return parameters

    def preprocess(self, input_msg: pipelines_pb2.ZeroShotClassificationInput) -> Prepared:
        if self.pipeline.entailment_id == -1:
            raise InvalidArgument(
                f"model {self.model.name!r} cannot do zero-shot-classification: none of its labels "
                f"({', '.join(self._labels)}) starts with 'entail', so it is no NLI model"
            )
        return super().preprocess(input_msg)

    def to_output(self, input_msg, results: list[dict]) -> pipelines_pb2.ZeroShotClassificationOutput:
        return pipelines_pb2.ZeroShotClassificationOutput(
            results=[
                pipelines_pb2.ZeroShotClassificationResult(
                    sequence=result["sequence"],
                    labels=[
                        pipelines_pb2.LabelScore(label=label, score=score)
                        for label, score in zip(result["labels"], result["scores"])
                    ],
                )
                for result in results
            ]
        )
