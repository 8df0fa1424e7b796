#!/usr/bin/env python3
"""Generate the Python protobuf/gRPC stubs from protos/ into the shared package.

The stubs are committed so that an install needs no code generation;
tests/test_generated_stubs.py regenerates them into a temporary directory
and fails when the committed copies differ.

    python scripts/gen_protos.py            # write into the checkout
    python scripts/gen_protos.py --out DIR  # write elsewhere (used by the test)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
# Generated modules land at <out>/pipeserve/v1/*_pb2.py, importable as
# pipeserve.v1.*, mirroring the proto packages.
PACKAGE_DIRS = ("pipeserve/v1", "pipeserve/internal", "pipeserve/internal/v1")


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out: Path) -> list[Path]:
    """Run protoc once over every .proto; return the files it wrote."""
    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    for package in PACKAGE_DIRS:
        init = out / package / "__init__.py"
        init.parent.mkdir(parents=True, exist_ok=True)
        init.write_text('"""Generated from protos/ by scripts/gen_protos.py; do not edit."""\n')
    return sorted(p for d in PACKAGE_DIRS for p in (out / d).glob("*.py*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: the checkout)")
    written = generate(parser.parse_args().out)
    print(f"wrote {len(written)} files", file=sys.stderr)


if __name__ == "__main__":
    main()
