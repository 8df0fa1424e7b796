"""The committed protobuf/gRPC stubs must be exactly what scripts/gen_protos.py produces now."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_protos(tmp_path):
    generator = _load_generator()
    fresh = generator.generate(tmp_path)
    assert fresh, "the generator wrote nothing"
    stale = [
        str(path.relative_to(tmp_path))
        for path in fresh
        if not (ROOT / path.relative_to(tmp_path)).exists()
        or (ROOT / path.relative_to(tmp_path)).read_bytes() != path.read_bytes()
    ]
    extra = [
        str(path.relative_to(ROOT))
        for package in generator.PACKAGE_DIRS
        for path in (ROOT / package).glob("*_pb2*.py*")
        if not (tmp_path / path.relative_to(ROOT)).exists()
    ]
    assert not stale and not extra, (
        f"generated stubs are stale (changed: {stale}, no longer generated: {extra}); "
        "run `python scripts/gen_protos.py` and commit the result"
    )
