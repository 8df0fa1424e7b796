"""Choosing the next token for every row of a batch whose rows have different sampling options.

Each transform reproduces one of transformers' logits processors exactly
(RepetitionPenaltyLogitsProcessor, NoRepeatNGramLogitsProcessor,
MinNewTokensLengthLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
TopPLogitsWarper with min_tokens_to_keep=1), applied in generate's order, so
a row samples from the same distribution it would in ``model.generate``.
Per-row options live in tensors and are only rebuilt when rows join or
leave; a step costs a handful of batched kernels, not a loop over rows. The
two token bans are the exception: they loop over the rows that have them,
since what they forbid depends on each row's own tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from model_service.engine.interface import SamplingOptions


class NGramIndex:
    """The n-grams of one sequence by their first n - 1 tokens, grown token by token.

    NoRepeatNGramLogitsProcessor compares the last n - 1 tokens with every
    window of the sequence at each step; keeping the windows in a dict makes
    the same answer a lookup.
    """

    def __init__(self, size: int, tokens: Sequence[int]):
        self._size = size
        self._tokens: list[int] = []
        self._next: dict[tuple[int, ...], set[int]] = {}
        for token in tokens:
            self.append(token)

    def append(self, token: int) -> None:
        self._tokens.append(token)
        if len(self._tokens) >= self._size:
            ngram = self._tokens[len(self._tokens) - self._size :]
            self._next.setdefault(tuple(ngram[:-1]), set()).add(ngram[-1])

    def banned(self) -> set[int]:
        """Tokens that would complete an n-gram the sequence already holds."""
        if len(self._tokens) < self._size:
            return set()
        return self._next.get(tuple(self._tokens[len(self._tokens) - self._size + 1 :]), set())


@dataclass
class TokenBans:
    """One row's banned tokens: repeated n-grams, and its end-of-sequence tokens before min_new_tokens."""

    eos_token_ids: frozenset[int]
    min_new_tokens: int
    ngrams: NGramIndex | None
    generated: int = 0

    @classmethod
    def for_row(cls, options: SamplingOptions, prompt_token_ids: Sequence[int]) -> TokenBans | None:
        """None for a row that bans nothing, so that unconstrained batches skip the bans altogether."""
        if not options.no_repeat_ngram_size and not options.min_new_tokens:
            return None
        ngrams = NGramIndex(options.no_repeat_ngram_size, prompt_token_ids) if options.no_repeat_ngram_size else None
        return cls(options.eos_token_ids, options.min_new_tokens, ngrams)

    def banned(self) -> set[int]:
        banned = self.ngrams.banned() if self.ngrams is not None else set()
        if self.generated < self.min_new_tokens:
            banned = banned | self.eos_token_ids
        return banned

    def record(self, token: int) -> None:
        self.generated += 1
        if self.ngrams is not None:
            self.ngrams.append(token)


class SamplingRows:
    """Sampling state of a set of rows: options, seen tokens (for the penalty), token bans and random generators.

    A selection shares its rows' ban state with the rows it was selected from.
    """

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
        bans: list[TokenBans | None],
    ):
        self.temperature = temperature  # float32 [rows]
        self.top_k = top_k
        self.top_p = top_p  # float64 [rows]: 1 - top_p is computed in double precision, as transformers does
        self.penalty = penalty  # float32 [rows]
        self.do_sample = do_sample
        self.seen = seen  # bool [rows, vocab]: token ids in the prompt or generated so far
        self.generators = generators
        self.bans = bans
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
            bans=[TokenBans.for_row(options, prompt_token_ids) for _ in range(rows)],
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
            bans=[b for p in parts for b in p.bans],
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
            bans=[self.bans[i] for i in keep],
        )

    def _plan(self) -> None:
        """Work out once per membership change which transforms apply to which rows."""
        device = self.seen.device
        self._penalized = bool((self.penalty != 1.0).any()) if len(self) else False
        self._banning = [(i, bans) for i, bans in enumerate(self.bans) if bans is not None]
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
        """Note the tokens just chosen, so the repetition penalty and the bans see them from the next step on."""
        self.seen[torch.arange(len(self), device=tokens.device), tokens] = True
        if self._banning:
            chosen = tokens.tolist()
            for i, bans in self._banning:
                bans.record(chosen[i])

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """Each row's logits [rows, vocab] after its processors: what generate hands to argmax or to sampling."""
        if self._penalized:
            logits = apply_repetition_penalty(logits, self.seen, self.penalty)
        banned = self._banned(logits)
        if banned is not None:
            logits = logits.masked_fill(banned, -float("inf"))
        if self._sampled is None:
            return logits
        scores = logits if self._all_sampled else logits[self._sampled]
        # Finite, so that softmax never sees inf - inf: a temperature or repetition penalty near the float32
        # limits (1e-45) overflows to inf. A no-op for every ordinary value; masking below still uses -inf.
        finite = torch.finfo(scores.dtype).max
        scores = (scores / self.temperature[self._sampled, None]).clamp(min=-finite, max=finite)
        if banned is not None:
            # Banned tokens stay at -inf, as in generate, not at the clamp's finite floor.
            scores = scores.masked_fill(banned if self._all_sampled else banned[self._sampled], -float("inf"))
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

    def _banned(self, logits: torch.Tensor) -> torch.Tensor | None:
        """Where the rows' bans put -inf, as a mask like logits; None when nothing is banned this step.

        Ids past the logits' width cannot be generated, so they need no ban (transformers skips them too).
        """
        rows, columns = [], []
        for i, bans in self._banning:
            tokens = [token for token in bans.banned() if token < logits.shape[-1]]
            rows.extend([i] * len(tokens))
            columns.extend(tokens)
        if not rows:
            return None
        mask = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
        mask[rows, columns] = True
        return mask


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
