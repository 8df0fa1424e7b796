"""From a queued WorkItem to an engine request, refusing what the model cannot run.

The gateway and tokenizer already validate what a client sends; this is the
last line, for what only the worker knows (the loaded model's vocabulary
and context length, its batch size). Each refusal says which field is wrong
and what to change, and travels back as INVALID_ARGUMENT.
"""

from __future__ import annotations

from dataclasses import dataclass

from model_service.engine.beam_search import check_beam_search
from model_service.engine.forward_batcher import ForwardRequest
from model_service.engine.interface import GenerationRequest, SamplingOptions
from pipeserve.errors import InvalidArgument
from pipeserve.internal.v1 import queue_pb2
from pipeserve.queue.forward_rows import POSITIONS, rows_of


@dataclass(frozen=True)
class ModelLimits:
    model: str
    vocab_size: int
    context_length: int | None
    max_sequences: int
    """Most sequences one request may ask for (the engine's batch size)."""
    encoder_decoder: bool = False
    """A resumed sequence's published tokens go to the decoder, not after the prompt (model_service.resume)."""


EARLY_STOPPING = {
    queue_pb2.EARLY_STOPPING_UNSPECIFIED: False,
    queue_pb2.EARLY_STOPPING_TRUE: True,
    queue_pb2.EARLY_STOPPING_NEVER: "never",
}


def sampling_from_pb(pb: queue_pb2.SamplingParams) -> SamplingOptions:
    if pb.early_stopping not in EARLY_STOPPING:
        raise InvalidArgument(f"early_stopping is {pb.early_stopping}, not a known EarlyStopping value")
    return SamplingOptions(
        max_new_tokens=pb.max_new_tokens,
        do_sample=pb.do_sample,
        temperature=pb.temperature,
        top_k=pb.top_k,
        top_p=pb.top_p,
        repetition_penalty=pb.repetition_penalty,
        num_return_sequences=pb.num_return_sequences,
        seed=pb.seed if pb.HasField("seed") else None,
        eos_token_ids=frozenset(pb.eos_token_ids),
        ignore_eos=pb.ignore_eos,
        # 0 is what a work item from a tokenizer older than beam search carries: no beam search.
        num_beams=pb.num_beams or 1,
        length_penalty=pb.length_penalty,
        early_stopping=EARLY_STOPPING[pb.early_stopping],
        no_repeat_ngram_size=pb.no_repeat_ngram_size,
        min_new_tokens=pb.min_new_tokens,
    )


def request_from_work_item(item: queue_pb2.WorkItem, limits: ModelLimits) -> GenerationRequest:
    """The engine request for a work item, or InvalidArgument saying what is wrong with it."""
    prompt = list(item.prompt_token_ids)
    if not prompt:
        raise InvalidArgument("prompt_token_ids is empty: generation needs at least one prompt token")
    low, high = min(prompt), max(prompt)
    if low < 0 or high >= limits.vocab_size:
        bad = low if low < 0 else high
        raise InvalidArgument(
            f"prompt_token_ids holds {bad}, outside the vocabulary of model {limits.model!r} [0, {limits.vocab_size}); "
            "tokenize with this model's tokenizer"
        )
    sampling = sampling_from_pb(item.sampling)
    _check_sampling(sampling, limits)
    total = len(prompt) + sampling.max_new_tokens
    if limits.context_length is not None and total > limits.context_length:
        raise InvalidArgument(
            f"the prompt ({len(prompt)} tokens) plus max_new_tokens ({sampling.max_new_tokens}) is {total} tokens, "
            f"more than the context length of model {limits.model!r} ({limits.context_length}); "
            "shorten the prompt or lower max_new_tokens"
        )
    return GenerationRequest(item.request_id, prompt, sampling)


