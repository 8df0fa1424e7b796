"""summarization, translation, text2text-generation through the real processes, on a tiny T5.

The reference is what the transformers 4.x pipelines returned: the task's
prefix before the text, ``model.generate`` greedily, and the output decoded
with ``skip_special_tokens=True``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from pipeserve.local_models import TINY_T5, build_models
from pipeserve.v1 import generation_pb2, generation_pb2_grpc, types_pb2

from .conftest import start_stack, stop_stack

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
# (request task and languages, the prefix the 4.x pipeline put before the text)
TASKS = [
    ({}, ""),
    ({"task": "text2text-generation"}, ""),
    ({"task": "summarization"}, "summarize: "),
    ({"task": "translation_en_to_de"}, "translate English to German: "),
    ({"task": "translation", "src_lang": "en", "tgt_lang": "fr"}, "translate English to French: "),
]


@pytest.fixture(scope="module")
def t5_stack(redis_url, tmp_path_factory):
    models_file = build_models(tmp_path_factory.mktemp("seq2seq-models"), [TINY_T5], progress=lambda _msg: None)
    running = start_stack(models_file, redis_url, tmp_path_factory.mktemp("seq2seq-stack"))
    yield running, models_file.parent / TINY_T5
    assert stop_stack(running.process) == 0, f"serve-all did not shut down cleanly:\n{running.logs()}"


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


def pipeline_output(reference, text: str) -> str:
    import torch

    model, tokenizer = reference
    inputs = tokenizer(text, return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW_TOKENS)
    return tokenizer.decode(output[0], skip_special_tokens=True)


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
    cases = [(options, prefix, text) for options, prefix in TASKS for text in TEXTS]
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        results = list(pool.map(lambda case: stream(generation, case[2], **case[0]), cases))
    for (options, prefix, text), (streamed, finishes, last) in zip(cases, results, strict=True):
        assert streamed == pipeline_output(reference, prefix + text), (options, text)
        assert len(finishes) == 1
        _, tokenizer = reference
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
    assert reply.completions[0].text == pipeline_output(reference, "summarize: " + text)
    assert reply.usage.completion_tokens == len(reply.completions[0].token_ids)


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
