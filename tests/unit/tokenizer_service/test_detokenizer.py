"""IncrementalDetokenizer: the deltas add up to exactly the pipeline's text, and never split a character."""

from __future__ import annotations

import random

import pytest
from detokenizer_samples import SAMPLE_TEXTS

from tokenizer_service.detokenizer import (
    REPLACEMENT_CHARACTER,
    DecodeTraits,
    IncrementalDetokenizer,
    _StreamingSpaceCleanup,
)

CASES = 300


def expected_text(tokenizer, prompt: list[int], generated: list[int], skip_special_tokens: bool) -> str:
    """How the pipeline defines a sequence's generated text."""
    full = tokenizer.decode(prompt + generated, skip_special_tokens=skip_special_tokens)
    return full[len(tokenizer.decode(prompt, skip_special_tokens=skip_special_tokens)) :]


def random_text(rng: random.Random, max_parts: int = 3) -> str:
    parts = []
    for _ in range(rng.randint(1, max_parts)):
        text = rng.choice(SAMPLE_TEXTS)
        start = rng.randrange(len(text))
        parts.append(text[start : start + rng.randint(1, 24)])
    return " ".join(parts) if rng.random() < 0.5 else "".join(parts)


def random_generation(rng: random.Random, tokenizer) -> list[int]:
    """Either text a model could produce, or any ids at all (invalid UTF-8 and special tokens included)."""
    if rng.random() < 0.5:
        ids = tokenizer.encode(random_text(rng, 4), add_special_tokens=False)
        for _ in range(rng.randint(0, 2)):
            ids.insert(rng.randint(0, len(ids)), rng.choice(tokenizer.all_special_ids))
        return ids
    return [rng.randrange(len(tokenizer)) for _ in range(rng.randint(0, 40))]


def detokenize(tokenizer, prompt, generated, skip_special_tokens, traits) -> list[str]:
    detokenizer = IncrementalDetokenizer(tokenizer, prompt, skip_special_tokens=skip_special_tokens, traits=traits)
    return [detokenizer.push(token_id) for token_id in generated] + [detokenizer.finish()]


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_deltas_add_up_to_the_full_decode(any_tokenizer, skip_special_tokens):
    tokenizer = any_tokenizer
    traits = DecodeTraits.of(tokenizer)
    rng = random.Random(1234)
    for _ in range(CASES):
        prompt = tokenizer.encode(random_text(rng), add_special_tokens=rng.random() < 0.5)
        generated = random_generation(rng, tokenizer)
        deltas = detokenize(tokenizer, prompt, generated, skip_special_tokens, traits)
        expected = expected_text(tokenizer, prompt, generated, skip_special_tokens)
        assert "".join(deltas) == expected, (prompt, generated)
        if REPLACEMENT_CHARACTER not in expected:
            assert not any(REPLACEMENT_CHARACTER in delta for delta in deltas), (prompt, generated, deltas)


def test_multibyte_characters_are_never_split(any_tokenizer):
    """Valid text streams without a single U+FFFD, character by character as the ids complete them."""
    tokenizer = any_tokenizer
    traits = DecodeTraits.of(tokenizer)
    text = "emoji 🙂 😀 🚀 and CJK 你好，世界 and 👍🏽 end"
    prompt = tokenizer.encode("Say:", add_special_tokens=False)
    generated = tokenizer.encode(text, add_special_tokens=False)
    deltas = detokenize(tokenizer, prompt, generated, True, traits)
    assert "".join(deltas) == expected_text(tokenizer, prompt, generated, True)
    assert not any(REPLACEMENT_CHARACTER in delta for delta in deltas)
    assert len([d for d in deltas if d]) > 5, "text should stream, not arrive at finish()"


def test_byte_level_leading_space_and_held_bytes(tiny_llama_tokenizer):
    tokenizer = tiny_llama_tokenizer
    emoji_ids = tokenizer.encode("🙂", add_special_tokens=False)
    assert len(emoji_ids) > 1, "the test needs an emoji split across tokens"
    detokenizer = IncrementalDetokenizer(tokenizer, tokenizer.encode("Hi", add_special_tokens=False))
    assert detokenizer.push(tokenizer.encode(" there", add_special_tokens=False)[0]).startswith(" ")
    assert [detokenizer.push(token_id) for token_id in emoji_ids[:-1]] == [""] * (len(emoji_ids) - 1)
    assert detokenizer.push(emoji_ids[-1]) == "🙂"
    # An incomplete character left at the end is released as the full decode has it.
    detokenizer.push(emoji_ids[0])
    assert detokenizer.finish() == tokenizer.decode(emoji_ids[:1])


