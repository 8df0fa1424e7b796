"""A temperature too small to divide logits by (found by the gateway fuzzing) decodes greedily."""

from __future__ import annotations

import pytest
from transformers import GenerationConfig

from pipeserve.v1 import generation_pb2
from tokenizer_service.tasks.generation_defaults import GREEDY_BELOW_TEMPERATURE, resolve_sampling


def resolve(**parameters):
    return resolve_sampling(
        generation_pb2.GenerationParameters(max_new_tokens=2, **parameters),
        GenerationConfig(),
        prompt_length=3,
        context_length=2048,
        vocab_size=100,
        tokenizer_eos_id=0,
    )


@pytest.mark.parametrize("temperature", [1e-45, 1e-38, 9.9e-6])
def test_a_near_zero_temperature_is_greedy(temperature):
    sampling = resolve(do_sample=True, temperature=temperature)
    assert not sampling.do_sample


@pytest.mark.parametrize("temperature", [2 * GREEDY_BELOW_TEMPERATURE, 0.01, 1.0, 3.4e38])
def test_other_temperatures_sample(temperature):
    sampling = resolve(do_sample=True, temperature=temperature)
    assert sampling.do_sample and sampling.temperature == pytest.approx(temperature)
