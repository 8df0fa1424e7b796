"""The interface every forward-only ("non-generation") task implements on the tokenizer side.

A forward task is the transformers pipeline cut at ``_forward``: this
process runs ``preprocess`` (text -> model rows) and ``postprocess`` (model
outputs -> typed answer), the model worker runs one forward over the rows.
Everything a postprocess needs besides the model outputs (offset mappings,
word ids, span maps, which row belongs to which input item) stays in
``Prepared.state`` inside this process; only the rows cross the queue.

A handler is built once per served model (``ForwardTask(model)``) and then
shared by concurrent requests in worker threads, so ``preprocess`` and
``postprocess`` must not mutate the handler, and must encode under
``ForwardModel.tokenizer_lock`` (see there).

How to add a task:

1. Subclass ``ForwardTask``; set ``task`` (the canonical transformers name),
   ``input_field`` (the name of its field in the ``input`` oneof of
   ``pipeserve.v1.PipelineRequest`` and of the ``output`` oneof of
   ``PipelineResponse``), ``output_names`` (what the worker returns per row,
   e.g. ``("logits",)`` or ``("start_logits", "end_logits")``) and
   ``token_outputs`` (those of them with a token axis after the batch axis,
   e.g. token-classification's ``logits``, ``start_logits``, ``end_logits``,
   ``last_hidden_state``: the worker cuts them back to each row's length).
2. ``preprocess(input_msg)`` returns ``Prepared(rows, state)``: one dict per
   model row, input name -> integer array with the token axis first
   (``input_ids``, ``attention_mask``, ``token_type_ids``, ...: [tokens], or
   [tokens, 7] for TAPAS's token types), un-padded; the worker pads rows of
   all batched requests together along the token axis and un-pads the
   outputs again.
   Raise ``pipeserve.errors.InvalidArgument`` for input the caller can fix.
   A row may carry ``POSITIONS`` (1-D integer array): its per-token outputs
   then come back at those token positions only (fill-mask needs the mask
   positions of a vocabulary-wide output, not every token's).
3. ``postprocess(input_msg, state, outputs)`` gets, for each row in order,
   a dict output name -> float32 array without the batch axis (per-token
   outputs cut back to that row's length) and returns the output message.
4. Register the class in ``tokenizer_service.tasks.registry.FORWARD_TASKS``.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from google.protobuf.message import Message
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from pipeserve.config import ModelSpec
from pipeserve.queue.forward_rows import POSITIONS, Row, RowOutputs

__all__ = ["POSITIONS", "ForwardModel", "ForwardTask", "Prepared", "Row", "RowOutputs"]

# Row: input name -> integer array, token axis first (no batch axis, no padding), plus optionally POSITIONS.
# RowOutputs: output name -> float32 array without the batch axis, cut back to the row's own length.


@dataclass(frozen=True)
class ForwardModel:
    """A served model as a forward task's pre/post-processing sees it: tokenizer and configs, never weights."""

    spec: ModelSpec
    tokenizer: PreTrainedTokenizerBase
    config: PretrainedConfig
    tokenizer_lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)
    """Hold it while encoding: a fast tokenizer keeps truncation and padding settings on the object, and a call
    that changes them while another thread encodes fails ("Already borrowed"). Every task of this model (e.g.
    text- and zero-shot-classification, which truncate differently) shares the tokenizer, hence the lock."""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def context_length(self) -> int | None:
        """Most tokens one row may hold (position embeddings); None when the config names no limit."""
        value = getattr(self.config, "max_position_embeddings", None)
        return value if isinstance(value, int) and value > 0 else None

    @classmethod
    def load(cls, spec: ModelSpec) -> ForwardModel:
        """Read the tokenizer and config only, never weights."""
        options = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
        return cls(
            spec, AutoTokenizer.from_pretrained(spec.path, **options), AutoConfig.from_pretrained(spec.path, **options)
        )


@dataclass
class Prepared:
    """A preprocessed request: the rows for the model worker, and what postprocess needs besides their outputs."""

    rows: list[Row]
    state: Any


class ForwardTask(ABC):
    """One forward-only task for one served model (see the module docstring)."""

    task: ClassVar[str]
    input_field: ClassVar[str]
    output_names: ClassVar[tuple[str, ...]]
    token_outputs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: ForwardModel):
        self.model = model

    @abstractmethod
    def preprocess(self, input_msg: Message) -> Prepared:
        """Model rows for every item of the input message, or InvalidArgument."""

    @abstractmethod
    def postprocess(self, input_msg: Message, state: Any, outputs: list[RowOutputs]) -> Message:
        """The task's output message from the rows' outputs (same order as ``Prepared.rows``)."""
