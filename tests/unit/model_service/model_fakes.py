"""A fake causal LM for scheduling tests: a fixed, cheap step function that still exercises the KV cache.

It writes each token id (as the key) and its position (as the value) into
the cache it is handed, and its next token depends on every cached token,
its position and the attention mask; like real attention, it refuses
non-finite cache entries even where they are masked. So a row whose cache was padded,
merged or trimmed wrongly, or fed a wrong position id, produces a different
sequence than ``reference_next`` computes in plain Python.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

VOCAB = 97


def reference_next(sequence: list[int]) -> int:
    return sum((token + 1) * (position + 1) for position, token in enumerate(sequence)) % VOCAB


def reference_continuation(prompt: list[int], max_new_tokens: int) -> list[int]:
    sequence = list(prompt)
    for _ in range(max_new_tokens):
        sequence.append(reference_next(sequence))
    return sequence[len(prompt) :]


class FakeLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, int]] = []
        """("prefill" or "decode", rows) per forward, in order."""
        self.fail_on: str | None = None
        """Raise in the next forward of this kind ("prefill" or "decode")."""

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=True):
        rows, length = input_ids.shape
        kind = "prefill" if length > 1 or past_key_values.get_seq_length() == 0 else "decode"
        self.calls.append((kind, rows))
        if self.fail_on == kind:
            self.fail_on = None
            raise RuntimeError(f"injected {kind} failure")
        keys, values = past_key_values.update(
            input_ids[:, None, :, None].float(), position_ids[:, None, :, None].float(), 0
        )
        # Real attention turns a NaN anywhere in what it attends (masked or not) into NaN output.
        assert keys.isfinite().all() and values.isfinite().all(), "attended cache memory that was never written"
        mask = attention_mask if attention_mask is not None else torch.ones(rows, keys.shape[2], dtype=torch.long)
        assert mask.shape[1] == keys.shape[2], "attention mask and cache disagree on the length"
        assert torch.equal(position_ids[:, -1], mask.sum(-1) - 1), "position ids do not count the unpadded tokens"
        tokens, positions = keys[:, 0, :, 0].long(), values[:, 0, :, 0].long()
        next_tokens = (((tokens + 1) * (positions + 1)) * mask).sum(-1) % VOCAB
        logits = torch.full((rows, length, VOCAB), -30.0)
        logits[torch.arange(rows), -1, next_tokens] = 30.0
        return SimpleNamespace(logits=logits)
