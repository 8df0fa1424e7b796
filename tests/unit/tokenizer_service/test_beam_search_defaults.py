"""Beam search and the n-gram / minimum-length options resolved against a model's generation_config, as generate()
resolves them; what only the resolved values can show is refused here."""

from __future__ import annotations

import pytest
from transformers import GenerationConfig

from pipeserve.errors import InvalidArgument
from pipeserve.internal.v1 import queue_pb2
from pipeserve.v1 import generation_pb2
from tokenizer_service.tasks.generation_defaults import resolve_sampling

PROMPT_LENGTH = 5


def resolve(config: GenerationConfig | None = None, **parameters) -> queue_pb2.SamplingParams:
    return resolve_sampling(
        generation_pb2.GenerationParameters(**parameters),
        config or GenerationConfig(),
        prompt_length=PROMPT_LENGTH,
        context_length=2048,
        vocab_size=100,
        tokenizer_eos_id=0,
    )


def test_unset_options_are_transformers_defaults():
    sampling = resolve(max_new_tokens=8)
    assert sampling.num_beams == 1
    assert sampling.length_penalty == 1.0
    assert sampling.early_stopping == queue_pb2.EARLY_STOPPING_UNSPECIFIED
    assert sampling.no_repeat_ngram_size == 0 and sampling.min_new_tokens == 0


@pytest.mark.parametrize(
    ("early_stopping", "expected"),
    [
        (True, queue_pb2.EARLY_STOPPING_TRUE),
        (False, queue_pb2.EARLY_STOPPING_UNSPECIFIED),
        ("never", queue_pb2.EARLY_STOPPING_NEVER),
    ],
)
def test_unset_options_take_the_generation_config_values(early_stopping, expected):
    config = GenerationConfig(
        num_beams=3, length_penalty=-0.5, early_stopping=early_stopping, no_repeat_ngram_size=2, max_new_tokens=8
    )
    sampling = resolve(config)
    assert (sampling.num_beams, sampling.length_penalty, sampling.no_repeat_ngram_size) == (3, -0.5, 2)
    assert sampling.early_stopping == expected


def test_the_request_overrides_the_generation_config():
    config = GenerationConfig(num_beams=3, length_penalty=-0.5, early_stopping="never", no_repeat_ngram_size=2)
    sampling = resolve(
        config,
        max_new_tokens=8,
        num_beams=2,
        length_penalty=2.0,
        early_stopping=True,
        no_repeat_ngram_size=0,
        min_new_tokens=3,
    )
    assert (sampling.num_beams, sampling.length_penalty, sampling.no_repeat_ngram_size) == (2, 2.0, 0)
    assert sampling.early_stopping == queue_pb2.EARLY_STOPPING_TRUE
    assert sampling.min_new_tokens == 3


@pytest.mark.parametrize(
    ("config", "parameters", "expected"),
    [
        # min_length counts the prompt, as generate() counts it.
        (GenerationConfig(min_length=PROMPT_LENGTH + 4), {}, 4),
        (GenerationConfig(min_length=PROMPT_LENGTH - 1), {}, 0),
        # min_new_tokens takes precedence over min_length, as in generate().
        (GenerationConfig(min_length=50, min_new_tokens=2), {}, 2),
        (GenerationConfig(min_length=50), {"min_new_tokens": 1}, 1),
        # A default longer than max_new_tokens bans the end for every step, as max_new_tokens does.
        (GenerationConfig(min_new_tokens=30), {}, 8),
        (GenerationConfig(min_length=200), {}, 8),
    ],
)
def test_min_new_tokens_is_what_generate_counts(config, parameters, expected):
    assert resolve(config, max_new_tokens=8, **parameters).min_new_tokens == expected


def test_a_requested_min_new_tokens_past_max_new_tokens_is_refused():
    with pytest.raises(InvalidArgument, match=r"min_new_tokens is 9; it must be between 0 and max_new_tokens \(8\)"):
        resolve(max_new_tokens=8, min_new_tokens=9)
    # Checked against the model's max_new_tokens when the request sets none.
    with pytest.raises(InvalidArgument, match=r"max_new_tokens \(6\)"):
        resolve(GenerationConfig(max_new_tokens=6), min_new_tokens=7)


@pytest.mark.parametrize(
    ("config", "parameters", "message"),
    [
        # A model that samples by default: beam search must turn sampling off explicitly.
        (
            GenerationConfig(do_sample=True, temperature=0.7),
            {"num_beams": 4},
            (
                "num_beams is 4 with do_sample=true (unset options take the model's generation_config values): "
                "beam sampling is not served"
            ),
        ),
        (GenerationConfig(num_beams=2), {"num_return_sequences": 3}, "num_return_sequences is 3, more than num_beams"),
        (GenerationConfig(num_beams=2), {"ignore_eos": True}, "ignore_eos is not served with beam search"),
        (GenerationConfig(num_beams=0), {}, "num_beams must be at least 1"),
        (GenerationConfig(), {"num_return_sequences": 2}, "num_return_sequences is 2 with greedy decoding"),
        (
            GenerationConfig(do_sample=True, temperature=1e-9),
            {"num_return_sequences": 2},
            "num_return_sequences is 2 with greedy decoding",
        ),
    ],
)
def test_what_only_the_resolved_values_show_is_refused(config, parameters, message):
    with pytest.raises(InvalidArgument) as raised:
        resolve(config, max_new_tokens=8, **parameters)
    assert message in raised.value.message


@pytest.mark.parametrize(
    ("config", "parameters"),
    [
        (GenerationConfig(num_beams=4), {"num_return_sequences": 3}),
        (GenerationConfig(do_sample=True), {"num_return_sequences": 3}),
        (GenerationConfig(), {"num_return_sequences": 3, "do_sample": True}),
    ],
)
def test_several_sequences_from_the_model_s_beams_or_sampling_pass(config, parameters):
    assert resolve(config, max_new_tokens=8, **parameters).num_return_sequences == 3


def test_beam_search_on_a_sampling_model_with_do_sample_false_passes():
    config = GenerationConfig(do_sample=True, temperature=0.7)
    sampling = resolve(config, max_new_tokens=8, num_beams=4, do_sample=False, num_return_sequences=4)
    assert sampling.num_beams == 4 and not sampling.do_sample and sampling.num_return_sequences == 4
