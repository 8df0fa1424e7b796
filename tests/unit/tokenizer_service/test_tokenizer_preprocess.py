"""Preprocess and Tokenize equal what transformers' pipeline and generate() would do with the same model."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, TextGenerationPipeline
from transformers.pipelines.text_generation import Chat

from pipeserve.config import ModelSpec
from pipeserve.errors import InvalidArgument, NotFound
from pipeserve.internal.v1 import tokenizer_pb2
from pipeserve.local_models import TINY_LLAMA
from pipeserve.v1 import generation_pb2, types_pb2
from tokenizer_service.detokenizer import DecodeTraits
from tokenizer_service.registry import ModelRegistry
from tokenizer_service.tasks.text_generation import TextGenerationModel

CONTEXT = 2048
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hi 🙂 你好"},
]


@pytest.fixture(scope="session")
def tiny_llama(tiny_llama_dir) -> TextGenerationModel:
    return TextGenerationModel.load(ModelSpec(name=TINY_LLAMA, path=str(tiny_llama_dir)))


@pytest.fixture(scope="session")
def meta_model(tiny_llama_dir):
    """tiny-llama's architecture on the meta device: transformers' own preprocessing, no weights."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_llama_dir))


@pytest.fixture(scope="session")
def pipeline(meta_model, tiny_llama) -> TextGenerationPipeline:
    return TextGenerationPipeline(model=meta_model, tokenizer=tiny_llama.tokenizer, device=torch.device("meta"))


def chat(messages, **kwargs) -> types_pb2.Chat:
    return types_pb2.Chat(messages=[types_pb2.ChatMessage(**m) for m in messages], **kwargs)


def preprocess(model: TextGenerationModel, prompt: str | None = None, chat_input=None, **parameters):
    request = tokenizer_pb2.PreprocessRequest(
        model=model.name, parameters=generation_pb2.GenerationParameters(**parameters)
    )
    if chat_input is not None:
        request.chat.CopyFrom(chat_input)
    elif prompt is not None:
        request.prompt = prompt
    return model.preprocess(request)


def transformers_resolution(meta_model, generation_config: GenerationConfig, prompt_length: int, **kwargs):
    """What generate() would run with: its config resolution and length preparation, on the meta model."""
    meta_model.generation_config = generation_config
    has_default_max_length = kwargs.get("max_length") is None and generation_config.max_length is None
    config, _ = meta_model._prepare_generation_config(None, **kwargs)
    config = meta_model._prepare_generated_length(
        config,
        has_default_max_length=has_default_max_length,
        has_default_min_length=True,
        model_input_name="input_ids",
        input_ids_length=prompt_length,
        inputs_tensor=None,
    )
    eos = config.eos_token_id
    return {
        "max_new_tokens": config.max_length - prompt_length,
        "do_sample": config.do_sample,
        "temperature": pytest.approx(config.temperature),
        "top_k": config.top_k,
        "top_p": pytest.approx(config.top_p),
        "repetition_penalty": pytest.approx(config.repetition_penalty),
        "num_return_sequences": config.num_return_sequences,
        "eos_token_ids": [] if eos is None else ([eos] if isinstance(eos, int) else list(eos)),
    }


def sampling_fields(sampling) -> dict:
    return {
        "max_new_tokens": sampling.max_new_tokens,
        "do_sample": sampling.do_sample,
        "temperature": sampling.temperature,
        "top_k": sampling.top_k,
        "top_p": sampling.top_p,
        "repetition_penalty": sampling.repetition_penalty,
        "num_return_sequences": sampling.num_return_sequences,
        "eos_token_ids": list(sampling.eos_token_ids),
    }


def with_config(model: TextGenerationModel, generation_config: GenerationConfig) -> TextGenerationModel:
    return TextGenerationModel(
        spec=model.spec,
        tokenizer=model.tokenizer,
        generation_config=generation_config,
        context_length=model.context_length,
        vocab_size=model.vocab_size,
        decode_traits=model.decode_traits,
    )