def test_sentencepiece_first_generated_token_keeps_its_space(llama_style_tokenizer):
    tokenizer = llama_style_tokenizer
    prompt = tokenizer.encode("Hello", add_special_tokens=True)
    generated = tokenizer.encode("world again", add_special_tokens=False)
    assert tokenizer.convert_ids_to_tokens(generated[0]).startswith("▁")
    deltas = detokenize(tokenizer, prompt, generated, True, DecodeTraits.of(tokenizer))
    assert "".join(deltas) == " world again"


def test_prompt_ending_in_special_tokens_keeps_the_first_space(llama_style_tokenizer):
    """The prompt context reaches back to text, so the decoder's first-space strip does not eat the delta's."""
    tokenizer = llama_style_tokenizer
    prompt = tokenizer.encode("Hello", add_special_tokens=False) + [tokenizer.eos_token_id] * 8
    generated = tokenizer.encode("world", add_special_tokens=False)
    deltas = detokenize(tokenizer, prompt, generated, True, DecodeTraits.of(tokenizer))
    assert "".join(deltas) == expected_text(tokenizer, prompt, generated, True) == " world"


def test_byte_fallback_run_is_held_until_it_ends(llama_style_tokenizer):
    """A run of <0x..> tokens decodes as a whole: an invalid run turns every byte of it into U+FFFD."""
    tokenizer = llama_style_tokenizer
    traits = DecodeTraits.of(tokenizer)
    assert len(traits.byte_fallback_ids) == 256
    byte = {value: tokenizer.convert_tokens_to_ids(f"<0x{value:02X}>") for value in (0x41, 0xE4)}
    word = tokenizer.encode("the", add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(tokenizer, word, traits=traits)
    generated = [byte[0x41], byte[0xE4], *word]
    deltas = [detokenizer.push(token_id) for token_id in generated] + [detokenizer.finish()]
    assert deltas[:2] == ["", ""], "no text while the run may still turn invalid"
    assert "".join(deltas) == expected_text(tokenizer, word, generated, True)
    assert REPLACEMENT_CHARACTER * 2 in "".join(deltas)


def test_space_cleanup_matches_decode(space_cleaning_tokenizer):
    tokenizer = space_cleaning_tokenizer
    traits = DecodeTraits.of(tokenizer)
    assert traits.cleans_up_spaces
    prompt = tokenizer.encode("I said", add_special_tokens=False)
    generated = tokenizer.encode(" it ' s here . Is n't it ? you 're right !", add_special_tokens=False)
    deltas = detokenize(tokenizer, prompt, generated, True, traits)
    assert "".join(deltas) == expected_text(tokenizer, prompt, generated, True)
    assert "here. Isn't it? you're right!" in "".join(deltas)


def test_streaming_space_cleanup_equals_cleaning_the_whole_text(space_cleaning_tokenizer):
    clean = space_cleaning_tokenizer.clean_up_tokenization
    rng = random.Random(7)
    alphabet = [" ", " ", " ", "'", ".", "?", "!", ",", "n", "t", "m", "s", "v", "e", "r", "x"]
    for _ in range(2000):
        prompt = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        cleanup = _StreamingSpaceCleanup(clean, prompt)
        pieces, position = [], 0
        while position < len(text):
            size = rng.randint(1, 5)
            pieces.append(cleanup.push(text[position : position + size]))
            position += size
        pieces.append(cleanup.flush())
        assert "".join(pieces) == clean(prompt + text)[len(clean(prompt)) :], (prompt, text)


def test_each_step_decodes_a_short_window(tiny_llama_tokenizer):
    """Streaming cost per token does not grow with the length of the sequence."""
    tokenizer = tiny_llama_tokenizer
    decoded_lengths = []

    class RecordingTokenizer:
        def __getattr__(self, name):
            return getattr(tokenizer, name)

        def decode(self, ids, **kwargs):
            decoded_lengths.append(len(ids))
            return tokenizer.decode(ids, **kwargs)

    generated = tokenizer.encode("def main():\n    print('你好 🙂')\n" * 40, add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(
        RecordingTokenizer(), tokenizer.encode("x = 1"), traits=DecodeTraits.of(tokenizer)
    )
    decoded_lengths.clear()
    text = "".join(detokenizer.push(token_id) for token_id in generated) + detokenizer.finish()
    assert text == expected_text(tokenizer, tokenizer.encode("x = 1"), generated, True)
    assert len(generated) > 300 and max(decoded_lengths) <= 16


def test_push_after_finish_is_a_bug(tiny_llama_tokenizer):
    detokenizer = IncrementalDetokenizer(tiny_llama_tokenizer, [])
    assert detokenizer.finish() == ""
    with pytest.raises(RuntimeError):
        detokenizer.push(5)
