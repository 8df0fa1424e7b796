"""What chunked prefill and the KV-cache budget do for a running model worker, measured on its engine.

    python benchmarks/engine_limits.py

1. Chunked prefill: four streams are decoding when a 2,000-token prompt
   arrives. Their inter-token latency (each engine step is one token for
   each of them) until the long request has its first token, with the prompt
   prefilled whole and in chunks, against the same streams with no arrival.
2. KV budget: 32 requests (200-token prompts, 64 new tokens) arrive at once
   at an engine with a budget that holds about 8 of them. The engine never
   runs more rows than fit, every request completes, and the cache never
   outgrows the budget; without a budget all 32 run at once.

Runs the padded-KV engine in this process on tiny-llama (built on first use),
as a model worker runs it; prints a table.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from model_service.engine.continuous import ContinuousBatcher
from model_service.engine.interface import GenerationRequest, SamplingOptions, SequenceUpdate
from model_service.engine.kv_batch import kv_bytes_per_token
from model_service.loader import load_model
from pipeserve.config import ModelSpec
from pipeserve.local_models import TINY_LLAMA, build_models

HERE = Path(__file__).resolve().parent
LONG_PROMPT = 2000
RUNNING = 4


def engine(loaded, *, chunk_tokens: int = 512, kv_budget_tokens: int | None = None) -> ContinuousBatcher:
    return ContinuousBatcher(
        loaded.model,
        max_batch_size=32,
        prefill_tokens_per_step=max(512, chunk_tokens),
        prefill_chunk_tokens=chunk_tokens,
        kv_budget_tokens=kv_budget_tokens,
        vocab_size=loaded.output_vocab_size,
        device=loaded.device,
    )


def running_stream_gaps(loaded, chunk_tokens: int | None) -> list[float]:
    """Wall time of each step of RUNNING decoding streams until a long prompt (None: no arrival) starts."""
    rng = random.Random(0)
    batcher = engine(loaded, chunk_tokens=chunk_tokens or 512)
    for i in range(RUNNING):
        prompt = [rng.randrange(3, loaded.input_vocab_size) for _ in range(20)]
        batcher.add(GenerationRequest(f"running{i}", prompt, SamplingOptions(400, ignore_eos=True)))
    for _ in range(5):
        batcher.step()
    if chunk_tokens is not None:
        prompt = [rng.randrange(3, loaded.input_vocab_size) for _ in range(LONG_PROMPT)]
        batcher.add(GenerationRequest("long", prompt, SamplingOptions(max_new_tokens=2)))
    gaps = []
    for _ in range(40):
        started = time.perf_counter()
        events = batcher.step()
        gaps.append(time.perf_counter() - started)
        if any(event.request_id == "long" for event in events):
            break
    return gaps


def budget_run(loaded, budget_tokens: int | None) -> dict:
    rng = random.Random(1)
    batcher = engine(loaded, kv_budget_tokens=budget_tokens)
    requests = [
        GenerationRequest(
            str(i),
            [rng.randrange(3, loaded.input_vocab_size) for _ in range(200)],
            SamplingOptions(64, ignore_eos=True),
        )
        for i in range(32)
    ]
    pending = list(requests)
    finished, peak_rows, peak_cache = 0, 0, 0
    started = time.perf_counter()
    while pending or batcher.has_work:
        # What the worker does: read work only while the engine says it has room.
        while pending and batcher.free_rows > 0:
            batcher.add(pending.pop(0))
        finished += sum(isinstance(e, SequenceUpdate) and e.finish_reason is not None for e in batcher.step())
        peak_rows = max(peak_rows, batcher.running_rows)
        peak_cache = max(peak_cache, batcher.cache_tokens)
    return {
        "finished": finished,
        "peak_rows": peak_rows,
        "peak_cache_tokens": peak_cache,
        "seconds": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--models-dir", type=Path, default=HERE / ".models" / "engine", help="where to build")
    options = parser.parse_args(argv)
    torch.set_num_threads(options.threads)
    models_file = build_models(options.models_dir, [TINY_LLAMA])
    loaded = load_model(ModelSpec(name=TINY_LLAMA, path=str(models_file.parent / TINY_LLAMA)))

    print(f"## Chunked prefill: {RUNNING} decoding streams, a {LONG_PROMPT:,}-token prompt arrives\n")
    print("| prefill | steps until it starts | running streams' ITL p50 ms | ITL max ms |")
    print("|---|---:|---:|---:|")
    for label, chunk in (("no arrival", None), ("whole (4,096)", 4096), ("chunks of 512", 512), ("chunks of 256", 256)):
        gaps = running_stream_gaps(loaded, chunk)
        print(
            f"| {label} | {len(gaps) if chunk else '–'} | {statistics.median(gaps) * 1000:.1f} "
            f"| {max(gaps) * 1000:.1f} |"
        )

    per_token = kv_bytes_per_token(loaded.model)
    budget_tokens = 8 * (200 + 64)
    print(f"\n## KV budget: 32 requests of 200 + 64 tokens at once (one token of one row = {per_token:,} bytes)\n")
    print("| budget | finished | peak running rows | peak cache (row-positions) | seconds |")
    print("|---|---:|---:|---:|---:|")
    for label, budget in ((f"{budget_tokens:,} tokens ({budget_tokens * per_token / 2**20:.1f} MB)", budget_tokens),
                          ("none", None)):  # fmt: skip
        run = budget_run(loaded, budget)
        print(
            f"| {label} | {run['finished']} | {run['peak_rows']} | {run['peak_cache_tokens']:,} "
            f"| {run['seconds']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