@pytest.mark.parametrize("prompt", ["Hello world", "def main():\n    return 1\n", "你好，世界！🙂", " leading space"])
def test_prompt_ids_equal_the_pipeline(tiny_llama, pipeline, prompt):
    response = preprocess(tiny_llama, prompt)
    assert list(response.prompt_token_ids) == pipeline.preprocess(prompt)["input_ids"][0].tolist()


def test_chat_ids_equal_the_pipeline(tiny_llama, pipeline):
    response = preprocess(tiny_llama, chat_input=chat(MESSAGES))
    assert list(response.prompt_token_ids) == pipeline.preprocess(Chat(MESSAGES))["input_ids"][0].tolist()


def test_chat_ending_with_assistant_is_continued_as_the_pipeline_does(tiny_llama, pipeline):
    messages = [*MESSAGES, {"role": "assistant", "content": "Hi, I am"}]
    response = preprocess(tiny_llama, chat_input=chat(messages))
    assert list(response.prompt_token_ids) == pipeline.preprocess(Chat(messages))["input_ids"][0].tolist()
    # Asking for a generation prompt explicitly opens a new assistant turn instead.
    opened = preprocess(tiny_llama, chat_input=chat(messages, add_generation_prompt=True))
    rendered = tiny_llama.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert list(opened.prompt_token_ids) == tiny_llama.tokenizer(rendered, add_special_tokens=False)["input_ids"]


def test_tokenize_returns_ids_tokens_and_rendered_text(tiny_llama):
    tokenizer = tiny_llama.tokenizer
    reply = tiny_llama.tokenize(tokenizer_pb2.TokenizeRequest(model=TINY_LLAMA, chat=chat(MESSAGES)))
    rendered = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert reply.text == rendered
    assert list(reply.token_ids) == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert list(reply.tokens) == tokenizer.convert_ids_to_tokens(list(reply.token_ids))
    plain = tiny_llama.tokenize(tokenizer_pb2.TokenizeRequest(model=TINY_LLAMA, prompt="x = 1"))
    assert plain.text == "x = 1" and list(plain.token_ids) == tokenizer("x = 1")["input_ids"]


def test_model_defaults_resolve_as_generate_would(tiny_llama, meta_model):
    response = preprocess(tiny_llama, "Hello world")
    prompt_length = len(response.prompt_token_ids)
    assert sampling_fields(response.sampling) == transformers_resolution(
        meta_model, tiny_llama.generation_config, prompt_length
    )
    assert response.sampling.max_new_tokens == 64 and list(response.sampling.eos_token_ids) == [2, 0]
    assert not response.sampling.HasField("seed") and not response.sampling.ignore_eos
    assert response.decode == tokenizer_pb2.DecodeOptions(skip_special_tokens=True, num_sequences=1)


@pytest.mark.parametrize(
    "generation_config",
    [GenerationConfig(), GenerationConfig(max_length=30, top_k=7, temperature=0.6, do_sample=True, eos_token_id=2)],
    ids=["global-defaults", "max-length"],
)
def test_other_generation_configs_resolve_as_generate_would(tiny_llama, meta_model, generation_config):
    model = with_config(tiny_llama, generation_config)
    response = preprocess(model, "Hello world")
    expected = transformers_resolution(meta_model, generation_config, len(response.prompt_token_ids))
    if generation_config.eos_token_id is None:
        expected["eos_token_ids"] = [tiny_llama.tokenizer.eos_token_id]  # generate() has no tokenizer to fall back on
    assert sampling_fields(response.sampling) == expected


