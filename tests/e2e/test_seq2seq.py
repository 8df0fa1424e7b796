"""summarization, translation, text2text-generation through the real processes, on a tiny T5.

The reference is what the transformers 4.x pipelines returned: the task's
prefix before the text, ``model.generate`` with the task's parameters from
the config's ``task_specific_params`` (the tiny T5 has t5-small's: beam
search for summarization and translation), and the output decoded with
``skip_special_tokens=True``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from pipeserve.local_models import TINY_T5
from pipeserve.v1 import generation_pb2, generation_pb2_grpc, types_pb2

from .conftest import one_model_stack

MAX_NEW_TOKENS = 24
TEXTS = [
    "The committee met on Tuesday and agreed to publish the report next month.",
    "Short one.",
    (
        "A much longer text about the weather: it rained all morning, the wind turned in the afternoon, and by the "
        "evening the sky over the harbour was clear enough to see the lights of the ships waiting to come in."
    ),
    "Numbers 12345 and café, naïve façade.",
]
# (request task and languages, the task_specific_params entry the 4.x pipeline took its prefix and options from)
TASKS = [
    ({}, None),
    ({"task": "text2text-generation"}, None),
    ({"task": "summarization"}, "summarization"),
    ({"task": "translation_en_to_de"}, "translation_en_to_de"),
    ({"task": "translation", "src_lang": "en", "tgt_lang": "fr"}, "translation_en_to_fr"),
]


@pytest.fixture(scope="module")
def t5_stack(redis_url, tmp_path_factory):
    with one_model_stack(TINY_T5, redis_url, tmp_path_factory) as stack:
        yield stack


@pytest.fixture(scope="module")
def generation(t5_stack):
    running, _ = t5_stack
    with running.channel() as channel:
        yield generation_pb2_grpc.GenerationServiceStub(channel)


@pytest.fixture(scope="module")
def reference(t5_stack):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    _, model_dir = t5_stack
    return AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)


def task_parameters(reference, task: str | None) -> tuple[str, dict]:
    """The prefix and the generation options of the model config's entry for the task."""
    model, _ = reference
    options = dict(model.config.task_specific_params[task]) if task else {}
    return options.pop("prefix", ""), options


def pipeline_output(reference, task: str | None, text: str, **parameters) -> list[str]:
    """Every returned sequence, best first: the task's prefix before the text, generate with its options."""
    import torch

    model, tokenizer = reference
    prefix, options = task_parameters(reference, task)
    inputs = tokenizer(prefix + text, return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**inputs, **{**options, "do_sample": False, **parameters})
    return [tokenizer.decode(row, skip_special_tokens=True) for row in output]


def stream(generation, text: str, **options) -> tuple[str, list, types_pb2.Usage]:
    request = generation_pb2.GenerateStreamRequest(
        model=TINY_T5,
        prompt=text,
        parameters=generation_pb2.GenerationParameters(max_new_tokens=MAX_NEW_TOKENS),
        **options,
    )
    responses = list(generation.GenerateStream(request, timeout=120))
    assert [r.sequence_number for r in responses] == list(range(len(responses)))
    return "".join(r.text for r in responses), [r.finish_reason for r in responses if r.finish_reason], responses[-1]


def test_every_task_streams_what_the_pipeline_returned_for_concurrent_mixed_lengths(generation, reference):
    cases = [(options, task, text) for options, task in TASKS for text in TEXTS]
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        results = list(pool.map(lambda case: stream(generation, case[2], **case[0]), cases))
    for (options, task, text), (streamed, finishes, last) in zip(cases, results, strict=True):
        assert streamed == pipeline_output(reference, task, text, max_new_tokens=MAX_NEW_TOKENS)[0], (options, text)
        assert len(finishes) == 1
        _, tokenizer = reference
        prefix, _ = task_parameters(reference, task)
        assert last.usage.prompt_tokens == len(tokenizer(prefix + text)["input_ids"])


def test_unary_generate_equals_the_stream(generation, reference):
    text = TEXTS[0]
    request = generation_pb2.GenerateRequest(
        model=TINY_T5,
        prompt=text,
        task="summarization",
        parameters=generation_pb2.GenerationParameters(max_new_tokens=MAX_NEW_TOKENS),
    )
    reply = generation.Generate(request, timeout=120)
    assert (
        reply.completions[0].text == pipeline_output(reference, "summarization", text, max_new_tokens=MAX_NEW_TOKENS)[0]
    )
    assert reply.usage.completion_tokens == len(reply.completions[0].token_ids)


def test_summarization_is_t5_small_s_beam_search(generation, reference):
    """No parameters: t5-small's summarization options (4 beams, length_penalty 2, no repeated 3-grams, at least
    30 tokens counting the decoder start, early stopping) and the model's max_new_tokens, as generate has them."""
    text = TEXTS[2]
    request = generation_pb2.GenerateStreamRequest(
        model=TINY_T5,
        prompt=text,
        task="summarization",
        parameters=generation_pb2.GenerationParameters(num_return_sequences=2),
    )
    responses = list(generation.GenerateStream(request, timeout=120))
    # A beam search's sequences arrive whole, one message each, when the search ends.
    assert [response.index for response in responses] == [0, 1]
    expected = pipeline_output(reference, "summarization", text, num_return_sequences=2)
    assert [response.text for response in responses] == expected
    tokens = [len(response.token_ids) for response in responses]
    assert all(29 <= count <= 32 for count in tokens), tokens
    # The request's own options override the task's: one beam is greedy decoding.
    greedy = generation.Generate(
        generation_pb2.GenerateRequest(
            model=TINY_T5,
            prompt=text,
            task="summarization",
            parameters=generation_pb2.GenerationParameters(num_beams=1, min_new_tokens=0),
        ),
        timeout=120,
    )
    assert (
        greedy.completions[0].text
        == pipeline_output(reference, "summarization", text, num_beams=1, min_new_tokens=0)[0]
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"task": "text-generation"}, "encoder-decoder"),
        ({"task": "translation", "src_lang": "en", "tgt_lang": "xx"}, "en_to_de, en_to_fr"),
        ({"task": "question-answering"}, "not a generation task"),
    ],
)
def test_bad_tasks_are_invalid_argument(generation, options, message):
    request = generation_pb2.GenerateRequest(model=TINY_T5, prompt=TEXTS[0], **options)
    with pytest.raises(grpc.RpcError) as raised:
        generation.Generate(request, timeout=60)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in raised.value.details()
