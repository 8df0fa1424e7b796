"""The report: the machine it ran on, the rows with their ratios to phase b, as a rich table, markdown and JSON."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import grpc
import torch
import transformers
from rich.table import Table

PHASE_NAMES = {
    "a": "(a) generate 1-by-1",
    "b": "(b) static batch",
    "c": "(c) transformers CB",
    "d": "(d) pipeserve gRPC",
}
COLUMNS = ("phase", "load", "req", "tok/s", "TTFT p50 ms", "TTFT p95 ms", "ITL p50 ms", "ITL p95 ms")
TIMES = ("ttft_p50_s", "ttft_p95_s", "itl_p50_s", "itl_p95_s")
RATIO_NOTE = (
    "× = ratio to (b), the static batch at the same concurrency: above 1 is more tokens/s for tok/s "
    "and slower (worse) for TTFT and ITL."
)


def machine_info(device: str) -> dict:
    """What the figures depend on; the load average shows whether something else was running."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "grpcio": grpc.__version__,
        "os": platform.platform(),
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cells(row: dict, ratio_separator: str) -> list[str]:
    """A row's cells: each figure followed by its ratio to (b), except in (b)'s own rows."""
    ratios = row["vs_b"] if row["phase"] != "b" else None

    def cell(name: str, text: str) -> str:
        return f"{text}{ratio_separator}({ratios[name]:.2f}×)" if ratios else text

    return [
        PHASE_NAMES[row["phase"]],
        row["load"],
        str(row["requests"]),
        cell("tokens_per_s", f"{row['tokens_per_s']:,.0f}"),
        *(cell(name, f"{row[name] * 1000:,.1f}") for name in TIMES),
    ]


def _ordered(rows: list[dict]) -> list[dict]:
    """Grouped by load (concurrency rising, then arrival-driven loads), phases a-d within each."""
    return sorted(rows, key=lambda r: (r["concurrency"] is None, r["concurrency"] or 0, r["load"], r["phase"]))


def rich_table(report: dict) -> Table:
    table = Table(title=title(report), caption=RATIO_NOTE)
    for column in COLUMNS:
        label = column in ("phase", "load")
        table.add_column(column, justify="left" if label else "right", no_wrap=label)
    for row in _ordered(report["results"]):
        table.add_row(*_cells(row, "\n"), end_section=True)
    return table


def title(report: dict) -> str:
    return f"pipeserve generation benchmark: {report['model']} on {report['machine']['device']}"


def markdown(report: dict) -> str:
    machine, workload = report["machine"], report["workload"]
    lines = [
        f"### {title(report)}",
        "",
        (
            f"{report['started']} · {machine['cpu']}, {machine['cores_available']} cores, "
            f"torch {machine['torch']} ({machine['torch_threads']} threads), transformers {machine['transformers']}, "
            f"GPU: {machine['gpu'] or 'none'} · load average {machine['load_average_1m_at_start']} at start, "
            f"{report['load_average_1m_at_end']} at end"
        ),
        "",
        f"Workload: {workload['description']}.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if c in ("phase", "load") else "---:" for c in COLUMNS) + "|",
        *("| " + " | ".join(_cells(row, " ")) + " |" for row in _ordered(report["results"])),
        "",
        RATIO_NOTE,
        "",
        *(f"- {note}" for note in report["notes"]),
        "",
    ]
    return "\n".join(lines)


def write(report: dict, stem: Path) -> tuple[Path, Path]:
    """``stem``.md and ``stem``.json; returns their paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    md, js = (stem.with_name(f"{stem.name}.{suffix}") for suffix in ("md", "json"))
    md.write_text(markdown(report))
    js.write_text(json.dumps(report, indent=2) + "\n")
    return md, js
