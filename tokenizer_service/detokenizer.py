"""Token ids in, text deltas out: in total exactly what the pipeline would decode.

The generated text of a sequence is defined as
``decode(prompt + generated)[len(decode(prompt)):]`` (both with the same
``skip_special_tokens``), so a sentencepiece ``▁`` or byte-level ``Ġ`` at the
start of the first generated token becomes the space it is in the full text.

The method is TGI's: decode a short window of recent ids, and emit the part
past the window's already-emitted prefix once it does not end in U+FFFD (a
multi-byte character still split across tokens). Each step decodes only the
window, not the sequence. Two additions keep the total exact:

- byte-fallback tokens (``<0xE4>``, sentencepiece-style tokenizers) are
  decoded as one group per run, and an invalid run turns into U+FFFD as a
  whole, so text is never emitted while the sequence ends in such a run and
  the window never starts inside one;
- tokenizers whose ``decode`` applies ``clean_up_tokenization`` (it removes
  the space in `` .``, `` n't``...) are decoded raw in the window and cleaned
  as a stream, holding back text that a later delta could still change.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

REPLACEMENT_CHARACTER = "\ufffd"
# Prompt tokens decoded along with the generated ones, so that the first
# delta's leading space matches the full decode.
PROMPT_CONTEXT_TOKENS = 5
_BYTE_FALLBACK_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


@dataclass(frozen=True)
class DecodeTraits:
    """What IncrementalDetokenizer must know about a tokenizer besides decode(); computed once per tokenizer."""

    byte_fallback_ids: frozenset[int]
    special_ids: frozenset[int]
    cleans_up_spaces: bool

    @classmethod
    def of(cls, tokenizer) -> DecodeTraits:
        byte_ids = frozenset(
            token_id
            for token, token_id in tokenizer.get_vocab().items()
            if len(token) == 6 and _BYTE_FALLBACK_TOKEN.fullmatch(token)
        )
        special = set(tokenizer.all_special_ids)
        special.update(token_id for token_id, token in tokenizer.added_tokens_decoder.items() if token.special)
        return cls(byte_ids, frozenset(special), _decode_cleans_up_spaces(tokenizer))


def _decode_cleans_up_spaces(tokenizer) -> bool:
    """Ask decode() itself: transformers decides per tokenizer (and skips the cleanup for BPE models)."""
    ids = tokenizer.encode("a . b", add_special_tokens=False)
    return tokenizer.decode(ids) != tokenizer.decode(ids, clean_up_tokenization_spaces=False)


class IncrementalDetokenizer:
    """One sequence's generated ids → text deltas; push() per token, finish() once at the end."""

    def __init__(
        self,
        tokenizer,
        prompt_ids: Sequence[int],
        *,
        skip_special_tokens: bool = True,
        traits: DecodeTraits | None = None,
    ):
        traits = traits or DecodeTraits.of(tokenizer)
        self._decode: Callable[[list[int]], str] = partial(
            tokenizer.decode, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False
        )
        self._byte_ids = traits.byte_fallback_ids
        # Ids that decode to nothing: they neither end nor continue a byte-fallback run.
        self._invisible_ids = traits.special_ids if skip_special_tokens else frozenset()
        prompt = list(prompt_ids)
        self._ids, self._prefix_text = self._prompt_context(prompt)
        self._read = len(self._ids)
        self._in_byte_run = self._ends_in_byte_run(prompt)
        self._cleanup = (
            _StreamingSpaceCleanup(tokenizer.clean_up_tokenization, self._decode(prompt))
            if traits.cleans_up_spaces
            else None
        )
        self._finished = False

    def push(self, token_id: int) -> str:
        """Add one generated id; return the text it completes (often "", never a split character)."""
        if self._finished:
            raise RuntimeError("push() after finish()")
        self._ids.append(token_id)
        if token_id in self._invisible_ids:
            # Decodes to nothing: skip the decode (generation past EOS emits long runs of these).
            return ""
        self._in_byte_run = token_id in self._byte_ids
        if self._in_byte_run:
            return ""
        text = self._decode(self._ids)
        if len(text) <= len(self._prefix_text) or text.endswith(REPLACEMENT_CHARACTER):
            return ""
        delta = text[len(self._prefix_text) :]
        self._slide_window()
        return self._cleanup.push(delta) if self._cleanup else delta

    def finish(self) -> str:
        """Release everything held back (an incomplete character becomes U+FFFD, as in the full decode)."""
        if self._finished:
            return ""
        self._finished = True
        delta = self._decode(self._ids)[len(self._prefix_text) :]
        return self._cleanup.push(delta) + self._cleanup.flush() if self._cleanup else delta

    def _slide_window(self) -> None:
        """The ids just emitted become the prefix of the next window; older ones are dropped."""
        self._ids = self._ids[self._read :]
        self._prefix_text = self._decode(self._ids)
        self._read = len(self._ids)

    def _prompt_context(self, prompt: list[int]) -> tuple[list[int], str]:
        """The last few prompt ids, starting outside any byte-fallback run and decoding to something.

        A window that decodes to nothing (say, only special tokens) would let
        decoders that strip the first space of their output strip the first
        generated token's.
        """
        span = PROMPT_CONTEXT_TOKENS
        start = len(prompt)
        while start > 0:
            start = max(0, len(prompt) - span)
            while start > 0 and (prompt[start - 1] in self._byte_ids or prompt[start - 1] in self._invisible_ids):
                start -= 1
            text = self._decode(prompt[start:])
            if text:
                return prompt[start:], text
            span = 2 * (len(prompt) - start)  # doubling: a prompt of special tokens costs O(n), not O(n²)
        return prompt, ""

    def _ends_in_byte_run(self, ids: list[int]) -> bool:
        for token_id in reversed(ids):
            if token_id not in self._invisible_ids:
                return token_id in self._byte_ids
        return False


class _StreamingSpaceCleanup:
    """transformers' ``clean_up_tokenization`` applied to text that arrives in pieces.

    Every rewrite it makes deletes the space that starts a pattern of at most
    four characters (`` .``, `` n't``...). So text up to a point with no space
    among the three characters before it cleans the same alone as with what
    follows, and only text after the last such point is held back.
    """

    _LOOKBACK = 3

    def __init__(self, clean: Callable[[str], str], prompt_text: str):
        self._clean = clean
        # Continue from the prompt's raw tail, and skip what the prompt's own cleaned text already covers.
        self._pending = prompt_text[self._safe_end(prompt_text) :]
        self._skip = len(clean(self._pending))

    def push(self, text: str) -> str:
        self._pending += text
        return self._release(self._safe_end(self._pending))

    def flush(self) -> str:
        return self._release(len(self._pending))

    def _release(self, end: int) -> str:
        cleaned = self._clean(self._pending[:end])
        self._pending = self._pending[end:]
        skipped = min(self._skip, len(cleaned))
        self._skip -= skipped
        return cleaned[skipped:]

    @classmethod
    def _safe_end(cls, text: str) -> int:
        end = len(text)
        while (space := text.rfind(" ", max(0, end - cls._LOOKBACK), end)) >= 0:
            end = space
        return end
