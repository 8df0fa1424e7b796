"""One workload, four ways of serving it, one machine, one run: where does pipeserve stand?

    python benchmarks/generation.py --model tiny

(a) transformers ``generate`` one request at a time, (b) the same prompts as
static left-padded batches (the practical upper bound), (c) transformers'
continuous batching, (d) pipeserve end to end over gRPC. Phases run one after
another, never side by side, with the same torch thread count. Prints a table
and writes it as markdown and JSON (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import grpc
import torch
import yaml
from genbench import report as reporting
from genbench.inprocess import (
    cb_config,
    closed_loop_view,
    greedy_config,
    load_model,
    run_continuous_batching,
    run_sequential,
    run_static_batches,
)
from genbench.served import ServedStack, check_tokenization, run_clients
from genbench.timing import BenchmarkError, Result, attach_ratios, summarize
from genbench.tracker import Tracker
from genbench.workload import Prompt, Schedule, fingerprint, make_prompts, poisson_arrivals
from rich.console import Console
from transformers.utils import logging as hf_logging

from pipeserve.local_models import SMOLLM_SHAPE, TINY_LLAMA, build_models

HERE = Path(__file__).resolve().parent
PHASES = ("a", "b", "c", "d")
PROMPT_TOKENS = (16, 256)
SERIAL_PROMPTS = 16
"""Concurrency 1 runs only this many of the prompts: one at a time, more would only lengthen the run."""
BUSY_LOAD_PER_CORE = 0.5
"""Load average per core before the run above which the report warns that something else was computing."""
WARMUP_PROMPTS = 2
WARMUP_TOKENS = 4
SEED = 0


@dataclass(frozen=True)
class ModelProfile:
    """A benchmark model and the defaults that keep its run to minutes on a 2-core CPU."""

    name: str
    num_prompts: int
    arrival_rate: float


PROFILES = {
    "tiny": ModelProfile(TINY_LLAMA, num_prompts=64, arrival_rate=4.0),
    "smollm-shape": ModelProfile(SMOLLM_SHAPE, num_prompts=32, arrival_rate=0.5),
}


@dataclass(frozen=True)
class Options:
    model: str
    concurrency: tuple[int, ...]
    num_prompts: int
    max_new_tokens: int
    arrival_rate: float
    phases: tuple[str, ...]
    device: str
    redis_url: str | None
    threads: int
    models_dir: Path
    out: Path

    @property
    def profile(self) -> ModelProfile:
        return PROFILES[self.model]


@dataclass
class Workload:
    prompts: list[Prompt]
    arrivals: list[float] | None
    max_new_tokens: int

    def at(self, concurrency: int) -> list[Prompt]:
        """The prompts run at this concurrency: all of them, or the first SERIAL_PROMPTS at concurrency 1."""
        return self.prompts[:SERIAL_PROMPTS] if concurrency == 1 else self.prompts


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(PROFILES), default="tiny")
    parser.add_argument("--concurrency", default="1,8,32", help="closed-loop client counts (default 1,8,32)")
    parser.add_argument("--num-prompts", type=int, help="prompts per load (default: 64 tiny, 32 smollm-shape)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--arrival-rate", type=float, help="Poisson arrivals per second for a, c, d; 0 = none (default 4 / 0.5)"
    )
    parser.add_argument("--skip", default="", help="phases to leave out, e.g. d or a,c")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--redis-url", help="Redis for phase d (default: an embedded valkey-server)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads, everywhere")
    parser.add_argument("--models-dir", type=Path, default=HERE / ".models", help="where benchmark models are built")
    parser.add_argument(
        "--out", type=Path, help="output path without suffix (default benchmarks/results/<model>-<time>)"
    )
    args = parser.parse_args(argv)
    skipped = {phase.strip() for phase in args.skip.split(",") if phase.strip()}
    if skipped - set(PHASES):
        parser.error(f"--skip takes phases among {','.join(PHASES)}, got {args.skip!r}")
    profile = PROFILES[args.model]
    return Options(
        model=args.model,
        concurrency=tuple(int(c) for c in args.concurrency.split(",") if c.strip()),
        num_prompts=args.num_prompts or profile.num_prompts,
        max_new_tokens=args.max_new_tokens,
        arrival_rate=profile.arrival_rate if args.arrival_rate is None else args.arrival_rate,
        phases=tuple(phase for phase in PHASES if phase not in skipped),
        device=args.device,
        redis_url=args.redis_url,
        threads=args.threads,
        models_dir=args.models_dir,
        out=args.out or HERE / "results" / f"{args.model}-{datetime.now():%Y%m%d-%H%M%S}",
    )


def run_benchmark(options: Options, tracker: Tracker) -> dict:
    """Every selected phase at every load, sequentially; returns the report (see genbench.report)."""
    torch.set_num_threads(options.threads)
    started = datetime.now().astimezone()
    machine = reporting.machine_info(options.device)
    model_dir = ensure_model(options, tracker)
    model, tokenizer = load_model(str(model_dir), options.device)
    workload = Workload(
        make_prompts(
            tokenizer, options.num_prompts, min_tokens=PROMPT_TOKENS[0], max_tokens=PROMPT_TOKENS[1], seed=SEED
        ),
        poisson_arrivals(options.num_prompts, options.arrival_rate, SEED) if options.arrival_rate > 0 else None,
        options.max_new_tokens,
    )
    results: list[Result] = []
    notes: list[str] = []
    if "a" in options.phases:
        results += phase_a(model, tokenizer, workload, options, tracker)
    if "b" in options.phases:
        results += phase_b(model, tokenizer, workload, options, tracker)
    if "c" in options.phases:
        config = cb_config(workload.prompts, workload.max_new_tokens, max(options.concurrency))
        notes.append(f"(c) ContinuousBatchingConfig({describe_cb_config(config)})")
        results += phase_c(model, tokenizer, workload, options, config, tracker)
    del model
    gc.collect()
    if "d" in options.phases:
        knobs = worker_knobs(options)
        notes.append("(d) " + ", ".join(f"{name}={value}" for name, value in knobs.items()))
        results += phase_d(model_dir, workload, options, knobs, tracker)
    attach_ratios(results)
    notes += standing_notes(options, workload, machine)
    return {
        "model": options.profile.name,
        "started": started.isoformat(timespec="seconds"),
        "machine": machine,
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "workload": describe_workload(options, workload),
        "phases": list(options.phases),
        "results": [result.to_dict() for result in results],
        "notes": notes,
    }


def ensure_model(options: Options, tracker: Tracker) -> Path:
    """The benchmark model's directory, built on first use (its own root, so no other models file is touched)."""
    name = options.profile.name
    root = options.models_dir / name
    with tracker.step(f"model {name}"):
        build_models(root, [name], progress=tracker.note)
    return root / name


