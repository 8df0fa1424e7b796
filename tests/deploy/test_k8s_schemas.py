"""Every rendered object validates: built-in kinds against the Kubernetes schemas
(kubernetes-validate, strict, one pinned Kubernetes version), KEDA and Prometheus
Operator kinds against the CRD schemas transcribed in schemas/."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
from rendered_manifests import VARIANTS, Rendered

# The Kubernetes version the manifests are written for and checked against.
# gRPC probes need 1.24+, the preStop `sleep` action 1.30+ (on by default).
KUBERNETES_VERSION = "1.37.0"

SCHEMAS = Path(__file__).parent / "schemas"
# (apiVersion, kind) -> transcribed CRD schema; these kinds are not in kubernetes-validate.
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda.sh-v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "triggerauthentication-keda.sh-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring.coreos.com-v1.json",
}

# The parameters KEDA's redis-streams scaler reads from trigger metadata (its
# documentation); CRD validation cannot see inside the free-form metadata map.
REDIS_STREAMS_METADATA = {
    "address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv",
    "usernameFromEnv", "passwordFromEnv", "stream", "consumerGroup",
    "pendingEntriesCount", "streamLength", "lagCount", "activationLagCount",
    "activationStreamLength", "enableTLS", "unsafeSsl", "databaseIndex",
}  # fmt: skip
REDIS_STREAMS_TARGETS = ("pendingEntriesCount", "streamLength", "lagCount")
REDIS_STREAMS_AUTH_PARAMETERS = {"address", "host", "port", "username", "password", "tls", "ca", "cert", "key", "keyPassword"}  # fmt: skip


@cache
def crd_validator(file_name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / file_name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def all_objects(rendered: dict[str, Rendered]) -> dict[str, tuple[str, dict]]:
    """Each distinct object once (variants share most of theirs), keyed by its JSON, with a variant it is from."""
    unique: dict[str, tuple[str, dict]] = {}
    for name, result in rendered.items():
        for obj in result.objects:
            unique.setdefault(json.dumps(obj, sort_keys=True), (name, obj))
    return unique


def label(variant: str, obj: dict) -> str:
    return f"{variant}: {obj['kind']}/{obj['metadata']['name']}"


def test_builtin_objects_validate_strictly(rendered: dict[str, Rendered]):
    failures = []
    for variant, obj in all_objects(rendered).values():
        if (obj["apiVersion"], obj["kind"]) in CRD_SCHEMAS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            failures.append(f"{label(variant, obj)}: {obj['apiVersion']} is neither built in nor a known CRD")
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(p) for p in exc.path)
            failures.append(f"{label(variant, obj)} at {path}: {exc.message}")
    assert not failures, "\n".join(failures)


def test_crd_objects_validate_against_their_schemas(rendered: dict[str, Rendered]):
    seen = set()
    failures = []
    for variant, obj in all_objects(rendered).values():
        key = (obj["apiVersion"], obj["kind"])
        if key not in CRD_SCHEMAS:
            continue
        seen.add(key)
        for error in crd_validator(CRD_SCHEMAS[key]).iter_errors(obj):
            failures.append(f"{label(variant, obj)} at {'/'.join(map(str, error.path))}: {error.message}")
    assert not failures, "\n".join(failures)
    assert seen == set(CRD_SCHEMAS), f"some transcribed schemas validate nothing: {set(CRD_SCHEMAS) - seen}"


@pytest.mark.parametrize(
    "broken",
    [
        {"spec": {"scaleTargetRef": {"name": "x"}}},  # no triggers
        {
            "spec": {
                "scaleTargetRef": {"name": "x"},
                "triggers": [{"type": "redis-streams", "metadata": {"lagCount": 8}}],
            }
        },
        {"spec": {"scaleTargetRef": {"name": "x"}, "triggers": [], "minReplicas": 0}},  # an HPA field, not KEDA's
    ],
)
def test_scaledobject_schema_rejects_what_the_api_server_would(broken: dict):
    obj = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "x"}, **broken}
    assert list(crd_validator(CRD_SCHEMAS[("keda.sh/v1alpha1", "ScaledObject")]).iter_errors(obj))


def test_servicemonitor_schema_rejects_a_bad_interval():
    obj = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "x"},
        "spec": {"selector": {}, "endpoints": [{"port": "metrics", "interval": "15 seconds"}]},
    }
    assert list(crd_validator(CRD_SCHEMAS[("monitoring.coreos.com/v1", "ServiceMonitor")]).iter_errors(obj))


@pytest.mark.parametrize("variant", [v.name for v in VARIANTS])
def test_redis_streams_triggers_are_well_formed(rendered: dict[str, Rendered], variant: str):
    """What KEDA's redis-streams scaler accepts, beyond the CRD's free-form metadata map."""
    result = rendered[variant]
    for scaled in result.of_kind("ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["type"] == "redis-streams"
            metadata = trigger["metadata"]
            assert set(metadata) <= REDIS_STREAMS_METADATA, set(metadata) - REDIS_STREAMS_METADATA
            assert metadata.get("stream")
            targets = [t for t in REDIS_STREAMS_TARGETS if t in metadata]
            assert len(targets) == 1, f"one of {REDIS_STREAMS_TARGETS} per trigger, got {targets}"
            assert all(int(metadata[t]) > 0 for t in targets)
            if targets == ["lagCount"]:
                assert "consumerGroup" in metadata and "activationLagCount" in metadata
            # The address comes from the TriggerAuthentication, never from a literal here.
            assert not {"address", "host", "port"} & set(metadata)
            auth = result.get("TriggerAuthentication", trigger["authenticationRef"]["name"])
            assert auth, f"{trigger['authenticationRef']['name']} is not rendered"
            parameters = {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]}
            assert parameters <= REDIS_STREAMS_AUTH_PARAMETERS and "address" in parameters
