"""Generation options resolved against a model's generation_config, the way generate() resolves them.

Priority, as in ``GenerationMixin._prepare_generation_config``: the
request's value, else the model's ``generation_config.json``, else
transformers' global default. The gateway has already rejected values that
are out of range for any model; what is checked here depends on the model
(its context length and vocabulary), and combinations that only the
resolved values show (a beam search on a model that samples by default).
"""

from __future__ import annotations

from transformers import GenerationConfig

from pipeserve.errors import InvalidArgument
from pipeserve.internal.v1 import queue_pb2
from pipeserve.v1 import generation_pb2

# transformers' defaults for fields a generation_config.json leaves unset (pinned version; see pyproject).
GLOBAL_DEFAULTS = GenerationConfig._get_default_generation_params()
# Sampling at a lower temperature is argmax in all but ties (vLLM's _SAMPLING_EPS), and dividing the logits
# by such a temperature (1e-45 is a valid float32) overflows to inf: such requests decode greedily.
GREEDY_BELOW_TEMPERATURE = 1e-5
EARLY_STOPPING = {
    False: queue_pb2.EARLY_STOPPING_UNSPECIFIED,
    True: queue_pb2.EARLY_STOPPING_TRUE,
    "never": queue_pb2.EARLY_STOPPING_NEVER,
}


def resolve_sampling(
    params: generation_pb2.GenerationParameters,
    config: GenerationConfig,
    *,
    prompt_length: int,
    context_length: int | None,
    vocab_size: int,
    tokenizer_eos_id: int | None,
) -> queue_pb2.SamplingParams:
    """Every option the engine needs, nothing left unset."""
    max_new_tokens = resolve_max_new_tokens(params, config, prompt_length, context_length)
    sampling = queue_pb2.SamplingParams(
        max_new_tokens=max_new_tokens,
        do_sample=bool(_resolve(params, config, "do_sample")),
        temperature=float(_resolve(params, config, "temperature")),
        top_k=int(_resolve(params, config, "top_k")),
        top_p=float(_resolve(params, config, "top_p")),
        repetition_penalty=float(_resolve(params, config, "repetition_penalty")),
        num_return_sequences=resolve_num_return_sequences(params, config),
        eos_token_ids=resolve_eos_token_ids(params, config, vocab_size, tokenizer_eos_id),
        ignore_eos=params.ignore_eos,
        num_beams=int(_resolve(params, config, "num_beams")),
        length_penalty=float(_resolve(params, config, "length_penalty")),
        early_stopping=resolve_early_stopping(params, config),
        no_repeat_ngram_size=int(_resolve(params, config, "no_repeat_ngram_size")),
        min_new_tokens=resolve_min_new_tokens(params, config, prompt_length, max_new_tokens),
    )
    if params.HasField("seed"):
        sampling.seed = params.seed
    if sampling.do_sample and sampling.temperature < GREEDY_BELOW_TEMPERATURE:
        sampling.do_sample = False
    check_decoding_mode(sampling)
    return sampling


def check_decoding_mode(sampling: queue_pb2.SamplingParams) -> None:
    """What num_beams, do_sample and num_return_sequences allow together once the model's defaults are in (the
    gateway checked what a request sets itself)."""
    beams, count = sampling.num_beams, sampling.num_return_sequences
    if beams < 1:
        raise InvalidArgument(f"num_beams must be at least 1 (1 = no beam search), got {beams}")
    if beams == 1:
        if count > 1 and not sampling.do_sample:
            raise InvalidArgument(
                f"num_return_sequences is {count} with greedy decoding (unset options take the model's "
                "generation_config values), which would return the same sequence every time: set do_sample=true, "
                "or num_beams >= num_return_sequences for the best beams (or num_return_sequences=1)"
            )
        return
    if sampling.do_sample:
        raise InvalidArgument(
            f"num_beams is {beams} with do_sample=true (unset options take the model's generation_config values): "
            "beam sampling is not served; set do_sample=false for beam search, or num_beams=1 to sample"
        )
    if sampling.ignore_eos:
        raise InvalidArgument(f"ignore_eos is not served with beam search (num_beams is {beams}); unset it")
    if count > beams:
        raise InvalidArgument(
            f"num_return_sequences is {count}, more than num_beams ({beams}): "
            "a beam search returns at most num_beams sequences"
        )


