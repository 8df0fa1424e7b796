"""Every request rule: what is refused, with a message naming the field, the value and what is allowed."""

from __future__ import annotations

import math

import pytest

from gateway.config import GatewaySettings
from gateway.validation import RequestLimits, validate_generation_request, validate_tokenize_request
from pipeserve.config import ModelSpec
from pipeserve.errors import InvalidArgument, NotFound
from pipeserve.v1 import generation_pb2, models_pb2, types_pb2

MODELS = {
    "tiny-llama": ModelSpec(name="tiny-llama", path="/models/tiny-llama"),
    "tiny-bert": ModelSpec(name="tiny-bert", path="/models/tiny-bert", task="text-classification"),
}
LIMITS = RequestLimits(
    max_new_tokens=100,
    max_num_return_sequences=4,
    max_stop_strings=2,
    max_stop_length=5,
    max_chat_messages=3,
    max_prompt_chars=20,
    max_beams=4,
)


def chat(*messages: tuple[str, str]) -> types_pb2.Chat:
    return types_pb2.Chat(messages=[types_pb2.ChatMessage(role=role, content=content) for role, content in messages])


def request(message_type=generation_pb2.GenerateRequest, **fields):
    fields.setdefault("model", "tiny-llama")
    if "chat" not in fields and "no_input" not in fields:
        fields.setdefault("prompt", "hello")
    fields.pop("no_input", None)
    return message_type(**fields)


def params(**fields) -> generation_pb2.GenerationParameters:
    return generation_pb2.GenerationParameters(**fields)


def rejected(req) -> str:
    with pytest.raises(InvalidArgument) as raised:
        validate_generation_request(req, MODELS, LIMITS)
    return raised.value.message


@pytest.mark.parametrize("message_type", [generation_pb2.GenerateRequest, generation_pb2.GenerateStreamRequest])
def test_a_plain_request_passes_and_returns_its_model(message_type):
    assert validate_generation_request(request(message_type), MODELS, LIMITS).name == "tiny-llama"


def test_a_request_at_every_limit_passes():
    req = request(
        prompt="x" * 20,
        parameters=params(
            max_new_tokens=100,
            do_sample=True,
            temperature=0.01,
            top_k=0,
            top_p=1.0,
            repetition_penalty=0.5,
            num_beams=1,
            num_return_sequences=4,
            seed=2**64 - 1,
            stop=["abcde", "x"],
            eos_token_id=[0, 2],
        ),
    )
    validate_generation_request(req, MODELS, LIMITS)


def test_a_chat_at_its_limits_passes():
    req = request(chat=chat(("system", ""), ("user", "x" * 10), ("assistant", "y" * 10)))
    validate_generation_request(req, MODELS, LIMITS)