def test_request_values_override_defaults(tiny_llama, meta_model):
    parameters = dict(
        max_new_tokens=5, do_sample=True, temperature=0.7, top_k=0, top_p=0.9, repetition_penalty=1.1,
        num_return_sequences=3, seed=7, ignore_eos=True, eos_token_id=[5, 6], stop=["\n", "###"],
        skip_special_tokens=False, return_full_text=True,
    )  # fmt: skip
    response = preprocess(tiny_llama, "Hello world", **parameters)
    generate_kwargs = {k: parameters[k] for k in ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p")}
    generate_kwargs.update(repetition_penalty=1.1, num_return_sequences=3, eos_token_id=[5, 6])
    expected = transformers_resolution(
        meta_model, tiny_llama.generation_config, len(response.prompt_token_ids), **generate_kwargs
    )
    assert sampling_fields(response.sampling) == expected
    assert response.sampling.seed == 7 and response.sampling.ignore_eos
    assert response.decode == tokenizer_pb2.DecodeOptions(
        skip_special_tokens=False, stop=["\n", "###"], return_full_text=True, num_sequences=3
    )


def prompt_of_length(model: TextGenerationModel, length: int) -> str:
    """A prompt that tokenizes to exactly `length` tokens."""
    ids = model.tokenizer("word " * length, add_special_tokens=False)["input_ids"][:length]
    text = model.tokenizer.decode(ids)
    assert len(model.tokenizer(text)["input_ids"]) == length
    return text


def test_default_max_new_tokens_is_clamped_to_the_context(tiny_llama):
    response = preprocess(tiny_llama, prompt_of_length(tiny_llama, CONTEXT - 10))
    assert response.sampling.max_new_tokens == 10


def test_explicit_max_new_tokens_beyond_the_context_is_refused(tiny_llama):
    prompt = prompt_of_length(tiny_llama, 100)
    assert preprocess(tiny_llama, prompt, max_new_tokens=CONTEXT - 100).sampling.max_new_tokens == CONTEXT - 100
    with pytest.raises(InvalidArgument) as raised:
        preprocess(tiny_llama, prompt, max_new_tokens=CONTEXT - 99)
    assert all(str(n) in raised.value.message for n in (CONTEXT - 99, 100, CONTEXT, CONTEXT - 100))
    assert "context" in raised.value.message


def test_prompt_filling_the_context_is_refused_with_both_numbers(tiny_llama):
    with pytest.raises(InvalidArgument) as raised:
        preprocess(tiny_llama, prompt_of_length(tiny_llama, CONTEXT))
    assert f"{CONTEXT} tokens" in raised.value.message and "context" in raised.value.message


def test_prompt_longer_than_max_length_is_refused(tiny_llama):
    model = with_config(tiny_llama, GenerationConfig(max_length=30))
    with pytest.raises(InvalidArgument) as raised:
        preprocess(model, prompt_of_length(model, 30))
    assert "max_length=30" in raised.value.message and "30 tokens" in raised.value.message


@pytest.mark.parametrize(
    ("request_kwargs", "mentions"),
    [
        ({"prompt": ""}, "prompt"),
        ({}, "prompt or chat"),
        ({"chat_input": types_pb2.Chat()}, "messages"),
        ({"prompt": "x", "max_new_tokens": 0}, "max_new_tokens"),
        ({"prompt": "x", "max_new_tokens": -3}, "max_new_tokens"),
        ({"prompt": "x", "num_return_sequences": 0}, "num_return_sequences"),
        ({"prompt": "x", "eos_token_id": [4096]}, "eos_token_id 4096"),
        ({"prompt": "x", "eos_token_id": [-1]}, "eos_token_id -1"),
        ({"prompt": "x", "stop": ["ok", ""]}, "stop"),
    ],
)
def test_bad_requests_are_invalid_arguments(tiny_llama, request_kwargs, mentions):
    with pytest.raises(InvalidArgument) as raised:
        preprocess(tiny_llama, **request_kwargs)
    assert mentions in raised.value.message


def test_odd_sampling_values_pass_through_without_crashing(tiny_llama):
    """Range checks are the gateway's; whatever reaches this service is resolved, not crashed on."""
    sampling = preprocess(tiny_llama, "x", temperature=float("nan"), top_k=-5, top_p=7.0).sampling
    assert sampling.top_k == -5 and sampling.top_p == 7.0 and sampling.temperature != sampling.temperature


def test_chat_needs_a_chat_template(tiny_llama, llama_style_tokenizer):
    plain = TextGenerationModel(
        spec=ModelSpec(name="plain", path="unused"),
        tokenizer=llama_style_tokenizer,
        generation_config=GenerationConfig(),
        context_length=64,
        vocab_size=len(llama_style_tokenizer),
        decode_traits=DecodeTraits.of(llama_style_tokenizer),
    )
    with pytest.raises(InvalidArgument) as raised:
        preprocess(plain, chat_input=chat(MESSAGES))
    assert "no chat template" in raised.value.message and "'plain'" in raised.value.message
    # A prompt works, with the tokenizer's own special tokens (BOS here).
    response = preprocess(plain, "Hello")
    assert response.prompt_token_ids[0] == llama_style_tokenizer.bos_token_id
    assert response.sampling.max_new_tokens == 20


def test_chat_template_errors_are_invalid_arguments(tiny_llama_dir):
    strict = TextGenerationModel.load(ModelSpec(name="strict", path=str(tiny_llama_dir)))
    strict.tokenizer.chat_template = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('the first message must be the user') }}{% endif %}"
    )
    with pytest.raises(InvalidArgument) as raised:
        preprocess(strict, chat_input=chat(MESSAGES))
    assert "chat template" in raised.value.message and "the first message must be the user" in raised.value.message