def resolve_early_stopping(params: generation_pb2.GenerationParameters, config: GenerationConfig) -> int:
    value = _resolve(params, config, "early_stopping")
    if value not in EARLY_STOPPING:
        raise InvalidArgument(
            f"the model's generation_config has early_stopping={value!r}; transformers takes true, false or 'never'"
        )
    return EARLY_STOPPING[value]


def resolve_min_new_tokens(
    params: generation_pb2.GenerationParameters, config: GenerationConfig, prompt_length: int, max_new_tokens: int
) -> int:
    """As generate() counts it: min_new_tokens if set, else min_length less the prompt.

    A model default past max_new_tokens is cut to it (the same thing: the
    end-of-sequence token is banned for every step); a request's own is refused.
    """
    if params.HasField("min_new_tokens"):
        requested = params.min_new_tokens
        if not 0 <= requested <= max_new_tokens:
            raise InvalidArgument(
                f"min_new_tokens is {requested}; it must be between 0 and max_new_tokens ({max_new_tokens})"
            )
        return requested
    if config.min_new_tokens is not None:
        default = int(config.min_new_tokens)
    else:
        default = int(_model_default(config, "min_length")) - prompt_length
    return min(max(default, 0), max_new_tokens)


def resolve_num_return_sequences(params: generation_pb2.GenerationParameters, config: GenerationConfig) -> int:
    count = int(_resolve(params, config, "num_return_sequences"))
    if count < 1:
        raise InvalidArgument(f"num_return_sequences must be at least 1, got {count}")
    return count


def resolve_max_new_tokens(
    params: generation_pb2.GenerationParameters,
    config: GenerationConfig,
    prompt_length: int,
    context_length: int | None,
) -> int:
    """An explicit value must fit the context; a model default is clamped to it, as generate() clamps."""
    room = None if context_length is None else context_length - prompt_length
    if params.HasField("max_new_tokens"):
        requested = params.max_new_tokens
        if requested < 1:
            raise InvalidArgument(f"max_new_tokens must be at least 1, got {requested}")
        if room is not None and requested > room:
            raise InvalidArgument(
                f"max_new_tokens={requested} does not fit the model's context of {context_length} tokens: "
                f"the prompt has {prompt_length} tokens, so at most {room} new tokens fit"
            )
        return requested
    if config.max_new_tokens is not None:
        default = int(config.max_new_tokens)
    elif config.max_length is not None:
        default = int(config.max_length) - prompt_length
        if default < 1:
            raise InvalidArgument(
                f"the prompt has {prompt_length} tokens, but the model's generation_config limits prompt plus "
                f"generation to max_length={config.max_length}; set max_new_tokens"
            )
    else:
        # generate() counts its global default max_length as new tokens when the model sets neither.
        default = GLOBAL_DEFAULTS["max_length"]
    return default if room is None else max(1, min(default, room))


def resolve_eos_token_ids(
    params: generation_pb2.GenerationParameters,
    config: GenerationConfig,
    vocab_size: int,
    tokenizer_eos_id: int | None,
) -> list[int]:
    if params.eos_token_id:
        outside = [token_id for token_id in params.eos_token_id if not 0 <= token_id < vocab_size]
        if outside:
            raise InvalidArgument(
                f"eos_token_id {outside[0]} is outside the model's vocabulary (ids 0 to {vocab_size - 1})"
            )
        return list(params.eos_token_id)
    eos = config.eos_token_id if config.eos_token_id is not None else tokenizer_eos_id
    if eos is None:
        return []
    return [int(eos)] if isinstance(eos, int) else [int(token_id) for token_id in eos]


def _resolve(params: generation_pb2.GenerationParameters, config: GenerationConfig, name: str):
    if params.HasField(name):
        return getattr(params, name)
    return _model_default(config, name)


def _model_default(config: GenerationConfig, name: str):
    value = getattr(config, name, None)
    return GLOBAL_DEFAULTS[name] if value is None else value