def phase_a(model, tokenizer, workload: Workload, options: Options, tracker: Tracker) -> list[Result]:
    """One back-to-back run serves every concurrency (see closed_loop_view); arrivals get a real FIFO run."""
    run_sequential(model, tokenizer, workload.prompts[:WARMUP_PROMPTS], WARMUP_TOKENS)
    longest = max(len(workload.at(c)) for c in options.concurrency)
    with tracker.step(reporting.PHASE_NAMES["a"], longest) as advance:
        timings = run_sequential(model, tokenizer, workload.prompts[:longest], workload.max_new_tokens, advance=advance)
    results = [
        record(
            tracker,
            summarize("a", closed_loop_view(timings[: len(workload.at(c))], c), workload.max_new_tokens, concurrency=c),
        )
        for c in options.concurrency
    ]
    if workload.arrivals is not None:
        with tracker.step(f"(a) FIFO, Poisson {options.arrival_rate:g}/s", len(workload.prompts)) as advance:
            timings = run_sequential(
                model, tokenizer, workload.prompts, workload.max_new_tokens, arrivals=workload.arrivals, advance=advance
            )
        results.append(
            record(tracker, summarize("a", timings, workload.max_new_tokens, arrival_rate=options.arrival_rate))
        )
    return results


def phase_b(model, tokenizer, workload: Workload, options: Options, tracker: Tracker) -> list[Result]:
    results = []
    for concurrency in options.concurrency:
        prompts = workload.at(concurrency)
        run_static_batches(model, tokenizer, prompts[:concurrency], concurrency, WARMUP_TOKENS)
        with tracker.step(f"(b) static batches of {concurrency}", len(prompts)) as advance:
            timings = run_static_batches(model, tokenizer, prompts, concurrency, workload.max_new_tokens, advance)
        results.append(record(tracker, summarize("b", timings, workload.max_new_tokens, concurrency=concurrency)))
    return results


