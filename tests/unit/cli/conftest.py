"""Fixtures for the CLI's tests: fake services in place of the real ones, and process checks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

import pipeserve.cli.stack

FAKE_SERVICE = Path(__file__).resolve().parent / "fake_service.py"


@pytest.fixture
def fake_models_file(tmp_path) -> Path:
    """A models file naming one text-generation model (the fake worker only needs its name)."""
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": [{"name": "tiny", "path": "tiny", "task": "text-generation"}]}))
    return path


@pytest.fixture
def fake_services(monkeypatch, tmp_path) -> Path:
    """The stack runs fake_service.py instead of the real services; returns the fakes' record directory."""
    record_dir = tmp_path / "fake"
    record_dir.mkdir()
    monkeypatch.setenv("FAKE_DIR", str(record_dir))
    monkeypatch.setattr(
        pipeserve.cli.stack, "service_argv", lambda command, args: [sys.executable, str(FAKE_SERVICE), command, *args]
    )
    return record_dir
