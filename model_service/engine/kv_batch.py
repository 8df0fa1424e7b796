"""The running batch's KV cache: rows of different lengths, left-padded to one length, in preallocated buffers.

Rows are prefilled outside the batch (``prefill`` for one prompt or the
chunks of a long one, ``prefill_together`` for several whole prompts in one
left-padded forward) and written in here, so each row's keys and values are
those ``model.generate`` computes for its prompt alone; the attention mask
hides the padding and position ids are kept per row, so a decode step gives
every row what it would get on its own (up to float rounding that depends on
the batch's shape, the same as for any batched matmul).

Memory layout: per layer, keys and values live in buffers of shape
[row capacity, heads, column capacity, head dim]. All rows end at the same
column (``end``) and a decode step writes every row's new token into that
column: no ``torch.cat`` of the whole cache per step as ``DynamicCache``
does. A joining row is written right-aligned into a free row slot, a leaving
row's slot is refilled by moving the last rows into it (only the moved rows
are copied), and the columns that became padding in every row are dropped by
moving ``start`` (no copy). The whole cache is copied only when the buffer
runs out of room (more rows, a prompt longer than the room left of ``end``,
or ``end`` reaching the last column); capacities grow geometrically, so that
copy is amortized over many steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer

MIN_COLUMNS = 256
"""Smallest column capacity allocated, so short prompts do not relocate the cache every few steps."""
MIN_ROWS = 8
"""Smallest row capacity allocated, so the first few joins do not each copy the cache."""


class UnsupportedCache(RuntimeError):
    """The model's cache is not a plain per-layer key/value cache this batcher can pad and merge."""


@dataclass
class PrefilledRows:
    """Rows ready to join the batch: one request's prefilled cache and each of its sequences' next input token.

    ``cache`` holds one row; every sequence of the request starts from it.
    """

    cache: DynamicCache
    length: int
    next_tokens: torch.Tensor


def kv_bytes_per_token(model) -> int:
    """Bytes one token of one row takes in the KV cache: keys and values of every layer."""
    config = model.config.get_text_config(decoder=True)
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * model.dtype.itemsize


class _BatchLayer(CacheLayerMixin):
    """One model layer's view of the batch: a decode step writes its new keys and values into column ``end``."""

    is_sliding = False

    def __init__(self, batch: PaddedKVBatch, index: int):
        super().__init__()
        self._batch = batch
        self._index = index
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Never needed: the batch allocates the buffers before the first decode."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        return self._batch._write_column(self._index, key_states, value_states)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._batch.width + query_length, 0

    def get_seq_length(self) -> int:
        return self._batch.width

    def get_max_length(self) -> int:
        return -1