def test_model_without_generation_config_file_uses_the_model_config(tiny_llama_dir, tmp_path):
    copy = tmp_path / "no-generation-config"
    shutil.copytree(tiny_llama_dir, copy, ignore=shutil.ignore_patterns("*.safetensors", "generation_config.json"))
    model = TextGenerationModel.load(ModelSpec(name="copy", path=str(copy)))
    assert model.context_length == CONTEXT and model.vocab_size == 4096
    sampling = preprocess(model, "Hello").sampling
    assert list(sampling.eos_token_ids) == [2, 0]
    assert sampling.max_new_tokens == 20, "generate()'s global default max_length counts new tokens"


def test_concurrent_preprocessing_and_decoding_share_one_tokenizer(tiny_llama):
    """The servicer preprocesses in worker threads while the event loop decodes with the same tokenizer."""
    prompts = [f"def f{i}(x):\n    return '你好 🙂' * {i}\n" * 50 for i in range(16)]
    expected = {prompt: list(preprocess(tiny_llama, prompt).prompt_token_ids) for prompt in prompts}
    with ThreadPoolExecutor(8) as pool:
        results = pool.map(lambda prompt: (prompt, list(preprocess(tiny_llama, prompt).prompt_token_ids)), prompts * 4)
        decoded = [tiny_llama.tokenizer.decode(ids) for ids in list(expected.values()) * 4]
        assert all(expected[prompt] == ids for prompt, ids in results)
    assert decoded[:16] == prompts


def test_registry_serves_text_generation_only_to_text_generation_models(tiny_llama_dir):
    specs = {
        TINY_LLAMA: ModelSpec(name=TINY_LLAMA, path=str(tiny_llama_dir)),
        "speaker": ModelSpec(name="speaker", path="/nonexistent", task="text-to-audio"),
    }
    registry = ModelRegistry.load(specs)
    assert registry.text_generation(TINY_LLAMA).context_length == CONTEXT
    with pytest.raises(InvalidArgument) as wrong_task:
        registry.text_generation("speaker")
    assert "text-to-audio" in wrong_task.value.message
    with pytest.raises(NotFound) as unknown:
        registry.text_generation("nope")
    assert "nope" in unknown.value.message and TINY_LLAMA in unknown.value.message
