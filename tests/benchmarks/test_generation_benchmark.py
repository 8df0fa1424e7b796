"""Smoke test of benchmarks/generation.py: phases a-c on a tiny workload produce a complete report.

Phase d needs the whole stack and is covered by the e2e tests; the figures
themselves are not checked (this is not a timed test), only that each is there.
"""

from __future__ import annotations

import importlib
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
FIGURES = ("tokens_per_s", "ttft_p50_s", "ttft_p95_s", "itl_p50_s", "itl_p95_s")


@pytest.mark.usefixtures("torch_threads_restored")
def test_phases_a_to_c_write_a_complete_report(monkeypatch, tmp_path, tiny_llama_dir):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    generation = importlib.import_module("generation")
    tracker_module = importlib.import_module("genbench.tracker")
    report_module = importlib.import_module("genbench.report")
    # The benchmark builds its model under --models-dir/<name>/<name>: point it at the session's build.
    (tmp_path / "models" / "tiny-llama").mkdir(parents=True)
    (tmp_path / "models" / "tiny-llama" / "tiny-llama").symlink_to(tiny_llama_dir)
    options = generation.parse_args(
        ["--model", "tiny", "--num-prompts", "2", "--max-new-tokens", "4", "--concurrency", "2"]
        + ["--arrival-rate", "50", "--skip", "d", "--threads", "1"]
        + ["--models-dir", str(tmp_path / "models"), "--out", str(tmp_path / "out" / "tiny")]
    )

    with tracker_module.Tracker(Console(file=io.StringIO())) as tracker:
        report = generation.run_benchmark(options, tracker)
    md, js = report_module.write(report, options.out)

    rows = {(row["phase"], row["load"]): row for row in report["results"]}
    assert set(rows) == {("a", "c=2"), ("b", "c=2"), ("c", "c=2"), ("a", "Poisson 50/s"), ("c", "Poisson 50/s")}
    for row in rows.values():
        assert row["requests"] == 2 and row["generated_tokens"] == 8
        assert all(row[figure] >= 0 for figure in FIGURES) and row["tokens_per_s"] > 0
    assert set(rows["a", "c=2"]["vs_b"]) == set(FIGURES) and rows["b", "c=2"]["vs_b"]["tokens_per_s"] == 1
    assert rows["c", "Poisson 50/s"]["vs_b"] is None
    for field in ("cpu", "cores", "torch_threads", "torch", "transformers", "gpu"):
        assert field in report["machine"]
    assert report["machine"]["torch_threads"] == 1
    assert any("ContinuousBatchingConfig(" in note for note in report["notes"])
    assert json.loads(js.read_text())["results"] == report["results"]
    assert "| (c) transformers CB | c=2 | 2 |" in md.read_text()
