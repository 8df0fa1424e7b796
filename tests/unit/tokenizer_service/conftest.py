"""Tokenizers of the three decoder families the detokenizer must get exactly right.

- tiny-llama (built by the session's ``models_file``): GPT-2-style byte-level BPE;
- a Llama/Mistral-style sentencepiece BPE: BOS added to prompts, Metaspace
  ``▁``, byte fallback (``<0xE4>`` tokens for characters outside its small
  alphabet) and a decoder that strips the first space;
- a T5-style Unigram with a Metaspace decoder whose ``decode`` cleans up
  tokenization spaces (`` .`` → ``.``).

The last two are trained here with the tokenizers library in milliseconds.
"""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

# Plain text only: CJK and emoji stay outside the sentencepiece alphabet, so they take the byte-fallback path.
TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog. Isn't it? I'm sure you're right, we've seen it!",
    "Streaming text , token by token ; don't split characters . What's next ? She's here .",
    "Hello world, hello tokenizer. Numbers 12345 and 67890 appear too: a + b = c.",
] * 40


# Text the property tests draw from: multi-byte characters of every UTF-8 length, and cleanup patterns.
def train_llama_style_tokenizer() -> PreTrainedTokenizerFast:
    raw = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    raw.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], limit_alphabet=60, show_progress=False
    )
    raw.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    # The 256 byte tokens are ordinary vocabulary entries, as in Llama's tokenizer.model.
    spec = json.loads(raw.to_str())
    vocab = spec["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    # Like Llama, a prompt starts with BOS when special tokens are added.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def train_space_cleaning_tokenizer() -> PreTrainedTokenizerFast:
    raw = Tokenizer(models.Unigram())
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=200, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    raw.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", clean_up_tokenization_spaces=True
    )


@pytest.fixture(scope="session")
def tiny_llama_tokenizer(tiny_llama_dir):
    return AutoTokenizer.from_pretrained(tiny_llama_dir)


@pytest.fixture(scope="session")
def llama_style_tokenizer():
    return train_llama_style_tokenizer()


@pytest.fixture(scope="session")
def space_cleaning_tokenizer():
    return train_space_cleaning_tokenizer()


@pytest.fixture(scope="session", params=["byte-level", "sentencepiece-byte-fallback", "unigram-space-cleanup"])
def any_tokenizer(request):
    """Each decoder family in turn."""
    return {
        "byte-level": lambda: request.getfixturevalue("tiny_llama_tokenizer"),
        "sentencepiece-byte-fallback": lambda: request.getfixturevalue("llama_style_tokenizer"),
        "unigram-space-cleanup": lambda: request.getfixturevalue("space_cleaning_tokenizer"),
    }[request.param]()