class PaddedKVBatch:
    def __init__(self, model, device: torch.device, *, max_rows: int, budget_tokens: int | None = None):
        """``budget_tokens`` caps the buffers' rows × columns (None: no cap); the caller admits only what fits."""
        self.model = model
        self.device = device
        self.max_rows = max_rows
        self.budget_tokens = budget_tokens
        # Ask for the last position's logits only, when the model allows it (as generate does).
        supports_logits_to_keep = getattr(model, "_supports_logits_to_keep", lambda: False)()
        self._forward_kwargs = {"use_cache": True} | ({"logits_to_keep": 1} if supports_logits_to_keep else {})
        # sdpa takes a prepared boolean [rows, 1, 1, keys] mask as is, which spares the model building one per step
        # (~0.35 ms); other attention implementations want another form, so they get the 2D mask to build it from.
        attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
        self._prepared_mask = attention == "sdpa"
        self.relocations = 0
        """Times the whole cache was copied into new buffers (for tests and profiling)."""
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        self._mask = torch.zeros(0, 0, dtype=torch.bool, device=device)
        self._cache: Cache | None = None
        self.clear()

    def clear(self) -> None:
        """Drop every row and free the buffers."""
        self._keys, self._values = [], []
        self._mask = torch.zeros(0, 0, dtype=torch.bool, device=self.device)
        self._cache = None
        self._drop_rows()

    def _drop_rows(self) -> None:
        self.rows = 0
        self.start = self.end = 0
        self.positions = torch.zeros(0, dtype=torch.long, device=self.device)
        self.next_tokens = torch.zeros(0, dtype=torch.long, device=self.device)

    def __len__(self) -> int:
        return self.rows

    @property
    def width(self) -> int:
        """Cache length in tokens, padding included: what one decode step attends over."""
        return self.end - self.start

    @property
    def capacity(self) -> tuple[int, int]:
        """(rows, columns) the buffers hold."""
        return tuple(self._mask.shape)

    def prefill(self, token_ids: list[int], cache: DynamicCache | None = None) -> tuple[DynamicCache, torch.Tensor]:
        """Run prompt tokens of one request alone, after those already in ``cache`` (None: a fresh prompt).

        Returns the cache and the float32 logits after the last token. The
        batch itself is untouched: the rows join later through ``merge``.
        Feeding a prompt in one call is exactly what generate does; feeding
        it in chunks is chunked prefill.
        """
        cache = cache if cache is not None else DynamicCache()
        offset = cache.get_seq_length()
        input_ids = torch.tensor([token_ids], dtype=torch.long, device=self.device)
        positions = torch.arange(offset, offset + len(token_ids), dtype=torch.long, device=self.device)[None]
        output = self.model(input_ids=input_ids, position_ids=positions, past_key_values=cache, **self._forward_kwargs)
        return cache, output.logits[:, -1].to(dtype=torch.float32, copy=True)

    def prefill_together(self, prompts: list[list[int]]) -> list[tuple[DynamicCache, torch.Tensor]]:
        """Prefill whole prompts in one left-padded forward; per prompt, its own one-row cache and last logits.

        The mask hides the padding and position ids count each prompt from
        0, so every prompt's keys, values and logits are its alone-prefill's
        up to float rounding (the same as a batched decode step's). One
        forward of several prompts costs about half of one forward each on
        a CPU, where a small model's prefill is dominated by per-forward
        overhead and thin matmuls.
        """
        if len(prompts) == 1:
            return [self.prefill(prompts[0])]
        longest = max(len(prompt) for prompt in prompts)
        input_ids = torch.zeros((len(prompts), longest), dtype=torch.long, device=self.device)
        mask = torch.zeros((len(prompts), longest), dtype=torch.long, device=self.device)
        for row, prompt in enumerate(prompts):
            input_ids[row, longest - len(prompt) :] = torch.as_tensor(prompt, dtype=torch.long)
            mask[row, longest - len(prompt) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        output = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            **self._forward_kwargs,
        )
        logits = output.logits[:, -1].to(dtype=torch.float32, copy=True)
        prefilled = []
        for row, prompt in enumerate(prompts):
            alone = DynamicCache()
            columns = slice(longest - len(prompt), longest)
            for layer, states in enumerate(cache.layers):
                alone.update(states.keys[row : row + 1, :, columns], states.values[row : row + 1, :, columns], layer)
            prefilled.append((alone, logits[row : row + 1]))
        return prefilled

    def decode(self) -> torch.Tensor:
        """Feed every row its next token; return float32 logits [rows, vocab] for the token after it."""
        if self.end == self.capacity[1]:
            self._relocate(self.rows, 0)
        self._mask[: self.rows, self.end] = True
        mask = self._mask[: self.rows, self.start : self.end + 1]
        output = self.model(
            input_ids=self.next_tokens[:, None],
            attention_mask=mask[:, None, None, :] if self._prepared_mask else mask,
            position_ids=self.positions[:, None],
            past_key_values=self._cache,
            **self._forward_kwargs,
        )
        self.end += 1
        self.positions = self.positions + 1
        return output.logits[:, -1].to(dtype=torch.float32, copy=True)

    def _write_column(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if keys.shape[2] != 1:
            raise UnsupportedCache("the batch cache takes one token per row and step; prefill runs outside it")
        self._keys[layer][: self.rows, :, self.end] = keys[:, :, 0]
        self._values[layer][: self.rows, :, self.end] = values[:, :, 0]
        columns = slice(self.start, self.end + 1)
        return self._keys[layer][: self.rows, :, columns], self._values[layer][: self.rows, :, columns]

    def merge(self, parts: list[PrefilledRows]) -> None:
        """Append rows, each right-aligned at ``end``; the cache is copied only when the buffers lack room."""
        if not parts:
            return
        for part in parts:
            _check_plain(part.cache)
        if not self._keys:
            self._allocate_like(parts[0].cache)
        joining = sum(len(p.next_tokens) for p in parts)
        longest = max(p.length for p in parts)
        rows = self.rows + joining
        row_capacity, column_capacity = self.capacity
        if not self.rows and rows <= row_capacity and longest < column_capacity:
            # Empty buffers that fit: no copy, just place the rows with room on both sides of ``end``.
            self.start = self.end = max(longest, column_capacity // 2)
        elif rows > row_capacity or longest > self.end:
            self._relocate(rows, longest)
        start = min(self.start, self.end - longest)
        # Padding is attended (and masked): it must hold finite numbers, and the buffers start uninitialized.
        self._fill_padding(slice(0, self.rows), slice(start, self.start))
        first = self.rows
        for part in parts:
            count = len(part.next_tokens)
            slots, columns = slice(first, first + count), slice(self.end - part.length, self.end)
            self._fill_padding(slots, slice(start, columns.start))
            for layer, source in enumerate(part.cache.layers):
                self._keys[layer][slots, :, columns] = source.keys
                self._values[layer][slots, :, columns] = source.values
            self._mask[slots] = False
            self._mask[slots, columns] = True
            first += count
        self.start = start
        self.positions = torch.cat([self.positions] + [torch.full_like(p.next_tokens, p.length) for p in parts])
        self.next_tokens = torch.cat([self.next_tokens] + [p.next_tokens for p in parts])
        self.rows = rows

    def _fill_padding(self, rows: slice, columns: slice) -> None:
        if rows.start < rows.stop and columns.start < columns.stop:
            for states in (*self._keys, *self._values):
                states[rows, :, columns] = 0

    def keep(self, keep: list[int]) -> list[int]:
        """Keep only the rows at these positions (ascending); return the old position of each row now in place.

        Survivors already below the new row count stay where they are; the
        ones above it move into the freed slots, so only they are copied.
        """
        if not keep:
            # The buffers stay for the next rows: allocating them again would cost more than holding them.
            self._drop_rows()
            return []
        count = len(keep)
        kept = set(keep)
        holes = [position for position in range(count) if position not in kept]
        movers = [position for position in keep if position >= count]
        order = list(range(count))
        if holes:
            for hole, mover in zip(holes, movers):
                order[hole] = mover
            target = torch.as_tensor(holes, dtype=torch.long, device=self.device)
            source = torch.as_tensor(movers, dtype=torch.long, device=self.device)
            columns = slice(self.start, self.end)
            for states in (*self._keys, *self._values):
                states[target, :, columns] = states[source, :, columns]
            self._mask[target] = self._mask[source]
        index = torch.as_tensor(order, dtype=torch.long, device=self.device)
        self.positions = self.positions[index]
        self.next_tokens = self.next_tokens[index]
        self.rows = count
        used = self._mask[:count, self.start : self.end].any(dim=0)
        self.start += int(used.to(torch.uint8).argmax())
        return order

    def _allocate_like(self, template: DynamicCache) -> None:
        self._keys = [
            layer.keys.new_zeros((0, layer.keys.shape[1], 0, layer.keys.shape[3])) for layer in template.layers
        ]
        self._values = [
            layer.values.new_zeros((0, layer.values.shape[1], 0, layer.values.shape[3])) for layer in template.layers
        ]
        self._cache = Cache(layers=[_BatchLayer(self, index) for index in range(len(template.layers))])

    def _relocate(self, rows: int, longest_joining: int) -> None:
        """Copy the cache into new buffers with room for ``rows`` rows, a joining prompt and at least one step.

        The rows end at column max(width, longest joining prompt), leaving the
        rest of the columns for decode steps.
        """
        width = self.width
        end = max(width, longest_joining)
        row_capacity = self._row_capacity(rows, end + 1)
        column_capacity = self._column_capacity(row_capacity, end + 1)
        old = slice(self.start, self.end)
        new = slice(end - width, end)
        for states in (self._keys, self._values):
            for layer, buffer in enumerate(states):
                # Uninitialized: only the window is copied in, and columns outside it are written before they
                # are attended, so untouched capacity never costs a page fault.
                fresh = buffer.new_empty((row_capacity, buffer.shape[1], column_capacity, buffer.shape[3]))
                fresh[: self.rows, :, new] = buffer[: self.rows, :, old]
                states[layer] = fresh
        mask = torch.zeros(row_capacity, column_capacity, dtype=torch.bool, device=self.device)
        mask[: self.rows, new] = self._mask[: self.rows, old]
        self._mask = mask
        self.start, self.end = end - width, end
        self.relocations += 1

    def _row_capacity(self, rows: int, columns: int) -> int:
        current = self.capacity[0]
        if rows <= current and (self.budget_tokens is None or current * columns <= self.budget_tokens):
            return current
        wanted = min(self.max_rows, max(rows, 2 * current, MIN_ROWS))
        if self.budget_tokens is not None:
            wanted = min(wanted, self.budget_tokens // columns)
        return max(rows, wanted)

    def _column_capacity(self, rows: int, columns: int) -> int:
        wanted = max(2 * columns, MIN_COLUMNS)
        if self.budget_tokens is not None:
            wanted = min(wanted, self.budget_tokens // rows)
        return max(columns, wanted)


def _check_plain(cache: DynamicCache) -> None:
    for layer in cache.layers:
        if type(layer) is not DynamicLayer or layer.keys is None or layer.keys.dim() != 4:
            raise UnsupportedCache(
                f"the padded-KV engine needs a plain key/value cache in every layer, got {type(layer).__name__}; "
                "this model (sliding-window, linear-attention or shared-KV layers) needs another engine"
            )