def phase_c(model, tokenizer, workload: Workload, options: Options, config, tracker: Tracker) -> list[Result]:
    """One manager, started once, runs every load in turn."""
    results = []
    with model.continuous_batching_context_manager(
        generation_config=greedy_config(tokenizer, workload.max_new_tokens),
        continuous_batching_config=config,
        block=True,
        timeout=60,
    ) as manager:
        run_continuous_batching(manager, workload.prompts[:WARMUP_PROMPTS], WARMUP_TOKENS, Schedule(concurrency=2))
        for schedule, prompts in schedules(workload, options):
            with tracker.step(f"(c) transformers CB, {describe_schedule(schedule, options)}", len(prompts)) as advance:
                timings = run_continuous_batching(manager, prompts, workload.max_new_tokens, schedule, advance)
            results.append(record(tracker, summarize_schedule("c", timings, workload, schedule, options)))
    return results


def phase_d(
    model_dir: Path, workload: Workload, options: Options, knobs: dict[str, str], tracker: Tracker
) -> list[Result]:
    """The stack comes up once (its start-up is not measured) and serves every load in turn."""
    name = options.profile.name
    env = {**knobs, "OMP_NUM_THREADS": str(options.threads)}
    stack = ServedStack(serve_models_file(model_dir, name, options.device), redis_url=options.redis_url, env=env)
    with tracker.step("(d) starting pipeserve serve-all"):
        address = stack.start()
    try:
        asyncio.run(check_tokenization(address, name, workload.prompts))
        warmup = Schedule(concurrency=WARMUP_PROMPTS)
        asyncio.run(run_clients(address, name, workload.prompts[:WARMUP_PROMPTS], WARMUP_TOKENS, warmup))
        results = []
        for schedule, prompts in schedules(workload, options):
            with tracker.step(f"(d) pipeserve gRPC, {describe_schedule(schedule, options)}", len(prompts)) as advance:
                timings = asyncio.run(run_clients(address, name, prompts, workload.max_new_tokens, schedule, advance))
            results.append(record(tracker, summarize_schedule("d", timings, workload, schedule, options)))
        return results
    except grpc.RpcError as exc:
        raise BenchmarkError(f"phase d: {exc!r}; the stack's log ends with:\n{stack.log_tail()}") from exc
    finally:
        stack.stop()


def schedules(workload: Workload, options: Options) -> list[tuple[Schedule, list[Prompt]]]:
    """Each closed-loop concurrency with its prompts, then the Poisson arrivals (when asked for) with all of them."""
    loads = [(Schedule(concurrency=c), workload.at(c)) for c in options.concurrency]
    if workload.arrivals is not None:
        loads.append((Schedule(arrivals=workload.arrivals), workload.prompts))
    return loads


def summarize_schedule(phase: str, timings, workload: Workload, schedule: Schedule, options: Options) -> Result:
    if schedule.arrivals is None:
        return summarize(phase, timings, workload.max_new_tokens, concurrency=schedule.concurrency)
    return summarize(phase, timings, workload.max_new_tokens, arrival_rate=options.arrival_rate)


def describe_schedule(schedule: Schedule, options: Options) -> str:
    return f"c={schedule.concurrency}" if schedule.arrivals is None else f"Poisson {options.arrival_rate:g}/s"


def record(tracker: Tracker, result: Result) -> Result:
    """Print a finished row at once, so a long run shows its figures as they come."""
    tracker.note(
        f"{reporting.PHASE_NAMES[result.phase]}, {result.load}: {result.tokens_per_s:,.0f} tok/s, "
        f"TTFT p50 {result.ttft_p50_s * 1000:,.1f} ms, ITL p50 {result.itl_p50_s * 1000:,.1f} ms"
    )
    return result


