"""Request checks that run before any downstream call.

A bad request costs no tokenizer call and no queue slot, and its error names
the field, the value and what is allowed, so the caller can fix it without
reading our code. Checks that need the model's own configuration (context
length, chat template, generation defaults) belong to the tokenizer
service's Preprocess.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gateway.config import GatewaySettings
from pipeserve.config import ModelSpec, require_model
from pipeserve.errors import InvalidArgument
from pipeserve.v1 import generation_pb2, types_pb2


@dataclass(frozen=True)
class RequestLimits:
    """The bounds a request must stay within; the setting behind each is named in its error."""

    max_new_tokens: int = 4096
    max_num_return_sequences: int = 16
    max_stop_strings: int = 16
    max_stop_length: int = 256
    max_chat_messages: int = 512
    max_prompt_chars: int = 1_000_000
    max_eos_token_ids: int = 64
    max_pipeline_rows: int = 256
    max_beams: int = 8

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> RequestLimits:
        return cls(
            max_new_tokens=settings.max_new_tokens_limit,
            max_num_return_sequences=settings.max_num_return_sequences,
            max_stop_strings=settings.max_stop_strings,
            max_stop_length=settings.max_stop_length,
            max_chat_messages=settings.max_chat_messages,
            max_prompt_chars=settings.max_prompt_chars,
            max_eos_token_ids=settings.max_eos_token_ids,
            max_pipeline_rows=settings.max_pipeline_rows,
            max_beams=settings.max_beams,
        )


def validate_generation_request(request, models: dict[str, ModelSpec], limits: RequestLimits) -> ModelSpec:
    """Check a GenerateRequest or GenerateStreamRequest (same fields); return the model's spec."""
    spec = validate_model(request.model, models)
    validate_input(request, limits)
    validate_parameters(request.parameters, limits)
    return spec


def validate_tokenize_request(request, models: dict[str, ModelSpec], limits: RequestLimits) -> ModelSpec:
    spec = validate_model(request.model, models)
    validate_input(request, limits)
    return spec


def validate_model(name: str, models: dict[str, ModelSpec]) -> ModelSpec:
    if not name:
        served = ", ".join(sorted(models))
        raise InvalidArgument(f"model is empty; set it to one of the served models: {served}")
    return require_model(models, name)


def validate_input(request, limits: RequestLimits) -> None:
    """The `input` oneof: a non-empty prompt, or a chat with at least one message, each with a role."""
    which = request.WhichOneof("input")
    if which is None:
        raise InvalidArgument("no input: set either prompt (raw text) or chat (messages)")
    if which == "prompt":
        _check_prompt(request.prompt, limits)
    else:
        _check_chat(request.chat, limits)


def _check_prompt(prompt: str, limits: RequestLimits) -> None:
    if not prompt:
        raise InvalidArgument("prompt is empty; send the text to continue")
    if len(prompt) > limits.max_prompt_chars:
        raise InvalidArgument(
            f"prompt has {len(prompt)} characters; at most {limits.max_prompt_chars} are accepted "
            "(PIPESERVE_MAX_PROMPT_CHARS)"
        )


def _check_chat(chat: types_pb2.Chat, limits: RequestLimits) -> None:
    count = len(chat.messages)
    if count == 0:
        raise InvalidArgument("chat has no messages; send at least one, e.g. {role: 'user', content: '...'}")
    if count > limits.max_chat_messages:
        raise InvalidArgument(
            f"chat has {count} messages; at most {limits.max_chat_messages} are accepted (PIPESERVE_MAX_CHAT_MESSAGES)"
        )
    for position, message in enumerate(chat.messages):
        if not message.role:
            raise InvalidArgument(
                f"chat.messages[{position}].role is empty; set a role the chat template accepts, e.g. 'user'"
            )
    chars = sum(len(message.content) for message in chat.messages)
    if chars > limits.max_prompt_chars:
        raise InvalidArgument(
            f"chat messages have {chars} characters of content together; at most {limits.max_prompt_chars} "
            "are accepted (PIPESERVE_MAX_PROMPT_CHARS)"
        )


