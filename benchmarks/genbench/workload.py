"""The workload every phase runs: seeded prompts of mixed lengths cut from real text, and seeded arrivals.

Prompts are excerpts of Python's standard library sources (on disk wherever
Python is), cut to a seeded token length and then stored as the text a
client sends together with the ids the model's tokenizer makes of that text:
the in-process phases feed the ids, pipeserve receives the text, and the
served phase checks that its tokenizer service makes the same ids.
"""

from __future__ import annotations

import hashlib
import random
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

EXCERPT_CHARS_PER_TOKEN = 8
"""Characters read per wanted token: source code averages well under this, so an excerpt is rarely too short."""


@dataclass(frozen=True)
class Prompt:
    text: str
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class Schedule:
    """When requests enter: a closed loop of ``concurrency`` clients, or open-loop arrival offsets (seconds)."""

    concurrency: int | None = None
    arrivals: Sequence[float] | None = None

    def due(self, index: int, in_flight: int, elapsed: float) -> bool:
        """Whether request ``index`` (the next not yet submitted) enters now."""
        if self.arrivals is None:
            return in_flight < self.concurrency
        return self.arrivals[index] <= elapsed


def make_prompts(tokenizer, count: int, *, min_tokens: int, max_tokens: int, seed: int) -> list[Prompt]:
    """``count`` prompts whose lengths are drawn uniformly from [min_tokens, max_tokens] (seeded)."""
    rng = random.Random(seed)
    sources = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    prompts: list[Prompt] = []
    while len(prompts) < count:
        length = rng.randint(min_tokens, max_tokens)
        excerpt = _excerpt(rng, rng.choice(sources), length * EXCERPT_CHARS_PER_TOKEN)
        ids = tokenizer(excerpt, add_special_tokens=False).input_ids[:length]
        if len(ids) < length:
            continue
        # Decoding a cut and encoding again can merge across the cut: keep the ids a server would see.
        text = tokenizer.decode(ids)
        prompts.append(Prompt(text, tuple(tokenizer(text).input_ids)))
    return prompts


def _excerpt(rng: random.Random, path: Path, chars: int) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return ""
    start = rng.randrange(max(1, len(text) - chars))
    return text[start : start + chars]


def poisson_arrivals(count: int, rate_per_s: float, seed: int) -> list[float]:
    """Arrival offsets in seconds from the start (the first at 0) with exponential gaps of mean 1/rate."""
    rng = random.Random(seed)
    offsets = [0.0]
    while len(offsets) < count:
        offsets.append(offsets[-1] + rng.expovariate(rate_per_s))
    return offsets[:count]


def fingerprint(prompts: list[Prompt]) -> str:
    """A short digest of the prompt ids: two reports with the same one measured the same prompts."""
    digest = hashlib.sha256()
    for prompt in prompts:
        digest.update(",".join(map(str, prompt.token_ids)).encode() + b";")
    return digest.hexdigest()[:16]
