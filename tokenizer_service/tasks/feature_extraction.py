"""feature-extraction: FeatureExtractionPipeline's token embeddings, plus a mean-pooled sentence embedding.

The pooled embedding is sentence-transformers' mean pooling: the mean of
the token embeddings over the attention mask (all of a row's tokens, since
rows cross the queue un-padded), then optionally scaled to unit L2 norm.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers.modeling_outputs import BaseModelOutput
from transformers.pipelines import FeatureExtractionPipeline

from pipeserve.tasks import FEATURE_EXTRACTION
from pipeserve.tensors import to_tensor
from pipeserve.v1 import pipelines_pb2
from tokenizer_service.tasks.forward import RowOutputs
from tokenizer_service.tasks.transformers_pipeline import TransformersPipelineTask

HIDDEN = "last_hidden_state"


class FeatureExtraction(TransformersPipelineTask):
    task = FEATURE_EXTRACTION
    input_field = "feature_extraction"
    output_names = (HIDDEN,)
    token_outputs = (HIDDEN,)
    pipeline_class = FeatureExtractionPipeline

    def inputs(self, input_msg: pipelines_pb2.FeatureExtractionInput) -> list[Any]:
        return list(input_msg.texts)

    def parameters(self, input_msg: pipelines_pb2.FeatureExtractionInput) -> dict[str, Any]:
        return {"return_tensors": True, "truncation": input_msg.truncation or None}

    def model_outputs(self, chunk: dict[str, Any], outputs: RowOutputs) -> BaseModelOutput:
        # The pipeline's postprocess takes the forward's first output by position, as a ModelOutput allows.
        return BaseModelOutput(last_hidden_state=torch.from_numpy(np.array(outputs[HIDDEN]))[None])

    def to_output(self, input_msg, results: list[torch.Tensor]) -> pipelines_pb2.FeatureExtractionOutput:
        output = pipelines_pb2.FeatureExtractionOutput()
        for hidden in results:
            tokens = hidden[0].float().numpy()
            sentence = tokens.mean(axis=0)
            if input_msg.normalize:
                sentence = sentence / max(float(np.linalg.norm(sentence)), 1e-12)
            output.results.add(token_embeddings=to_tensor(tokens), sentence_embedding=to_tensor(sentence))
        return output
