"""Build small models locally: the hub is not reachable from every machine pipeserve runs on.

Each model is a real transformers checkpoint directory (config, weights,
tokenizer, generation_config.json) with random weights and a tokenizer
trained here with the ``tokenizers`` library, so every loading path is the
one a hub model takes. The text-generation model's byte-level BPE is trained
on Python's own sources plus CJK and emoji lines, so multi-byte characters
split across tokens, and it carries a chat template.
"""

from __future__ import annotations

import sysconfig
from collections.abc import Iterator
from pathlib import Path

import yaml

TINY_LLAMA = "tiny-llama"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

MULTILINGUAL_LINES = [
    "你好，世界！今天天气很好。我们一起去公园散步吧。",
    "東京は日本の首都です。桜の花がとても美しい。",
    "안녕하세요, 만나서 반갑습니다. 오늘은 좋은 날이에요.",
    "Привет, мир! Как дела? Всё хорошо, спасибо.",
    "Ελληνικά γράμματα: αβγδε, και ένα ποίημα.",
    "emoji 🙂 😀 🚀 🎉 👍🏽 ❤️ 🧪 🐍 — and accents: café, naïve, façade, über.",
    "数学：∑ ∫ √ ∞ ≈ ≠ ≤ ≥ · 温度 23℃ · 価格 ¥1200 · €9.99",
]


def _training_corpus(max_bytes: int = 4_000_000) -> Iterator[str]:
    """Python's standard library sources (always on disk) interleaved with multi-byte text."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    total = 0
    for index, path in enumerate(sorted(stdlib.glob("*.py"))):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        yield text
        yield MULTILINGUAL_LINES[index % len(MULTILINGUAL_LINES)] * 3
        total += len(text)
        if total >= max_bytes:
            break


def train_byte_level_tokenizer(vocab_size: int, special_tokens: list[str]):
    """A GPT-2-style byte-level BPE: any UTF-8 input round-trips exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_corpus(), trainer=trainer)
    return tokenizer


def build_tiny_llama(out_dir: Path, *, seed: int = 0) -> Path:
    """A 4-layer, 256-wide Llama (about 5M parameters) with a chat template."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    raw = train_byte_level_tokenizer(4096, specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
        clean_up_tokenization_spaces=False,
        model_max_length=2048,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    eos_ids = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=64,
        do_sample=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


BUILDERS = {TINY_LLAMA: ("text-generation", build_tiny_llama)}


def build_models(root: Path, names: list[str] | None = None, *, force: bool = False, progress=print) -> Path:
    """Build the named models (default: all) under root and write root/models.yaml listing them."""
    names = names or list(BUILDERS)
    entries = []
    for name in names:
        task, builder = BUILDERS[name]
        target = root / name
        if force or not (target / "config.json").exists():
            progress(f"building {name} in {target} ...")
            builder(target)
        else:
            progress(f"{name} already built in {target}")
        entries.append({"name": name, "path": name, "task": task})
    models_file = root / "models.yaml"
    models_file.write_text(yaml.safe_dump({"models": entries}, sort_keys=False))
    return models_file
