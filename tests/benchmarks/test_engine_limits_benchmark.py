"""Smoke test of benchmarks/engine_limits.py: both experiments run and show what they are there to show."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.usefixtures("torch_threads_restored")
def test_chunked_prefill_and_kv_budget_tables(monkeypatch, tmp_path, tiny_llama_dir, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    engine_limits = importlib.import_module("engine_limits")
    (tmp_path / "tiny-llama").symlink_to(tiny_llama_dir)  # the session's build, not a new one

    assert engine_limits.main(["--threads", "1", "--models-dir", str(tmp_path)]) == 0

    lines = capsys.readouterr().out.splitlines()
    steps = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in lines if line.startswith("| ")}
    assert steps["whole (4,096)"] == "1" and steps["chunks of 512"] == "4" and steps["chunks of 256"] == "8"
    budget_rows = [line.split("|") for line in lines if line.startswith("| ") and "tokens (" in line]
    assert [cell.strip() for cell in budget_rows[0][2:4]] == ["32", "8"], "all finish, never more than 8 at once"