@pytest.mark.parametrize(
    ("req", "expected"),
    [
        # The model.
        (request(model=""), "model is empty; set it to one of the served models: tiny-bert, tiny-llama"),
        # The input.
        (request(no_input=True), "no input: set either prompt (raw text) or chat (messages)"),
        (request(prompt=""), "prompt is empty"),
        (request(prompt="x" * 21), "prompt has 21 characters; at most 20 are accepted (PIPESERVE_MAX_PROMPT_CHARS)"),
        (request(chat=types_pb2.Chat()), "chat has no messages"),
        (request(chat=chat(*[("user", "a")] * 4)), "chat has 4 messages; at most 3 are accepted"),
        (request(chat=chat(("user", "a"), ("", "b"))), "chat.messages[1].role is empty"),
        (request(chat=chat(("user", "x" * 15), ("user", "y" * 6))), "chat messages have 21 characters of content"),
        # max_new_tokens: negative, zero, huge.
        (
            request(parameters=params(max_new_tokens=-5)),
            "parameters.max_new_tokens is -5; it must be between 1 and 100",
        ),
        (request(parameters=params(max_new_tokens=0)), "parameters.max_new_tokens is 0; it must be between 1 and 100"),
        (request(parameters=params(max_new_tokens=2**31 - 1)), "parameters.max_new_tokens is 2147483647"),
        (request(parameters=params(max_new_tokens=101)), "parameters.max_new_tokens is 101"),
        # temperature.
        (request(parameters=params(do_sample=True, temperature=0)), "parameters.temperature is 0 with do_sample=true"),
        (request(parameters=params(temperature=-1)), "parameters.temperature is -1; it must be > 0"),
        (request(parameters=params(do_sample=True, temperature=-0.5)), "parameters.temperature is -0.5"),
        # Non-finite floats anywhere.
        (request(parameters=params(temperature=math.nan)), "parameters.temperature is nan; it must be a finite number"),
        (request(parameters=params(temperature=math.inf)), "parameters.temperature is inf"),
        (request(parameters=params(top_p=math.nan)), "parameters.top_p is nan"),
        (request(parameters=params(repetition_penalty=-math.inf)), "parameters.repetition_penalty is -inf"),
        # top_p in (0, 1].
        (request(parameters=params(top_p=0)), "parameters.top_p is 0; it must be in (0, 1]"),
        (request(parameters=params(top_p=1.5)), "parameters.top_p is 1.5; it must be in (0, 1]"),
        (request(parameters=params(top_p=-0.1)), "parameters.top_p is -0.1"),
        # top_k >= 0.
        (request(parameters=params(top_k=-1)), "parameters.top_k is -1; it must be >= 0"),
        # repetition_penalty > 0.
        (request(parameters=params(repetition_penalty=0)), "parameters.repetition_penalty is 0; it must be > 0"),
        (request(parameters=params(repetition_penalty=-1)), "parameters.repetition_penalty is -1"),
        # Beam search.
        (
            request(parameters=params(num_beams=5)),
            "parameters.num_beams is 5; it must be between 1 (no beam search) and 4 (PIPESERVE_MAX_BEAMS)",
        ),
        (request(parameters=params(num_beams=0)), "parameters.num_beams is 0; it must be between 1"),
        (request(parameters=params(num_beams=-(2**31))), "parameters.num_beams is -2147483648"),
        (
            request(parameters=params(num_beams=2, do_sample=True)),
            (
                "parameters.num_beams is 2 with do_sample=true: beam sampling is not served; "
                "set do_sample=false for beam search, or num_beams=1 to sample"
            ),
        ),
        (
            request(parameters=params(num_beams=2, ignore_eos=True)),
            "parameters.ignore_eos is true with num_beams 2: ignore_eos is not served with beam search",
        ),
        (
            request(parameters=params(num_beams=2, num_return_sequences=3)),
            "parameters.num_return_sequences is 3, more than num_beams (2)",
        ),
        (request(parameters=params(length_penalty=math.nan)), "parameters.length_penalty is nan; it must be a finite"),
        (request(parameters=params(length_penalty=-math.inf)), "parameters.length_penalty is -inf"),
        # N-gram and minimum-length bans.
        (
            request(parameters=params(no_repeat_ngram_size=-1)),
            "parameters.no_repeat_ngram_size is -1; it must be >= 0 (0 disables it)",
        ),
        (
            request(parameters=params(min_new_tokens=-1)),
            "parameters.min_new_tokens is -1; it must be between 0 (no minimum) and PIPESERVE_MAX_NEW_TOKENS_LIMIT (100)",
        ),
        (
            request(parameters=params(min_new_tokens=11, max_new_tokens=10)),
            "parameters.min_new_tokens is 11; it must be between 0 (no minimum) and max_new_tokens (10)",
        ),
        (request(parameters=params(min_new_tokens=101)), "parameters.min_new_tokens is 101"),
        # num_return_sequences.
        (
            request(parameters=params(do_sample=True, num_return_sequences=0)),
            "parameters.num_return_sequences is 0; it must be between 1 and 4",
        ),
        (request(parameters=params(do_sample=True, num_return_sequences=5)), "parameters.num_return_sequences is 5"),
        (
            request(parameters=params(do_sample=False, num_beams=1, num_return_sequences=2)),
            "num_return_sequences is 2 with do_sample=false and num_beams=1; greedy decoding would return",
        ),
        # Stop strings.
        (request(parameters=params(stop=["a", "b", "c"])), "parameters.stop has 3 strings; at most 2 are accepted"),
        (request(parameters=params(stop=["a", ""])), "parameters.stop[1] is empty"),
        (request(parameters=params(stop=["abcdef"])), "parameters.stop[0] has 6 characters; at most 5 are accepted"),
        # eos_token_id.
        (request(parameters=params(eos_token_id=[2, -1])), "parameters.eos_token_id[1] is -1; token ids are >= 0"),
        (request(parameters=params(eos_token_id=[2] * 65)), "parameters.eos_token_id has 65 ids; at most 64"),
    ],
)
def test_rule(req, expected):
    assert expected in rejected(req)


@pytest.mark.parametrize(
    "parameters",
    [
        params(num_beams=4, num_return_sequences=4, length_penalty=-2.5, early_stopping=True),
        params(num_beams=2, do_sample=False, stop=["x"], no_repeat_ngram_size=3, min_new_tokens=100),
        params(num_beams=1, do_sample=True, num_return_sequences=4),
        # The model's defaults may sample or search beams: the tokenizer service checks the resolved values.
        params(num_return_sequences=2),
        params(do_sample=False, num_return_sequences=2),
        params(num_beams=1, num_return_sequences=2),
        params(min_new_tokens=10, max_new_tokens=10, no_repeat_ngram_size=2**31 - 1, length_penalty=0),
    ],
)
def test_beam_search_and_its_options_at_their_limits_pass(parameters):
    validate_generation_request(request(parameters=parameters), MODELS, LIMITS)


def test_temperature_zero_without_sampling_is_greedy_and_allowed():
    validate_generation_request(request(parameters=params(temperature=0)), MODELS, LIMITS)
    validate_generation_request(request(parameters=params(do_sample=False, temperature=0)), MODELS, LIMITS)


def test_unknown_model_is_not_found_and_names_the_served_ones():
    with pytest.raises(NotFound) as raised:
        validate_generation_request(request(model="gpt-9"), MODELS, LIMITS)
    assert raised.value.message == "unknown model 'gpt-9'; served models: tiny-bert, tiny-llama"


def test_the_model_is_checked_before_the_input():
    with pytest.raises(NotFound):
        validate_generation_request(request(model="gpt-9", prompt=""), MODELS, LIMITS)


def test_tokenize_checks_model_and_input_only():
    assert validate_tokenize_request(models_pb2.TokenizeRequest(model="tiny-llama", prompt="hi"), MODELS, LIMITS)
    with pytest.raises(InvalidArgument, match=r"chat\.messages\[0\]\.role is empty"):
        validate_tokenize_request(models_pb2.TokenizeRequest(model="tiny-llama", chat=chat(("", "hi"))), MODELS, LIMITS)
    with pytest.raises(NotFound):
        validate_tokenize_request(models_pb2.TokenizeRequest(model="x", prompt="hi"), MODELS, LIMITS)


def test_limits_come_from_the_settings():
    settings = GatewaySettings(
        max_new_tokens_limit=9,
        max_num_return_sequences=3,
        max_stop_strings=1,
        max_stop_length=2,
        max_chat_messages=4,
        max_prompt_chars=5,
        max_beams=2,
    )
    assert RequestLimits.from_settings(settings) == RequestLimits(9, 3, 1, 2, 4, 5, max_beams=2)
