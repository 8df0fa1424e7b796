"""From per-request timestamps to the reported figures, measured the same way for every phase.

Every phase yields one ``RequestTiming`` per request: when the request was
submitted (its scheduled arrival, so a late client or a busy server is
charged to the system, not hidden) and when each generated token became
visible to the caller. The figures then follow one definition everywhere:

* tokens/s: all generated tokens / (last token seen - first submission);
* TTFT: first token - submission;
* ITL: the gap before each later token. Tokens that arrive together (a
  static batch's step, a streamed chunk of k tokens) share the gap: a
  chunk of k tokens after a gap g counts as k gaps of g/k, which makes a
  chunked stream comparable to a per-step time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

FIGURES = ("tokens_per_s", "ttft_p50_s", "ttft_p95_s", "itl_p50_s", "itl_p95_s")


class BenchmarkError(RuntimeError):
    """A phase did not run the workload as specified, so its figures would not be comparable."""


@dataclass
class RequestTiming:
    submitted: float
    token_times: list[float] = field(default_factory=list)

    def add_tokens(self, count: int, at: float) -> None:
        """Record ``count`` tokens seen together at ``at``, spreading them over the gap since the previous one."""
        previous = self.token_times[-1] if self.token_times else at
        self.token_times.extend(previous + (at - previous) * (i + 1) / count for i in range(count))

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.submitted

    @property
    def itls(self) -> list[float]:
        return [later - earlier for earlier, later in zip(self.token_times, self.token_times[1:])]


@dataclass
class Result:
    """One row of the report: a phase under one load."""

    phase: str
    load: str
    concurrency: int | None
    arrival_rate: float | None
    requests: int
    generated_tokens: int
    wall_s: float
    tokens_per_s: float
    ttft_p50_s: float
    ttft_p95_s: float
    itl_p50_s: float
    itl_p95_s: float
    vs_b: dict[str, float] | None = None
    """Each figure divided by phase b's at the same concurrency (None for arrival-driven loads)."""

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(
    phase: str,
    timings: list[RequestTiming],
    max_new_tokens: int,
    *,
    concurrency: int | None = None,
    arrival_rate: float | None = None,
) -> Result:
    """The figures for one phase and load; raises BenchmarkError when a request got the wrong number of tokens."""
    for index, timing in enumerate(timings):
        if len(timing.token_times) != max_new_tokens:
            raise BenchmarkError(
                f"phase {phase}: request {index} produced {len(timing.token_times)} tokens, "
                f"not max_new_tokens={max_new_tokens} (was EOS ignored?)"
            )
    start = min(timing.submitted for timing in timings)
    end = max(timing.token_times[-1] for timing in timings)
    generated = sum(len(timing.token_times) for timing in timings)
    ttfts = [timing.ttft for timing in timings]
    itls = [gap for timing in timings for gap in timing.itls] or [0.0]
    return Result(
        phase=phase,
        load=load_label(concurrency, arrival_rate),
        concurrency=concurrency,
        arrival_rate=arrival_rate,
        requests=len(timings),
        generated_tokens=generated,
        wall_s=end - start,
        tokens_per_s=generated / (end - start),
        ttft_p50_s=float(np.percentile(ttfts, 50)),
        ttft_p95_s=float(np.percentile(ttfts, 95)),
        itl_p50_s=float(np.percentile(itls, 50)),
        itl_p95_s=float(np.percentile(itls, 95)),
    )


def load_label(concurrency: int | None, arrival_rate: float | None) -> str:
    return f"c={concurrency}" if concurrency is not None else f"Poisson {arrival_rate:g}/s"


def attach_ratios(results: list[Result], reference_phase: str = "b") -> None:
    """Fill ``vs_b`` of every closed-loop row that has a phase-b row at the same concurrency."""
    references = {r.concurrency: r for r in results if r.phase == reference_phase and r.concurrency is not None}
    for result in results:
        reference = references.get(result.concurrency)
        if result.concurrency is None or reference is None:
            continue
        result.vs_b = {
            name: getattr(result, name) / getattr(reference, name) if getattr(reference, name) else float("nan")
            for name in FIGURES
        }
