"""deploy/ renders with `kubectl kustomize`, and each overlay holds what it promises."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import yaml
from rendered_manifests import DEPLOY, OVERLAYS, VARIANTS, Rendered, selector_matches

WORKLOADS = ("pipeserve-gateway", "pipeserve-tokenizer", "pipeserve-model-worker")
SECRET_KEYS = {"url", "address", "password"}


@pytest.mark.parametrize("variant", [v.name for v in VARIANTS])
def test_renders_without_duplicates(rendered: dict[str, Rendered], variant: str):
    objects = rendered[variant].objects
    assert objects, f"{variant} rendered nothing"
    ids = Counter((o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects)
    assert not [i for i, n in ids.items() if n > 1], f"{variant} renders an object twice"


def test_every_kustomization_and_component_is_rendered():
    """A kustomization or component added under deploy/ must be added to VARIANTS too."""
    rendered_dirs = {v.directory for v in VARIANTS}
    rendered_components = {c for v in VARIANTS for c in v.components}
    for directory in rendered_dirs:
        listed = yaml.safe_load((DEPLOY / directory / "kustomization.yaml").read_text()).get("components", [])
        rendered_components |= {Path(c).name for c in listed}
    for path in DEPLOY.rglob("kustomization.yaml"):
        directory = path.parent.relative_to(DEPLOY).as_posix()
        if yaml.safe_load(path.read_text()).get("kind") == "Component":
            assert path.parent.name in rendered_components, f"component {directory} is never rendered"
        else:
            assert directory in rendered_dirs, f"{directory} is never rendered"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_deploys_every_service_into_its_namespace(rendered: dict[str, Rendered], overlay: str):
    result = rendered[overlay]
    for name in WORKLOADS:
        assert result.get("Deployment", name), f"{overlay} has no Deployment {name}"
    namespaces = {o["metadata"].get("namespace") for o in result.objects}
    assert namespaces == {"pipeserve"}, f"{overlay}: every object belongs in one namespace, got {namespaces}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_tagged_by_the_overlay(rendered: dict[str, Rendered], overlay: str):
    """The base names images logically (pipeserve, pipeserve-model-worker, redis); overlays tag them."""
    for _, pod in rendered[overlay].pod_templates():
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            name, _, tag = container["image"].rpartition(":")
            assert name and tag and tag != "latest", f"{overlay}: untagged image {container['image']}"
    worker = rendered[overlay].container("model-worker")
    expected = "pipeserve:0.1.0-cuda" if overlay == "gpu" else "pipeserve:0.1.0-cpu"
    assert worker["image"] == expected


def test_cpu_dev_runs_redis_in_cluster_and_builds_its_model(rendered: dict[str, Rendered]):
    result = rendered["cpu-dev"]
    redis = result.get("StatefulSet", "pipeserve-redis")
    assert redis and result.get("Service", "pipeserve-redis")
    assert not result.of_kind("PersistentVolumeClaim"), "cpu-dev needs no shared model storage"
    for name in ("pipeserve-tokenizer", "pipeserve-model-worker"):
        pod = result.get("Deployment", name)["spec"]["template"]["spec"]
        assert [c["args"][0] for c in pod["initContainers"]] == ["build-models"]
        models_volume = next(v for v in pod["volumes"] if v["name"] == "models")
        assert "emptyDir" in models_volume and "persistentVolumeClaim" not in models_volume
    assert [m["name"] for m in result.models()] == ["tiny-llama"]
    assert not result.of_kind("ScaledObject"), "cpu-dev assumes no KEDA"


def test_external_redis_has_no_redis_in_cluster(rendered: dict[str, Rendered]):
    result = rendered["external-redis"]
    assert not result.of_kind("StatefulSet")
    assert not result.get("Service", "pipeserve-redis")
    clients = result.get("NetworkPolicy", "pipeserve-redis-clients")
    assert "to" not in clients["spec"]["egress"][0], "an external Redis's address is not known here"


def test_gpu_workers_get_a_gpu_and_gpu_nodes(rendered: dict[str, Rendered]):
    result = rendered["gpu"]
    pod = result.get("Deployment", "pipeserve-model-worker")["spec"]["template"]["spec"]
    worker = result.container("model-worker")
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert all(m.get("device_map", "").startswith("cuda") for m in result.models())
    # Gateway and tokenizer stay on CPU nodes.
    for service in ("gateway", "tokenizer"):
        assert "nvidia.com/gpu" not in result.container(service)["resources"].get("limits", {})


@pytest.mark.parametrize("variant", [v.name for v in VARIANTS])
def test_secrets_are_referenced_never_inlined(rendered: dict[str, Rendered], variant: str):
    result = rendered[variant]
    assert not result.of_kind("Secret"), "Secrets are created by the operator (deploy/README.md), not rendered"
    for _, pod in result.pod_templates():
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "pipeserve-redis" and ref["key"] in SECRET_KEYS, ref
                else:
                    assert "value" in entry or "valueFrom" in entry, entry
    for auth in result.of_kind("TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["name"] == "pipeserve-redis" and ref["key"] in SECRET_KEYS, ref


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_tokenizer_target_is_the_headless_service(rendered: dict[str, Rendered], overlay: str):
    """dns:///<service>.<namespace>.svc.cluster.local:<port>, a headless Service selecting the tokenizers."""
    result = rendered[overlay]
    target = result.env_value(result.container("gateway"), "PIPESERVE_TOKENIZER_TARGET")
    match = re.fullmatch(r"dns:///([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)", target)
    assert match, f"not a dns:/// target of a Service's full name: {target}"
    name, namespace, port = match.group(1), match.group(2), int(match.group(3))
    service = result.get("Service", name)
    assert service, f"{target} names no rendered Service"
    assert service["metadata"]["namespace"] == namespace
    assert service["spec"].get("clusterIP") == "None", "round_robin needs every pod's address: a headless Service"
    assert port in [p["port"] for p in service["spec"]["ports"]]
    tokenizer_pod = result.get("Deployment", "pipeserve-tokenizer")["spec"]["template"]["metadata"]["labels"]
    assert selector_matches({"matchLabels": service["spec"]["selector"]}, tokenizer_pod)


