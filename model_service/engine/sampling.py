"""Choosing the next token for every row of a batch whose rows have different sampling options.

Each transform reproduces one of transformers' logits processors exactly
(RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
TopPLogitsWarper with min_tokens_to_keep=1), applied in generate's order, so
a row samples from the same distribution it would in ``model.generate``.
Per-row options live in tensors and are only rebuilt when rows join or
leave; a step costs a handful of batched kernels, not a loop over rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from model_service.engine.interface import SamplingOptions


class SamplingRows:
    """Sampling state of a set of rows: options, seen tokens (for the penalty) and random generators."""

    def __init__(
        self,
        *,
        temperature: torch.Tensor,
        top_k: list[int],
        top_p: torch.Tensor,
        penalty: torch.Tensor,
        do_sample: list[bool],
        seen: torch.Tensor,
        generators: list[torch.Generator | None],
    ):
        self.temperature = temperature  # float32 [rows]
        self.top_k = top_k
        self.top_p = top_p  # float64 [rows]: 1 - top_p is computed in double precision, as transformers does
        self.penalty = penalty  # float32 [rows]
        self.do_sample = do_sample
        self.seen = seen  # bool [rows, vocab]: token ids in the prompt or generated so far
        self.generators = generators
        self._plan()

    @classmethod
    def for_request(
        cls, options: SamplingOptions, prompt_token_ids: Sequence[int], rows: int, vocab_size: int, device
    ) -> SamplingRows:
        """Rows for the sequences of one request; they share one generator seeded from the request's seed."""
        seen = torch.zeros(rows, vocab_size, dtype=torch.bool, device=device)
        prompt = torch.as_tensor(list(prompt_token_ids), dtype=torch.long, device=device)
        # Ids past the logits' width cannot be penalized (transformers ignores them too).
        seen[:, prompt[prompt < vocab_size]] = True
        generator = None
        if options.do_sample and options.seed is not None:
            generator = torch.Generator(device=device)
            generator.manual_seed(options.seed)
        return cls(
            temperature=torch.full((rows,), options.temperature, dtype=torch.float32, device=device),
            top_k=[options.top_k] * rows,
            top_p=torch.full((rows,), options.top_p, dtype=torch.float64, device=device),
            penalty=torch.full((rows,), options.repetition_penalty, dtype=torch.float32, device=device),
            do_sample=[options.do_sample] * rows,
            seen=seen,
            generators=[generator] * rows,
        )

    @classmethod
    def concat(cls, parts: Sequence[SamplingRows]) -> SamplingRows:
        return cls(
            temperature=torch.cat([p.temperature for p in parts]),
            top_k=[k for p in parts for k in p.top_k],
            top_p=torch.cat([p.top_p for p in parts]),
            penalty=torch.cat([p.penalty for p in parts]),
            do_sample=[s for p in parts for s in p.do_sample],
            seen=torch.cat([p.seen for p in parts]),
            generators=[g for p in parts for g in p.generators],
        )

    def __len__(self) -> int:
        return len(self.do_sample)

    def select(self, keep: list[int]) -> SamplingRows:
        index = torch.as_tensor(keep, dtype=torch.long, device=self.seen.device)
        return SamplingRows(
            temperature=self.temperature[index],
            top_k=[self.top_k[i] for i in keep],
            top_p=self.top_p[index],
            penalty=self.penalty[index],
            do_sample=[self.do_sample[i] for i in keep],
            seen=self.seen[index],
            generators=[self.generators[i] for i in keep],
        )

    def _plan(self) -> None:
        """Work out once per membership change which transforms apply to which rows."""
        device = self.seen.device
        self._penalized = bool((self.penalty != 1.0).any()) if len(self) else False
        sampled = [i for i, s in enumerate(self.do_sample) if s]
        self._sampled = torch.as_tensor(sampled, dtype=torch.long, device=device) if sampled else None
        self._all_sampled = len(sampled) == len(self)
        # Positions within the sampled rows, for the filters that only some of them use.
        with_top_k = [j for j, i in enumerate(sampled) if self.top_k[i] > 0]
        self._top_k_rows = torch.as_tensor(with_top_k, dtype=torch.long, device=device) if with_top_k else None
        top_k = [self.top_k[sampled[j]] for j in with_top_k]
        self._top_k = torch.as_tensor(top_k, dtype=torch.long, device=device)
        self._max_top_k = max(top_k, default=0)
        top_p = self.top_p[self._sampled] if sampled else self.top_p[:0]
        with_top_p = (top_p < 1.0).nonzero().flatten()
        self._top_p_rows = with_top_p if with_top_p.numel() else None
        # One multinomial draw per generator: unseeded rows share the default one.
        groups: dict[int, tuple[torch.Generator | None, list[int]]] = {}
        for j, i in enumerate(sampled):
            generator = self.generators[i]
            groups.setdefault(id(generator), (generator, []))[1].append(j)
        self._draw_groups = [
            (generator, torch.as_tensor(rows, dtype=torch.long, device=device)) for generator, rows in groups.values()
        ]

    def record(self, tokens: torch.Tensor) -> None:
        """Note the tokens just chosen, so the repetition penalty sees them from the next step on."""
        self.seen[torch.arange(len(self), device=tokens.device), tokens] = True

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """Each row's logits [rows, vocab] after its processors: what generate hands to argmax or to sampling."""
        if self._penalized:
            logits = apply_repetition_penalty(logits, self.seen, self.penalty)
        if self._sampled is None:
            return logits
        scores = logits if self._all_sampled else logits[self._sampled]
        # Finite, so that softmax never sees inf - inf: a temperature or repetition penalty near the float32
        # limits (1e-45) overflows to inf. A no-op for every ordinary value; masking below still uses -inf.
        finite = torch.finfo(scores.dtype).max
        scores = (scores / self.temperature[self._sampled, None]).clamp(min=-finite, max=finite)
        if self._top_k_rows is not None:
            scores[self._top_k_rows] = apply_top_k(scores[self._top_k_rows], self._top_k, self._max_top_k)
        if self._top_p_rows is not None:
            rows = self._sampled[self._top_p_rows]
            scores[self._top_p_rows] = apply_top_p(scores[self._top_p_rows], self.top_p[rows])
        if self._all_sampled:
            return scores
        processed = logits.clone()
        processed[self._sampled] = scores
        return processed

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        """Next token per row from float32 logits [rows, vocab]: argmax for greedy rows, a draw for the others."""
        scores = self.process(logits)
        if self._sampled is None:
            return scores.argmax(dim=-1)
        probs = torch.nn.functional.softmax(scores if self._all_sampled else scores[self._sampled], dim=-1)
        drawn = torch.empty(len(probs), dtype=torch.long, device=probs.device)
        for generator, rows in self._draw_groups:
            drawn[rows] = torch.multinomial(probs[rows], num_samples=1, generator=generator).squeeze(1)
        if self._all_sampled:
            return drawn
        tokens = scores.argmax(dim=-1)
        tokens[self._sampled] = drawn
        return tokens


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """RepetitionPenaltyLogitsProcessor per row: seen tokens' logits shrink towards (or away below) zero."""
    factor = penalty[:, None]
    penalized = torch.where(logits < 0, logits * factor, logits / factor)
    return torch.where(seen & (factor != 1.0), penalized, logits)


def apply_top_k(scores: torch.Tensor, top_k: torch.Tensor, max_top_k: int) -> torch.Tensor:
    """TopKLogitsWarper per row: keep each row's k highest scores (ties with the k-th included)."""
    k = top_k.clamp(min=1, max=scores.size(-1))
    highest = torch.topk(scores, min(max_top_k, scores.size(-1)), dim=-1).values
    kth = highest.gather(1, (k - 1)[:, None])
    return scores.masked_fill(scores < kth, -float("inf"))


def apply_top_p(scores: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """TopPLogitsWarper per row: keep the smallest set of highest-probability tokens whose mass reaches top_p."""
    sorted_scores, sorted_indices = torch.sort(scores, descending=False)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    threshold = (1 - top_p).to(cumulative.dtype)[:, None]
    sorted_remove = cumulative <= threshold
    sorted_remove[..., -1:] = False
    remove = sorted_remove.scatter(1, sorted_indices, sorted_remove)
    return scores.masked_fill(remove, -float("inf"))
