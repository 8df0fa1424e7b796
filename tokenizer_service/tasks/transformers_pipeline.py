"""Forward tasks that transformers still ships: its own pipeline code, around a model on the meta device.

The pipeline object is built once per served model around a weightless
``meta`` copy of the model, so its ``_sanitize_parameters``, ``preprocess``
and ``postprocess`` run here unchanged while the real forward runs on a
model worker. Feeding ``postprocess`` the worker's outputs gives what
``transformers.pipeline`` gives in one process (FACTS.md), so the output
equals the pipeline's by construction, not by re-implementation.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import transformers
from google.protobuf.message import Message
from transformers.pipelines.base import ChunkPipeline, Pipeline, PipelineException

from pipeserve.errors import InvalidArgument
from pipeserve.tasks import MODEL_CLASSES
from tokenizer_service.tasks.forward import ForwardModel, ForwardTask, Prepared, Row, RowOutputs

META = torch.device("meta")


@dataclass(frozen=True)
class _PipelineState:
    # Per input item, the pipeline's preprocess output(s): several for chunk pipelines (one per label, span).
    chunks: list[list[dict[str, Any]]]
    postprocess_params: dict[str, Any]


def meta_pipeline(pipeline_class: type[Pipeline], model: ForwardModel, task: str) -> Pipeline:
    """The task's pipeline around a weightless copy of the model (no memory, no forward possible)."""
    auto_class = getattr(transformers, MODEL_CLASSES[task])
    with META:
        meta_model = auto_class.from_config(model.config, trust_remote_code=model.spec.trust_remote_code)
    return pipeline_class(model=meta_model, tokenizer=model.tokenizer, device=META, task=task)


class TransformersPipelineTask(ForwardTask):
    """A ForwardTask whose pre/post-processing is a transformers pipeline class's; subclasses map the messages."""

    pipeline_class: ClassVar[type[Pipeline]]

    def __init__(self, model: ForwardModel):
        super().__init__(model)
        self.pipeline = meta_pipeline(self.pipeline_class, model, self.task)
        self._model_inputs = tuple(model.tokenizer.model_input_names)

    @abstractmethod
    def inputs(self, input_msg: Message) -> list[Any]:
        """The pipeline's input for each item of the message (what one would pass to ``pipeline(...)``)."""

    @abstractmethod
    def parameters(self, input_msg: Message) -> dict[str, Any]:
        """The pipeline call's keyword arguments for the message's options."""

    @abstractmethod
    def to_output(self, input_msg: Message, results: list[Any]) -> Message:
        """The output message from the pipeline's result for each item."""

    def preprocess(self, input_msg: Message) -> Prepared:
        items = self.inputs(input_msg)
        if not items:
            raise InvalidArgument(f"{self.task} input has no items; send at least one")
        try:
            # Under the lock: fill-mask's targets are encoded here.
            with self.model.tokenizer_lock:
                preprocess_params, _, postprocess_params = self.pipeline._sanitize_parameters(
                    **self.parameters(input_msg)
                )
        except (PipelineException, ValueError, KeyError) as exc:
            raise InvalidArgument(f"{self.task} options rejected by model {self.model.name!r}: {exc}") from exc
        rows: list[Row] = []
        chunks_per_item = []
        for index, item in enumerate(items):
            try:
                with self.model.tokenizer_lock:
                    produced = self.pipeline.preprocess(item, **preprocess_params)
                    chunks = list(produced) if isinstance(produced, Iterator) else [produced]
            except (PipelineException, ValueError) as exc:
                raise InvalidArgument(f"{self.task} item {index}: {exc}") from exc
            rows.extend(self.row(chunk, index) for chunk in chunks)
            chunks_per_item.append(chunks)
        return Prepared(rows, _PipelineState(chunks_per_item, postprocess_params))

    def postprocess(self, input_msg: Message, state: _PipelineState, outputs: list[RowOutputs]) -> Message:
        remaining = iter(outputs)
        results = []
        for chunks in state.chunks:
            merged = [self.model_outputs(chunk, next(remaining)) for chunk in chunks]
            model_outputs = merged if isinstance(self.pipeline, ChunkPipeline) else merged[0]
            results.append(self.pipeline.postprocess(model_outputs, **state.postprocess_params))
        return self.to_output(input_msg, results)

    def row(self, chunk: dict[str, Any], index: int) -> Row:
        """The model inputs of one preprocessed chunk, without the batch axis; refuses rows the model cannot take."""
        row = {name: chunk[name][0].numpy() for name in self._model_inputs if name in chunk}
        length = len(row["input_ids"])
        limit = self.model.context_length
        if limit is not None and length > limit:
            raise InvalidArgument(
                f"{self.task} item {index} has {length} tokens, more than model {self.model.name!r} takes "
                f"({limit}); shorten it"
            )
        return row

    def model_outputs(self, chunk: dict[str, Any], outputs: RowOutputs) -> dict[str, Any]:
        """What the pipeline's ``_forward`` would have returned for this chunk: its inputs plus the outputs."""
        return {**chunk, **{name: torch.from_numpy(np.array(value))[None] for name, value in outputs.items()}}