@pytest.mark.parametrize("variant", [v.name for v in VARIANTS])
def test_autoscalers_and_budgets_select_real_workloads(rendered: dict[str, Rendered], variant: str):
    result = rendered[variant]
    deployments = {d["metadata"]["name"]: d for d in result.of_kind("Deployment")}
    for hpa in result.of_kind("HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
    for scaled in result.of_kind("ScaledObject"):
        assert scaled["spec"]["scaleTargetRef"]["name"] in deployments
    targets = [h["spec"]["scaleTargetRef"]["name"] for h in result.of_kind("HorizontalPodAutoscaler")]
    targets += [s["spec"]["scaleTargetRef"]["name"] for s in result.of_kind("ScaledObject")]
    assert len(targets) == len(set(targets)), "two autoscalers on one Deployment fight each other"
    for name, deployment in deployments.items():
        # Autoscaled or not, `replicas` is left out so `kubectl apply` never resets a scaled count.
        assert "replicas" not in deployment["spec"], f"{name} sets replicas"
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        budgets = [p for p in result.of_kind("PodDisruptionBudget") if selector_matches(p["spec"]["selector"], labels)]
        assert len(budgets) == 1, f"{name} needs exactly one PodDisruptionBudget, has {len(budgets)}"


def test_cpu_scaling_for_gateway_and_tokenizer(rendered: dict[str, Rendered]):
    for overlay in OVERLAYS:
        for name in ("pipeserve-gateway", "pipeserve-tokenizer"):
            hpa = rendered[overlay].get("HorizontalPodAutoscaler", name)
            assert hpa, f"{overlay}: {name} has no HorizontalPodAutoscaler"
            assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
            container = rendered[overlay].get("Deployment", name)["spec"]["template"]["spec"]["containers"][0]
            assert "cpu" in container["resources"]["requests"], "CPU utilization is measured against the request"


def test_no_download_or_registry_hosts_in_deploy():
    """Index URLs and registries come from the operator (build args, `images:`), never from these files."""
    url = re.compile(r"\b(?:https?|ftp|oci)://\S+", re.IGNORECASE)
    for path in [*DEPLOY.rglob("*"), DEPLOY.parent / ".dockerignore"]:
        if path.is_file():
            for number, line in enumerate(path.read_text().splitlines(), 1):
                found = url.search(line)
                assert not found, f"{path.relative_to(DEPLOY.parent)}:{number} names a host: {found.group(0)}"


@pytest.mark.parametrize("variant", [v.name for v in VARIANTS])
def test_images_name_no_registry(rendered: dict[str, Rendered], variant: str):
    """A registry host is the first path part of an image name when it has a dot, a colon or is localhost."""
    for _, pod in rendered[variant].pod_templates():
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            first, slash, _ = container["image"].partition("/")
            assert not (slash and ("." in first or ":" in first or first == "localhost")), container["image"]
