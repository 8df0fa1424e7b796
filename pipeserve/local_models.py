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
from collections.abc import Iterable, Iterator
from pathlib import Path

import yaml

from pipeserve.local_encoder_models import BUILDERS as ENCODER_BUILDERS

TINY_LLAMA = "tiny-llama"
SMOLLM_SHAPE = "smollm-shape"
TINY_T5 = "tiny-t5"
SMOLLM_VOCAB_SIZE = 49152

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


def _training_corpus(max_bytes: int = 4_000_000, pattern: str = "*.py") -> Iterator[str]:
    """Python's standard library sources (always on disk) interleaved with multi-byte text."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    total = 0
    for index, path in enumerate(sorted(stdlib.glob(pattern))):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        yield text
        yield MULTILINGUAL_LINES[index % len(MULTILINGUAL_LINES)] * 3
        total += len(text)
        if total >= max_bytes:
            break


def train_byte_level_tokenizer(vocab_size: int, special_tokens: list[str], corpus: Iterable[str] | None = None):
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
    tokenizer.train_from_iterator(_training_corpus() if corpus is None else corpus, trainer=trainer)
    return tokenizer


def _chat_tokenizer(vocab_size: int, corpus: Iterable[str] | None = None):
    """A trained byte-level BPE wrapped as a transformers tokenizer with ChatML specials and a chat template."""
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    raw = train_byte_level_tokenizer(vocab_size, specials, corpus)
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
    return tokenizer


def _save_random_llama(out_dir: Path, tokenizer, *, seed: int, **shape) -> Path:
    """A randomly initialised LlamaForCausalLM of the given shape, saved with the tokenizer and a greedy config."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    eos_ids = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        **shape,
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


def build_tiny_llama(out_dir: Path, *, seed: int = 0) -> Path:
    """A 4-layer, 256-wide Llama (about 5M parameters) with a chat template."""
    shape = dict(
        hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2
    )
    return _save_random_llama(out_dir, _chat_tokenizer(4096), seed=seed, **shape)


def build_smollm_shape(out_dir: Path, *, seed: int = 0) -> Path:
    """Random weights in SmolLM2-135M's published shape, so benchmarks see production-like compute per token.

    The tokenizer is trained here to the full 49,152 entries (about 16 MB of
    the standard library's sources, ~10 s), so every id the model can emit
    decodes; the model is float32 (about 540 MB on disk).
    """
    shape = dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
    )
    tokenizer = _chat_tokenizer(SMOLLM_VOCAB_SIZE, _training_corpus(16_000_000, "**/*.py"))
    return _save_random_llama(out_dir, tokenizer, seed=seed, **shape)


def train_wordpiece_tokenizer(vocab_size: int = 2000):
    """A BERT-style uncased WordPiece with [CLS] question [SEP] context [SEP] pairs and token type ids.

    Fast (tokenizers-backed), so offsets, word ids and overflowing windows
    work as they do for bert-base-uncased.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    raw = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    raw.normalizer = normalizers.BertNormalizer(lowercase=True)
    raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    raw.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    raw.train_from_iterator(_training_corpus(1_000_000), trainer=trainer)
    cls_id, sep_id = raw.token_to_id("[CLS]"), raw.token_to_id("[SEP]")
    raw.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        model_max_length=512,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


T5_TASK_PARAMS = {
    "summarization": {
        "early_stopping": True,
        "length_penalty": 2.0,
        "max_length": 200,
        "min_length": 30,
        "no_repeat_ngram_size": 3,
        "num_beams": 4,
        "prefix": "summarize: ",
    },
    "translation_en_to_de": {
        "early_stopping": True,
        "max_length": 300,
        "num_beams": 4,
        "prefix": "translate English to German: ",
    },
    "translation_en_to_fr": {
        "early_stopping": True,
        "max_length": 300,
        "num_beams": 4,
        "prefix": "translate English to French: ",
    },
}
"""config.task_specific_params as t5-small has them (its en_to_ro entry left out): summarization and
translation run beam search."""


def train_unigram_tokenizer(vocab_size: int = 2000):
    """A T5-style sentencepiece Unigram (Metaspace, ``</s>`` appended, <pad>=0, </s>=1, <unk>=2)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.Unigram())
    raw.normalizer = normalizers.NFKC()
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    raw.train_from_iterator(_training_corpus(300_000), trainer=trainer)
    raw.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", raw.token_to_id("</s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", model_max_length=512
    )


def build_tiny_t5(out_dir: Path, *, seed: int = 0) -> Path:
    """A 2+2-layer, 64-wide T5ForConditionalGeneration (random weights) with t5-small's task parameters."""
    import torch
    from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration

    tokenizer = train_unigram_tokenizer()
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        task_specific_params=T5_TASK_PARAMS,
        # With T5's default initialisation a model this small greedily repeats <pad>, which decodes to nothing.
        initializer_factor=5.0,
    )
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=32,
        do_sample=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


BUILDERS = {
    TINY_LLAMA: ("text-generation", build_tiny_llama),
    SMOLLM_SHAPE: ("text-generation", build_smollm_shape),
    TINY_T5: ("text2text-generation", build_tiny_t5),
    **ENCODER_BUILDERS,
}
# smollm-shape is 540 MB and slow on CPU: built only when named (benchmarks), never by default.
DEFAULT_MODELS = [TINY_LLAMA]


def build_models(root: Path, names: list[str] | None = None, *, force: bool = False, progress=print) -> Path:
    """Build the named models (default: DEFAULT_MODELS) under root and write root/models.yaml listing them."""
    names = names or DEFAULT_MODELS
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
