"""Requests per second for a forward-only task: transformers.pipeline in this process vs pipeserve over gRPC.

    python benchmarks/pipelines.py

Text classification on tiny-bert-sentiment (built locally on first use), with
one seeded set of texts of mixed lengths, measured in one run:

- in process, ``pipeline("text-classification")`` called once per text (what
  a notebook or a naive server does) and over the whole list with
  ``batch_size=32`` (the in-process upper bound);
- pipeserve end to end (``pipeserve serve-all``: gateway, tokenizer service,
  one model worker, Redis, as separate processes), one text per request,
  from closed loops of 1 and of 32 concurrent gRPC clients; the worker's
  dynamic batching gathers concurrent requests into one forward.

Prints the table (requests/s, latency p50/p95, ratio to the batched
in-process pipeline) and writes it to benchmarks/results/pipelines-<time>.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import grpc
import torch
from genbench.served import ServedStack

from pipeserve.local_encoder_models import TINY_BERT_SENTIMENT
from pipeserve.local_models import build_models
from pipeserve.v1 import pipelines_pb2, pipelines_pb2_grpc

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=512, help="texts per measurement (default 512)")
    parser.add_argument("--concurrency", default="1,32", help="closed-loop gRPC client counts (default 1,32)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads, every process")
    parser.add_argument("--redis-url", default=None, help="Redis for the served phase (default: embedded valkey)")
    parser.add_argument("--models-dir", type=Path, default=HERE / ".models", help="where the model is built")
    parser.add_argument("--out", type=Path, default=None, help="report path without suffix")
    return parser.parse_args(argv)


def make_texts(count: int, seed: int = 0) -> list[str]:
    """Lines of Python's own sources joined to 4-60 words: mixed lengths, real tokens, the same every run."""
    words = Path(random.__file__).read_text().split()
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        length = rng.randint(4, 60)
        start = rng.randrange(len(words) - length)
        texts.append(" ".join(words[start : start + length]))
    return texts


def measure_in_process(model_dir: Path, texts: list[str]) -> list[dict]:
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(model_dir), device="cpu")
    classify(texts[:8])  # warm-up
    rows = []
    latencies = []
    started = time.perf_counter()
    for text in texts:
        one = time.perf_counter()
        classify(text)
        latencies.append(time.perf_counter() - one)
    rows.append(row("pipeline, one text per call", "1", len(texts), time.perf_counter() - started, latencies))
    started = time.perf_counter()
    classify(texts, batch_size=32)
    rows.append(row("pipeline, batch_size=32", "32", len(texts), time.perf_counter() - started, []))
    return rows


async def measure_served(address: str, texts: list[str], concurrency: int) -> dict:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pipelines_pb2_grpc.PipelineServiceStub(channel)

        async def call(text: str) -> float:
            request = pipelines_pb2.PipelineRequest(
                model=TINY_BERT_SENTIMENT,
                text_classification=pipelines_pb2.TextClassificationInput(
                    items=[pipelines_pb2.TextClassificationItem(text=text)]
                ),
            )
            started = time.perf_counter()
            await stub.Run(request, timeout=60)
            return time.perf_counter() - started

        for text in texts[:16]:  # warm-up: the worker's first forwards, the channel
            await call(text)
        pending = list(reversed(texts))
        latencies: list[float] = []

        async def client() -> None:
            while pending:
                latencies.append(await call(pending.pop()))

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return row("pipeserve gRPC, one text per request", str(concurrency), len(texts), elapsed, latencies)


def row(what: str, load: str, requests: int, elapsed_s: float, latencies: list[float]) -> dict:
    cuts = statistics.quantiles(latencies, n=20) if len(latencies) >= 2 else []
    return {
        "what": what,
        "load": load,
        "requests": requests,
        "requests_per_s": requests / elapsed_s,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else None,
        "p95_ms": cuts[18] * 1000 if cuts else None,
    }


def markdown(rows: list[dict], options: argparse.Namespace) -> str:
    upper = next(r["requests_per_s"] for r in rows if r["load"] == "32" and r["what"].startswith("pipeline"))
    lines = [
        "### pipeserve pipeline benchmark: text-classification on tiny-bert-sentiment, CPU",
        "",
        (
            f"{datetime.now().astimezone().isoformat(timespec='seconds')} · {torch.get_num_threads()} torch threads, "
            f"load average {' / '.join(f'{x:.2f}' for x in os.getloadavg())} at the end"
        ),
        "",
        "| what | concurrency / batch | requests | requests/s (× pipeline batch 32) | p50 ms | p95 ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        p50 = f"{r['p50_ms']:.1f}" if r["p50_ms"] is not None else "–"
        p95 = f"{r['p95_ms']:.1f}" if r["p95_ms"] is not None else "–"
        ratio = r["requests_per_s"] / upper
        lines.append(
            f"| {r['what']} | {r['load']} | {r['requests']} | {r['requests_per_s']:,.0f} ({ratio:.2f}×) "
            f"| {p50} | {p95} |"
        )
    lines += ["", f"Texts: {options.requests} lines of Python's sources, 4-60 words each, seed 0."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    torch.set_num_threads(options.threads)
    models_file = build_models(options.models_dir / "pipelines", [TINY_BERT_SENTIMENT])
    model_dir = models_file.parent / TINY_BERT_SENTIMENT
    texts = make_texts(options.requests)
    print(f"in process: transformers.pipeline on {len(texts)} texts ...", flush=True)
    rows = measure_in_process(model_dir, texts)
    print("starting pipeserve serve-all ...", flush=True)
    stack = ServedStack(models_file, redis_url=options.redis_url, env={"OMP_NUM_THREADS": str(options.threads)})
    address = stack.start()
    try:
        for concurrency in (int(c) for c in options.concurrency.split(",")):
            print(f"pipeserve, {concurrency} concurrent client(s) ...", flush=True)
            rows.append(asyncio.run(measure_served(address, texts, concurrency)))
    finally:
        stack.stop()
    report = markdown(rows, options)
    print(report)
    out = options.out or HERE / "results" / f"pipelines-{datetime.now():%Y%m%d-%H%M%S}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(report)
    print(f"wrote {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
