"""Every gateway requires API keys from the operator's Secret, mounted where PIPESERVE_API_KEYS_FILE points."""

from __future__ import annotations

import pytest
from rendered_manifests import VARIANTS, Rendered

API_KEYS_SECRET = "pipeserve-api-keys"


@pytest.mark.parametrize("variant", [v.name for v in VARIANTS if v.directory != "jobs/fetch-models"])
def test_gateway_reads_its_api_keys_from_the_mounted_secret(rendered: dict[str, Rendered], variant: str):
    result = rendered[variant]
    gateway = result.container("gateway")
    pod = next(p for s, _, p, _ in result.service_containers() if s == "gateway")
    keys_file = result.env_value(gateway, "PIPESERVE_API_KEYS_FILE")
    assert keys_file, "the gateway must require API keys"
    directory, _, file_name = keys_file.rpartition("/")
    mount = next(m for m in gateway["volumeMounts"] if m["mountPath"] == directory)
    assert mount.get("readOnly")
    secret = next(v for v in pod["volumes"] if v["name"] == mount["name"])["secret"]
    assert secret["secretName"] == API_KEYS_SECRET
    assert not secret.get("optional"), "a missing Secret must keep the pod from starting, not start it open"
    assert [item["path"] for item in secret["items"]] == [file_name]
    # The non-root gateway reads the file through its group: the pod's fsGroup owns it.
    assert secret["defaultMode"] & 0o040 and pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    assert not secret["defaultMode"] & 0o007, "no access for others"


@pytest.mark.parametrize("variant", [v.name for v in VARIANTS])
def test_only_the_gateway_mounts_the_api_keys(rendered: dict[str, Rendered], variant: str):
    for workload, pod in rendered[variant].pod_templates():
        mounted = {
            v["name"] for v in pod.get("volumes", []) if v.get("secret", {}).get("secretName") == API_KEYS_SECRET
        }
        if mounted:
            assert workload["metadata"]["name"] == "pipeserve-gateway"
