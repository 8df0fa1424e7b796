"""Every deploy/ variant rendered once per session."""

from __future__ import annotations

import pytest
from rendered_manifests import VARIANTS, Rendered, render


@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> dict[str, Rendered]:
    scratch = tmp_path_factory.mktemp("kustomize")
    return {v.name: Rendered(v, render(v, scratch)) for v in VARIANTS}
