"""fill-mask: FillMaskPipeline's pre/post-processing; only the mask positions' logits cross the queue.

A masked LM's logits are vocabulary-wide for every token (30k floats per
token for BERT); postprocess reads them at the mask tokens only, so the row
asks the worker for those positions, and the full-shaped tensor the pipeline
indexes is rebuilt here with the other positions left at zero (never read).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers.pipelines import FillMaskPipeline

from pipeserve.errors import InvalidArgument
from pipeserve.tasks import FILL_MASK
from pipeserve.v1 import pipelines_pb2
from tokenizer_service.tasks.forward import POSITIONS, ForwardModel, Row, RowOutputs
from tokenizer_service.tasks.transformers_pipeline import TransformersPipelineTask


class FillMask(TransformersPipelineTask):
    task = FILL_MASK
    input_field = "fill_mask"
    output_names = ("logits",)
    token_outputs = ("logits",)
    pipeline_class = FillMaskPipeline

    def __init__(self, model: ForwardModel):
        if model.tokenizer.mask_token_id is None:
            raise InvalidArgument(f"model {model.name!r}'s tokenizer has no mask token, so it cannot do fill-mask")
        super().__init__(model)

    def inputs(self, input_msg: pipelines_pb2.FillMaskInput) -> list[Any]:
        return list(input_msg.texts)

    def parameters(self, input_msg: pipelines_pb2.FillMaskInput) -> dict[str, Any]:
        parameters: dict[str, Any] = {}
        if input_msg.HasField("top_k"):
            if input_msg.top_k < 1:
                raise InvalidArgument("fill_mask.top_k must be at least 1")
            parameters["top_k"] = input_msg.top_k
        if input_msg.targets:
            parameters["targets"] = list(input_msg.targets)
        return parameters

    def row(self, chunk: dict[str, Any], index: int) -> Row:
        row = super().row(chunk, index)
        row[POSITIONS] = np.flatnonzero(row["input_ids"] == self.model.tokenizer.mask_token_id)
        return row

    def model_outputs(self, chunk: dict[str, Any], outputs: RowOutputs) -> dict[str, Any]:
        input_ids = chunk["input_ids"][0].numpy()
        at_masks = outputs["logits"]
        logits = torch.zeros((1, len(input_ids), at_masks.shape[-1]), dtype=torch.float32)
        logits[0, np.flatnonzero(input_ids == self.model.tokenizer.mask_token_id)] = torch.from_numpy(
            np.array(at_masks)
        )
        return {**chunk, "logits": logits}

    def to_output(self, input_msg, results: list[list]) -> pipelines_pb2.FillMaskOutput:
        output = pipelines_pb2.FillMaskOutput()
        for result in results:
            # One mask gives a flat list of candidates, several a list per mask.
            per_mask = result if result and isinstance(result[0], list) else [result]
            output.results.add(
                masks=[
                    pipelines_pb2.MaskPredictions(
                        candidates=[
                            pipelines_pb2.FillMaskCandidate(
                                score=c["score"],
                                token=int(c["token"]),
                                token_str=c["token_str"],
                                sequence=c["sequence"],
                            )
                            for c in candidates
                        ]
                    )
                    for candidates in per_mask
                ]
            )
        return output