def _check_sampling(sampling: SamplingOptions, limits: ModelLimits) -> None:
    if sampling.max_new_tokens < 1:
        raise InvalidArgument(f"max_new_tokens must be at least 1, got {sampling.max_new_tokens}")
    if sampling.repetition_penalty <= 0:
        raise InvalidArgument(f"repetition_penalty must be > 0 (1 = none), got {sampling.repetition_penalty}")
    if sampling.no_repeat_ngram_size < 0:
        raise InvalidArgument(f"no_repeat_ngram_size must be >= 0 (0 = none), got {sampling.no_repeat_ngram_size}")
    if not 0 <= sampling.min_new_tokens <= sampling.max_new_tokens:
        raise InvalidArgument(
            f"min_new_tokens must be between 0 and max_new_tokens ({sampling.max_new_tokens}), "
            f"got {sampling.min_new_tokens}"
        )
    n = sampling.num_return_sequences
    if not 1 <= n <= limits.max_sequences:
        raise InvalidArgument(
            f"num_return_sequences must be between 1 and {limits.max_sequences} (this worker's batch size), got {n}"
        )
    if sampling.num_beams < 1:
        raise InvalidArgument(f"num_beams must be at least 1 (1 = no beam search), got {sampling.num_beams}")
    if sampling.num_beams > 1:
        check_beam_search(sampling)
        return
    if not sampling.do_sample:
        if n > 1:
            raise InvalidArgument(
                "num_return_sequences > 1 needs do_sample=true: greedy decoding would return identical sequences"
            )
        return
    if sampling.temperature <= 0:
        raise InvalidArgument(f"temperature must be > 0 when sampling, got {sampling.temperature}")
    if sampling.top_k < 0:
        raise InvalidArgument(f"top_k must be >= 0 (0 = no top-k filter), got {sampling.top_k}")
    if not 0 < sampling.top_p <= 1:
        raise InvalidArgument(f"top_p must be in (0, 1] (1 = no nucleus filter), got {sampling.top_p}")


# Outputs a forward work item may ask for: the heads' names in transformers' ModelOutput classes.
FORWARD_OUTPUTS = frozenset(
    {"logits", "start_logits", "end_logits", "last_hidden_state", "pooler_output", "logits_aggregation"}
)


def forward_request_from_work_item(item: queue_pb2.WorkItem, limits: ModelLimits) -> ForwardRequest:
    """The batcher request for a forward work item, or InvalidArgument.

    Checked here, not only where the rows were made, because one bad row
    would otherwise fail the forward of every request batched with it.
    """
    work = item.forward
    if not work.rows:
        raise InvalidArgument("the forward work item has no rows")
    unknown = set(work.output_names) - FORWARD_OUTPUTS or set(work.token_outputs) - set(work.output_names)
    if not work.output_names or unknown:
        raise InvalidArgument(f"output_names {list(work.output_names)} must be some of {sorted(FORWARD_OUTPUTS)}")
    rows = rows_of(work)
    # Per input, the shape of one token's values: () for most, (7,) for TAPAS's token_type_ids.
    per_token = {name: value.shape[1:] for name, value in rows[0].items() if name != POSITIONS}
    for index, row in enumerate(rows):
        input_ids = row.get("input_ids")
        if input_ids is None or input_ids.ndim != 1 or not len(input_ids):
            raise InvalidArgument(f"row {index} has no input_ids (a non-empty 1-D tensor)")
        length = len(input_ids)
        if {name for name in row if name != POSITIONS} != per_token.keys() or any(
            row[name].shape != (length, *shape) for name, shape in per_token.items()
        ):
            raise InvalidArgument(
                f"row {index}: every row needs the same inputs ({sorted(per_token)}), each with one value "
                "(or one equally shaped array) per token"
            )
        if input_ids.min() < 0 or input_ids.max() >= limits.vocab_size:
            raise InvalidArgument(
                f"row {index} holds token ids outside the vocabulary of model {limits.model!r} [0, {limits.vocab_size})"
            )
        if limits.context_length is not None and length > limits.context_length:
            raise InvalidArgument(
                f"row {index} has {length} tokens, more than model {limits.model!r} takes ({limits.context_length})"
            )
        positions = row.get(POSITIONS)
        if positions is not None and positions.max() >= length:
            raise InvalidArgument(
                f"row {index} asks for outputs at position {positions.max()}, past its {length} tokens"
            )
    return ForwardRequest(item.request_id, rows, tuple(work.output_names), tuple(work.token_outputs))
