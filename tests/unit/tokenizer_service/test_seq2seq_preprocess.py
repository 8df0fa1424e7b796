"""summarization / translation / text2text-generation preprocessing on a tiny T5, as the 4.x pipelines did it."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest
from transformers import AutoTokenizer, GenerationConfig

from pipeserve.config import ModelSpec
from pipeserve.errors import InvalidArgument
from pipeserve.internal.v1 import queue_pb2, tokenizer_pb2
from pipeserve.local_models import TINY_LLAMA, TINY_T5, build_tiny_t5
from pipeserve.v1 import generation_pb2, types_pb2
from tokenizer_service.tasks.text_generation import TextGenerationModel
from tokenizer_service.text_stream import stream_text

TEXT = "The committee met on Tuesday and agreed to publish the report next month."


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return build_tiny_t5(tmp_path_factory.mktemp("t5") / TINY_T5)


@pytest.fixture(scope="module")
def t5(t5_dir) -> TextGenerationModel:
    return TextGenerationModel.load(ModelSpec(name=TINY_T5, path=str(t5_dir), task="text2text-generation"))


@pytest.fixture(scope="module")
def reference_tokenizer(t5_dir):
    """A tokenizer of its own, so that truncating through it changes nothing the model under test shares."""
    return AutoTokenizer.from_pretrained(t5_dir)


def preprocess(model, prompt=TEXT, task="", src_lang="", tgt_lang="", **parameters):
    request = tokenizer_pb2.PreprocessRequest(
        model=model.name,
        prompt=prompt,
        task=task,
        src_lang=src_lang,
        tgt_lang=tgt_lang,
        parameters=generation_pb2.GenerationParameters(**parameters),
    )
    return model.preprocess(request)


@pytest.mark.parametrize(
    ("task", "languages", "prefix"),
    [
        ("", {}, ""),
        ("text2text-generation", {}, ""),
        ("summarization", {}, "summarize: "),
        ("translation_en_to_fr", {}, "translate English to French: "),
        ("translation", {"src_lang": "en", "tgt_lang": "fr"}, "translate English to French: "),
        # pipeline("translation") took the config's first translation_xx_to_yy entry.
        ("translation", {}, "translate English to German: "),
    ],
)
def test_the_task_prefix_goes_before_the_text(t5, reference_tokenizer, task, languages, prefix):
    reply = preprocess(t5, task=task, **languages)
    assert list(reply.prompt_token_ids) == reference_tokenizer(prefix + TEXT)["input_ids"]
    assert reply.prompt_token_ids[-1] == reference_tokenizer.eos_token_id
    assert reply.sampling.max_new_tokens == 32  # the model's generation_config
    assert list(reply.sampling.eos_token_ids) == [reference_tokenizer.eos_token_id]
    assert reply.decode.skip_special_tokens and not reply.decode.return_full_text


def test_a_long_text_is_cut_to_the_model_length_as_truncation_does(t5, reference_tokenizer):
    long_text = " ".join([TEXT] * 80)
    reply = preprocess(t5, prompt=long_text, task="summarization")
    expected = reference_tokenizer("summarize: " + long_text, truncation=True)["input_ids"]
    assert len(expected) == reference_tokenizer.model_max_length
    assert list(reply.prompt_token_ids) == expected


def test_the_task_parameters_override_the_generation_config(t5):
    params = {"summarization": {"prefix": "tl;dr: ", "max_length": 10, "num_beams": 4}, "translation_en_to_de": {}}
    # As t5-small's: no max_new_tokens of its own, so the task's max_length decides.
    config = GenerationConfig(decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)
    model = dataclasses.replace(t5, task_specific_params=params, generation_config=config)
    reply = preprocess(model, task="summarization")
    # max_length counts the decoder start token, as generate() counts it for encoder-decoder models.
    assert reply.sampling.max_new_tokens == 9
    assert reply.prompt_token_ids[:3] == t5.tokenizer("tl;dr: ", add_special_tokens=False)["input_ids"][:3]
    assert preprocess(model, task="summarization", max_new_tokens=5).sampling.max_new_tokens == 5


@pytest.mark.parametrize("task", ["summarization", "translation_en_to_de", "translation"])
def test_t5_small_s_task_parameters_make_a_beam_search(t5, task):
    sampling = preprocess(t5, task=task).sampling
    assert sampling.num_beams == 4 and not sampling.do_sample
    assert sampling.early_stopping == queue_pb2.EARLY_STOPPING_TRUE
    if task == "summarization":
        assert (sampling.length_penalty, sampling.no_repeat_ngram_size) == (2.0, 3)
        # min_length=30 counts the decoder start token, as generate() counts it for encoder-decoder models.
        assert sampling.min_new_tokens == 29
    else:
        assert (sampling.length_penalty, sampling.no_repeat_ngram_size, sampling.min_new_tokens) == (1.0, 0, 0)


def test_the_request_overrides_the_task_parameters(t5):
    sampling = preprocess(
        t5, task="summarization", num_beams=1, min_new_tokens=0, no_repeat_ngram_size=0, length_penalty=1.0
    ).sampling
    assert (sampling.num_beams, sampling.min_new_tokens, sampling.no_repeat_ngram_size) == (1, 0, 0)
    assert sampling.length_penalty == 1.0
    # text2text-generation has no task parameters: the model's generation config alone.
    assert preprocess(t5).sampling.num_beams == 1


@pytest.mark.parametrize(
    ("request_options", "message"),
    [
        ({"task": "text-generation"}, "encoder-decoder model"),
        ({"task": "fill-mask"}, "not a generation task"),
        ({"task": "translation_en_de"}, "translation_xx_to_yy"),
        ({"task": "translation", "src_lang": "en", "tgt_lang": "es"}, "en_to_de, en_to_fr"),
        ({"task": "translation", "src_lang": "en"}, "both src_lang and tgt_lang"),
        ({"task": "summarization", "src_lang": "en", "tgt_lang": "de"}, "for task translation"),
        ({"return_full_text": True}, "return_full_text"),
    ],
)
def test_bad_seq2seq_requests_are_invalid(t5, request_options, message):
    with pytest.raises(InvalidArgument, match=message):
        preprocess(t5, **request_options)


def test_chat_input_is_refused(t5):
    request = tokenizer_pb2.PreprocessRequest(
        model=t5.name, chat=types_pb2.Chat(messages=[types_pb2.ChatMessage(role="user", content="hi")])
    )
    with pytest.raises(InvalidArgument, match="chat input"):
        t5.preprocess(request)


def test_a_decoder_only_model_refuses_seq2seq_tasks(tiny_llama_dir):
    model = TextGenerationModel.load(ModelSpec(name=TINY_LLAMA, path=str(tiny_llama_dir)))
    with pytest.raises(InvalidArgument, match="decoder-only"):
        preprocess(model, task="summarization")
    assert preprocess(model, task="text-generation").prompt_token_ids


async def test_streamed_text_is_the_output_alone_not_a_continuation_of_the_source(t5, reference_tokenizer):
    source = preprocess(t5).prompt_token_ids
    generated = reference_tokenizer("Hello world, the report is out.", add_special_tokens=False)["input_ids"]
    finish = types_pb2.FinishReason.FINISH_REASON_LENGTH

    async def chunks() -> AsyncIterator[queue_pb2.ReplyChunk]:
        for position, token in enumerate(generated):
            last = position == len(generated) - 1
            yield queue_pb2.ReplyChunk(
                deltas=[queue_pb2.SequenceDelta(index=0, token_ids=[token], finish_reason=finish if last else 0)]
            )

    async def cancel(_index: str) -> None:
        raise AssertionError("nothing to cancel")

    options = tokenizer_pb2.DecodeOptions(skip_special_tokens=True, num_sequences=1)
    texts = [
        response.text
        async for response in stream_text(t5.tokenizer, source, options, chunks(), cancel, continues_prompt=False)
    ]
    assert "".join(texts) == reference_tokenizer.decode(generated, skip_special_tokens=True)