def worker_knobs(options: Options) -> dict[str, str]:
    """The model worker's batching and chunking settings: the environment's, else pipeserve's defaults.

    The batch limit defaults to the highest concurrency, the same cap (c)
    gets, so neither side is held to fewer concurrent sequences.
    """
    defaults = {
        "PIPESERVE_MAX_BATCH_SIZE": str(max(options.concurrency)),
        "PIPESERVE_FLUSH_TOKENS": "4",
        "PIPESERVE_FLUSH_INTERVAL_MS": "30",
    }
    return {name: os.environ.get(name, default) for name, default in defaults.items()}


def serve_models_file(model_dir: Path, name: str, device: str) -> Path:
    """A models file serving only the benchmark model, in float32, on the benchmark's device."""
    spec = {"name": name, "path": str(model_dir), "task": "text-generation", "dtype": "float32"}
    if device == "cuda":
        spec["device_map"] = "cuda:0"
    path = model_dir.parent / f"serve-{device}.yaml"
    path.write_text(yaml.safe_dump({"models": [spec]}, sort_keys=False))
    return path


def describe_cb_config(config) -> str:
    names = ("page_size", "num_blocks", "max_batch_tokens", "max_requests_per_batch", "allow_block_sharing")
    return ", ".join(f"{name}={getattr(config, name)}" for name in names)


def describe_workload(options: Options, workload: Workload) -> dict:
    lengths = [len(p.token_ids) for p in workload.prompts]
    serial = len(workload.at(1))
    text = (
        f"{len(workload.prompts)} prompts of {min(lengths)}–{max(lengths)} tokens (mean {sum(lengths) / len(lengths):.0f}, "
        f"excerpts of Python's stdlib, seed {SEED}), {workload.max_new_tokens} new tokens each, greedy, EOS ignored; "
        f"closed loops of {', '.join(map(str, options.concurrency))} clients"
    )
    if 1 in options.concurrency and serial < len(workload.prompts):
        text += f" (concurrency 1 runs the first {serial} prompts only)"
    if workload.arrivals is not None:
        text += f"; Poisson arrivals at {options.arrival_rate:g}/s (a as FIFO, c, d)"
    return {
        "description": text,
        "num_prompts": len(workload.prompts),
        "prompt_tokens": lengths,
        "prompts_at_concurrency_1": serial,
        "max_new_tokens": workload.max_new_tokens,
        "concurrency": list(options.concurrency),
        "arrival_rate": options.arrival_rate or None,
        "seed": SEED,
        "fingerprint": fingerprint(workload.prompts),
    }


def standing_notes(options: Options, workload: Workload, machine: dict) -> list[str]:
    notes = [f"torch threads: {options.threads} in this process and (OMP_NUM_THREADS) in every pipeserve process"]
    if machine["load_average_1m_at_start"] > BUSY_LOAD_PER_CORE * machine["cores_available"]:
        notes.append(
            f"the machine was busy before the run (load average {machine['load_average_1m_at_start']} on "
            f"{machine['cores_available']} cores): other work shared the CPU, so these figures are noisy"
        )
    if "a" in options.phases:
        notes.append(
            "(a) runs once, back to back: N closed-loop clients of a one-at-a-time server see exactly that run, "
            "each request submitted when the one N places earlier ended, so its TTFT includes that queueing"
        )
    if "b" in options.phases:
        notes.append("(b) TTFT is the batch's prefill time, ITL its per-step time; the batch is the concurrency")
    if "d" in options.phases:
        notes.append(
            "(d) clients and all pipeserve processes share this machine's cores; a streamed message of k tokens "
            "counts as k inter-token gaps of (gap / k)"
        )
    return notes


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    # transformers' own download/load bars would interleave with the benchmark's progress.
    hf_logging.disable_progress_bar()
    console = Console(stderr=True)
    try:
        with Tracker(console) as tracker:
            report = run_benchmark(options, tracker)
    except BenchmarkError as exc:
        console.print(f"[red]benchmark failed:[/red] {exc}")
        return 1
    except KeyboardInterrupt:
        console.print("interrupted; nothing written")
        return 130
    report_console = Console()
    report_console.print(reporting.rich_table(report))
    for note in report["notes"]:
        report_console.print(f"- {note}", highlight=False)
    paths = reporting.write(report, options.out)
    console.print("wrote " + " and ".join(str(path) for path in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
