"""The running batch's KV cache: rows of different lengths, left-padded to one length.

Rows are prefilled one request at a time and merged in here, so each row's
keys and values are exactly those ``model.generate`` would compute for its
prompt alone; the attention mask hides the padding and position ids are
kept per row, so a decode step gives every row what it would get on its
own. Memory moves only when rows join or leave (one copy), never per step
beyond the cache's own append.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class UnsupportedCache(RuntimeError):
    """The model's cache is not a plain per-layer key/value cache this batcher can pad and merge."""


@dataclass
class PrefilledRows:
    """Rows ready to join the batch: a prefilled cache (one row per sequence) and each row's next input token."""

    cache: DynamicCache
    length: int
    next_tokens: torch.Tensor


class PaddedKVBatch:
    def __init__(self, model, device: torch.device):
        self.model = model
        self.device = device
        # Ask for the last position's logits only, when the model allows it (as generate does).
        supports_logits_to_keep = getattr(model, "_supports_logits_to_keep", lambda: False)()
        self._forward_kwargs = {"use_cache": True} | ({"logits_to_keep": 1} if supports_logits_to_keep else {})
        self.clear()

    def clear(self) -> None:
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(0, dtype=torch.long, device=self.device)
        self.next_tokens = torch.zeros(0, dtype=torch.long, device=self.device)

    def __len__(self) -> int:
        return len(self.next_tokens)

    @property
    def width(self) -> int:
        """Cache length in tokens, padding included."""
        return self.mask.shape[1]

    def prefill(self, prompt_token_ids: list[int]) -> tuple[DynamicCache, torch.Tensor]:
        """Run one prompt alone, as generate does for a single unpadded prompt; return its cache and last logits.

        The batch itself is untouched: the rows join later through ``merge``.
        """
        input_ids = torch.tensor([prompt_token_ids], dtype=torch.long, device=self.device)
        positions = torch.arange(len(prompt_token_ids), dtype=torch.long, device=self.device)[None]
        cache = DynamicCache()
        output = self.model(input_ids=input_ids, position_ids=positions, past_key_values=cache, **self._forward_kwargs)
        return cache, output.logits[:, -1].to(dtype=torch.float32, copy=True)

    def decode(self) -> torch.Tensor:
        """Feed every row its next token; return float32 logits [rows, vocab] for the token after it."""
        mask = torch.cat([self.mask, self.mask.new_ones(len(self), 1)], dim=1)
        output = self.model(
            input_ids=self.next_tokens[:, None],
            attention_mask=mask,
            position_ids=self.positions[:, None],
            past_key_values=self.cache,
            **self._forward_kwargs,
        )
        self.mask = mask
        self.positions = self.positions + 1
        return output.logits[:, -1].to(dtype=torch.float32, copy=True)

    def merge(self, parts: list[PrefilledRows]) -> None:
        """Append rows: everything is left-padded to the longest, in one copy per layer."""
        if not parts:
            return
        for part in parts:
            _check_plain(part.cache)
        width = max([self.width] + [p.length for p in parts])
        rows = len(self) + sum(len(p.next_tokens) for p in parts)
        # (cache, its mask or None when unpadded, rows, length) for the running rows first, then each part.
        sources = ([(self.cache, self.mask, len(self), self.width)] if len(self) else []) + [
            (p.cache, None, len(p.next_tokens), p.length) for p in parts
        ]
        template = parts[0].cache
        layers = []
        for layer_index, layer in enumerate(template.layers):
            keys = _padded_like(layer.keys, rows, width)
            values = _padded_like(layer.values, rows, width)
            start = 0
            for cache, _mask, count, length in sources:
                source = cache.layers[layer_index]
                keys[start : start + count, :, width - length :] = source.keys
                values[start : start + count, :, width - length :] = source.values
                start += count
            layers.append((keys, values))
        mask = torch.zeros(rows, width, dtype=torch.long, device=self.device)
        start = 0
        for _cache, old_mask, count, length in sources:
            mask[start : start + count, width - length :] = 1 if old_mask is None else old_mask
            start += count
        # Nothing above touched the running batch: only now, with every copy made, does it change.
        for layer, (keys, values) in zip(template.layers, layers):
            layer.keys, layer.values = keys, values
        self.cache = template
        self.mask = mask
        self.positions = torch.cat([self.positions] + [torch.full_like(p.next_tokens, p.length) for p in parts])
        self.next_tokens = torch.cat([self.next_tokens] + [p.next_tokens for p in parts])

    def select(self, keep: list[int]) -> None:
        """Keep only these rows, then drop the columns that are padding in every remaining row."""
        if not keep:
            self.clear()
            return
        index = torch.as_tensor(keep, dtype=torch.long, device=self.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        self.positions = self.positions[index]
        self.next_tokens = self.next_tokens[index]
        first_used = int(self.mask.any(dim=0).to(torch.uint8).argmax())
        if first_used:
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, first_used:]
                layer.values = layer.values[:, :, first_used:]
            self.mask = self.mask[:, first_used:]


def _padded_like(states: torch.Tensor, rows: int, width: int) -> torch.Tensor:
    """Zeros for [rows, heads, width, head_dim] states: padding that the attention mask hides."""
    return states.new_zeros((rows, states.shape[1], width, states.shape[3]))


def _check_plain(cache: DynamicCache) -> None:
    for layer in cache.layers:
        if type(layer) is not DynamicLayer or layer.keys is None or layer.keys.dim() != 4:
            raise UnsupportedCache(
                f"the padded-KV engine needs a plain key/value cache in every layer, got {type(layer).__name__}; "
                "this model (sliding-window, linear-attention or shared-KV layers) needs another engine"
            )