def validate_parameters(params: generation_pb2.GenerationParameters, limits: RequestLimits) -> None:
    """Generation options; unset fields mean "the model's default" and are not checked here."""
    for name in ("temperature", "top_p", "repetition_penalty", "length_penalty"):
        if params.HasField(name) and not math.isfinite(getattr(params, name)):
            raise InvalidArgument(f"parameters.{name} is {getattr(params, name)}; it must be a finite number")

    if params.HasField("max_new_tokens") and not 1 <= params.max_new_tokens <= limits.max_new_tokens:
        raise InvalidArgument(
            f"parameters.max_new_tokens is {params.max_new_tokens}; it must be between 1 and "
            f"{limits.max_new_tokens} (PIPESERVE_MAX_NEW_TOKENS_LIMIT), or unset for the model's default"
        )

    sampling = params.HasField("do_sample") and params.do_sample
    if params.HasField("temperature"):
        if params.temperature < 0:
            raise InvalidArgument(f"parameters.temperature is {params.temperature:g}; it must be > 0")
        if sampling and params.temperature == 0:
            raise InvalidArgument(
                "parameters.temperature is 0 with do_sample=true; sampling needs temperature > 0 "
                "(set do_sample=false for greedy decoding)"
            )

    if params.HasField("top_p") and not 0 < params.top_p <= 1:
        raise InvalidArgument(f"parameters.top_p is {params.top_p:g}; it must be in (0, 1] (1 disables it)")
    if params.HasField("top_k") and params.top_k < 0:
        raise InvalidArgument(f"parameters.top_k is {params.top_k}; it must be >= 0 (0 disables it)")
    if params.HasField("repetition_penalty") and params.repetition_penalty <= 0:
        raise InvalidArgument(
            f"parameters.repetition_penalty is {params.repetition_penalty:g}; it must be > 0 (1 disables it)"
        )

    beams = params.num_beams if params.HasField("num_beams") else None
    if beams is not None:
        if not 1 <= beams <= limits.max_beams:
            raise InvalidArgument(
                f"parameters.num_beams is {beams}; it must be between 1 (no beam search) and {limits.max_beams} "
                "(PIPESERVE_MAX_BEAMS)"
            )
        if beams > 1 and sampling:
            raise InvalidArgument(
                f"parameters.num_beams is {beams} with do_sample=true: beam sampling is not served; "
                "set do_sample=false for beam search, or num_beams=1 to sample"
            )
        if beams > 1 and params.ignore_eos:
            raise InvalidArgument(
                f"parameters.ignore_eos is true with num_beams {beams}: ignore_eos is not served with beam search"
            )

    if params.HasField("num_return_sequences"):
        n = params.num_return_sequences
        if not 1 <= n <= limits.max_num_return_sequences:
            raise InvalidArgument(
                f"parameters.num_return_sequences is {n}; it must be between 1 and "
                f"{limits.max_num_return_sequences} (PIPESERVE_MAX_NUM_RETURN_SEQUENCES)"
            )
        if beams is not None and beams > 1 and n > beams:
            raise InvalidArgument(
                f"parameters.num_return_sequences is {n}, more than num_beams ({beams}): a beam search "
                "returns at most num_beams sequences"
            )
        # Unset, do_sample and num_beams are the model's defaults (a summarization task's may be a beam search):
        # the tokenizer service checks the resolved values.
        if n > 1 and beams == 1 and params.HasField("do_sample") and not params.do_sample:
            raise InvalidArgument(
                f"parameters.num_return_sequences is {n} with do_sample=false and num_beams=1; greedy decoding "
                "would return the same sequence every time, so set do_sample=true, or num_beams >= "
                "num_return_sequences for the best beams (or num_return_sequences=1)"
            )

    if params.HasField("no_repeat_ngram_size") and params.no_repeat_ngram_size < 0:
        raise InvalidArgument(
            f"parameters.no_repeat_ngram_size is {params.no_repeat_ngram_size}; it must be >= 0 (0 disables it)"
        )
    if params.HasField("min_new_tokens"):
        if params.HasField("max_new_tokens"):
            most, bound = params.max_new_tokens, "max_new_tokens"
        else:
            most, bound = limits.max_new_tokens, "PIPESERVE_MAX_NEW_TOKENS_LIMIT"
        if not 0 <= params.min_new_tokens <= most:
            raise InvalidArgument(
                f"parameters.min_new_tokens is {params.min_new_tokens}; it must be between 0 (no minimum) and "
                f"{bound} ({most})"
            )

    _check_stop(params.stop, limits)

    if len(params.eos_token_id) > limits.max_eos_token_ids:
        raise InvalidArgument(
            f"parameters.eos_token_id has {len(params.eos_token_id)} ids; at most {limits.max_eos_token_ids} "
            "are accepted (PIPESERVE_MAX_EOS_TOKEN_IDS)"
        )
    for position, token_id in enumerate(params.eos_token_id):
        if token_id < 0:
            raise InvalidArgument(f"parameters.eos_token_id[{position}] is {token_id}; token ids are >= 0")


def _check_stop(stop, limits: RequestLimits) -> None:
    if len(stop) > limits.max_stop_strings:
        raise InvalidArgument(
            f"parameters.stop has {len(stop)} strings; at most {limits.max_stop_strings} are accepted "
            "(PIPESERVE_MAX_STOP_STRINGS)"
        )
    for position, text in enumerate(stop):
        if not text:
            raise InvalidArgument(f"parameters.stop[{position}] is empty; an empty stop string would stop at once")
        if len(text) > limits.max_stop_length:
            raise InvalidArgument(
                f"parameters.stop[{position}] has {len(text)} characters; at most {limits.max_stop_length} "
                "are accepted (PIPESERVE_MAX_STOP_LENGTH)"
            )
