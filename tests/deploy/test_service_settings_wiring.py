"""The manifests agree with the code: every variable they set is one the service's
settings read, every port they open or probe is one a service listens on, and
the scaling and drain numbers fit the queue and shutdown behaviour."""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from functools import cache

import pytest
from pydantic import AliasChoices
from pydantic_settings import BaseSettings
from rendered_manifests import OVERLAYS, VARIANTS, Rendered, listen_port, probe_port, probes, selector_matches

from pipeserve.config import CommonSettings
from pipeserve.queue.keys import CONSUMER_GROUP, Keys

# Which settings module configures each `pipeserve <service>` container.
SETTINGS_MODULES = {
    "gateway": "gateway.config",
    "tokenizer": "tokenizer_service.config",
    "model-worker": "model_service.config",
}


@dataclass(frozen=True)
class PendingSetting:
    services: frozenset[str]
    default_port: int


# Variables a manifest may set ahead of the code that reads them (none now).
# No settings class defines them yet; once one does, the entry is stale,
# test_pending_settings_are_not_stale fails, and it must be deleted so that
# the real setting (and its default port) is checked instead.
PENDING_SETTINGS: dict[str, PendingSetting] = {}


@cache
def settings_classes(service: str) -> tuple[type[BaseSettings], ...]:
    module = importlib.import_module(SETTINGS_MODULES[service])
    classes = tuple(
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, BaseSettings) and obj.__module__ == module.__name__
    )
    assert classes, f"{module.__name__} defines no pydantic settings class"
    return classes


def env_names(settings: type[BaseSettings]) -> dict[str, str]:
    """Environment variable -> field: PIPESERVE_<FIELD> for every field, plus its validation aliases."""
    prefix = settings.model_config.get("env_prefix", "")
    names = {}
    for field_name, info in settings.model_fields.items():
        names[f"{prefix}{field_name}".upper()] = field_name
        alias = info.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias] if isinstance(alias, str) else []
        for choice in choices:
            if isinstance(choice, str):
                names[choice.upper()] = field_name
    return names


@cache
def service_env_names(service: str) -> dict[str, str]:
    names: dict[str, str] = {}
    for settings in settings_classes(service):
        names.update(env_names(settings))
    return names


def default_listen_ports(service: str) -> set[int]:
    """Ports the service listens on by default: `*listen` fields (host:port) and `*_port` fields."""
    ports = set()
    for settings in settings_classes(service):
        for field_name, info in settings.model_fields.items():
            if field_name.endswith("listen") and isinstance(info.default, str):
                ports.add(listen_port(info.default))
            elif field_name.endswith("_port") and isinstance(info.default, int):
                ports.add(info.default)
    ports |= {p.default_port for p in PENDING_SETTINGS.values() if service in p.services}
    return ports


# The overlays that include the keda-worker-autoscaling component.
KEDA_OVERLAY_DIRECTORIES = ("overlays/gpu", "overlays/external-redis")


def service_variants() -> list[str]:
    return [v.name for v in VARIANTS if v.directory != "jobs/fetch-models"]


def test_pending_settings_are_not_stale():
    for variable in PENDING_SETTINGS:
        for service, module in SETTINGS_MODULES.items():
            assert variable not in service_env_names(service), (
                f"{variable} is now read by {module}: delete it from PENDING_SETTINGS"
            )


@pytest.mark.parametrize("variant", service_variants())
def test_every_variable_set_is_read_by_that_service(rendered: dict[str, Rendered], variant: str):
    result = rendered[variant]
    containers = list(result.service_containers())
    assert {s for s, *_ in containers} == set(SETTINGS_MODULES)
    for service, _, _, container in containers:
        known = set(service_env_names(service))
        known |= {name for name, p in PENDING_SETTINGS.items() if service in p.services}
        unread = sorted(set(result.env(container)) - known)
        assert not unread, f"{variant}: the {service} sets {unread}, which its settings do not read"


@pytest.mark.parametrize("variant", service_variants())
def test_ports_are_the_services_listen_ports(rendered: dict[str, Rendered], variant: str):
    result = rendered[variant]
    for service, _, _, container in result.service_containers():
        listening = default_listen_ports(service)
        declared = {p["containerPort"] for p in container.get("ports", [])}
        assert declared <= listening, f"{variant} {service}: ports {declared - listening} are not listen ports"
        for kind, probe in probes(container).items():
            assert "grpc" in probe, f"{variant} {service}: {kind} should be a gRPC health probe"
            assert probe_port(probe, container) in declared, f"{variant} {service}: {kind} checks an undeclared port"
        assert set(probes(container)) == {"startupProbe", "readinessProbe", "livenessProbe"}
        environment = result.env(container)
        for name, entry in environment.items():
            if name.endswith("_LISTEN"):
                assert listen_port(entry["value"]) in declared, f"{variant} {service}: {name} has no containerPort"
        metrics = {p["containerPort"] for p in container["ports"] if p["name"] == "metrics"}
        assert metrics == {int(environment["PIPESERVE_METRICS_PORT"]["value"])}


def setting(result: Rendered, service: str, variable: str) -> str:
    """A setting as the service sees it: the manifest's value, else the settings class's default."""
    value = result.env_value(result.container(service), variable)
    if value is not None:
        return value
    field_name = service_env_names(service)[variable]
    for settings in settings_classes(service):
        if field_name in settings.model_fields:
            return str(settings.model_fields[field_name].get_default(call_default_factory=True))
    raise AssertionError(f"{variable} has no default")


def served_models(result: Rendered) -> set[str]:
    """Models the workers serve: PIPESERVE_WORKER_MODELS, or every text-generation model in the models file."""
    named = result.env_value(result.container("model-worker"), "PIPESERVE_WORKER_MODELS")
    if named:
        return {name.strip() for name in named.split(",") if name.strip()}
    return {m["name"] for m in result.models() if m.get("task", "text-generation") == "text-generation"}


@pytest.mark.parametrize("variant", [v.name for v in VARIANTS if v.directory in KEDA_OVERLAY_DIRECTORIES])
def test_keda_triggers_watch_every_served_models_stream(rendered: dict[str, Rendered], variant: str):
    result = rendered[variant]
    keys = Keys(setting(result, "model-worker", "PIPESERVE_KEY_PREFIX"))
    (scaled,) = result.of_kind("ScaledObject")
    modes: dict[str, set[str]] = {}
    for trigger in scaled["spec"]["triggers"]:
        metadata = trigger["metadata"]
        assert metadata["consumerGroup"] == CONSUMER_GROUP
        modes.setdefault(metadata["stream"], set()).update(
            k for k in ("lagCount", "pendingEntriesCount") if k in metadata
        )
    expected = {keys.request_stream(model) for model in served_models(result)}
    assert set(modes) == expected, "one lag and one pending trigger per served model's stream"
    assert all(m == {"lagCount", "pendingEntriesCount"} for m in modes.values()), modes
    # More in flight per worker than one batch holds would mean requests queue before a worker is added.
    batch = int(setting(result, "model-worker", "PIPESERVE_MAX_BATCH_SIZE"))
    pending = [
        int(t["metadata"]["pendingEntriesCount"])
        for t in scaled["spec"]["triggers"]
        if "pendingEntriesCount" in t["metadata"]
    ]
    assert all(p <= batch for p in pending), f"pendingEntriesCount {pending} > PIPESERVE_MAX_BATCH_SIZE {batch}"


def test_prometheus_hpa_covers_every_served_model(rendered: dict[str, Rendered]):
    result = rendered["base+prometheus-worker-autoscaling"]
    hpa = result.get("HorizontalPodAutoscaler", "pipeserve-model-worker")
    selected = {m["external"]["metric"]["selector"]["matchLabels"]["model"] for m in hpa["spec"]["metrics"]}
    assert selected == served_models(result)
    assert {m["external"]["metric"]["name"] for m in hpa["spec"]["metrics"]} == {"pipeserve_queue_depth"}
    batch = int(setting(result, "model-worker", "PIPESERVE_MAX_BATCH_SIZE"))
    assert all(int(m["external"]["target"]["averageValue"]) <= batch for m in hpa["spec"]["metrics"])


@pytest.mark.parametrize("variant", service_variants())
def test_worker_liveness_check_is_off_exactly_when_workers_scale_from_zero(rendered: dict[str, Rendered], variant: str):
    result = rendered[variant]
    scaled = result.of_kind("ScaledObject")
    from_zero = any(s["spec"].get("minReplicaCount", 0) == 0 for s in scaled)  # KEDA's default minimum is 0
    liveness = float(setting(result, "gateway", "PIPESERVE_WORKER_LIVENESS_S"))
    if from_zero:
        assert liveness == 0, "with no worker running the gateway must still enqueue (PIPESERVE_WORKER_LIVENESS_S=0)"
    else:
        assert liveness > 0, "a worker always runs: keep answering UNAVAILABLE when none is alive"
        heartbeat = float(setting(result, "model-worker", "PIPESERVE_HEARTBEAT_INTERVAL_S"))
        assert heartbeat * 2 < liveness, "a live worker must never look dead to the gateway"


@pytest.mark.parametrize("variant", service_variants())
def test_drain_fits_in_the_termination_grace_period(rendered: dict[str, Rendered], variant: str):
    result = rendered[variant]
    for service, drain_variable in (
        ("gateway", "PIPESERVE_SHUTDOWN_GRACE_S"),
        ("tokenizer", "PIPESERVE_SHUTDOWN_GRACE_S"),
        ("model-worker", "PIPESERVE_DRAIN_TIMEOUT_S"),
    ):
        pod = next(p for s, _, p, _ in result.service_containers() if s == service)
        container = result.container(service)
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        drain = float(setting(result, service, drain_variable))
        grace = pod["terminationGracePeriodSeconds"]
        assert pre_stop + drain < grace, f"{variant} {service}: preStop {pre_stop}s + drain {drain}s >= grace {grace}s"
        if service != "model-worker":
            # Endpoints must drop the pod before it stops accepting calls.
            assert pre_stop > 0, f"{variant} {service}: no preStop sleep"


@pytest.mark.parametrize("variant", service_variants())
def test_models_file_and_model_paths_are_mounted(rendered: dict[str, Rendered], variant: str):
    result = rendered[variant]
    models_cm = result.config_map("pipeserve-models")["metadata"]["name"]
    for service, _, pod, container in result.service_containers():
        models_file = setting(result, service, "PIPESERVE_MODELS_FILE")
        directory, _, file_name = models_file.rpartition("/")
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == directory)
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert volume.get("configMap", {}).get("name") == models_cm
        assert file_name in result.config_map("pipeserve-models")["data"]
        if service == "gateway":
            continue  # the gateway reads the models file only, never a checkpoint
        mounted = [m["mountPath"] for m in container["volumeMounts"]]
        for model in result.models():
            assert any(model["path"].startswith(path + "/") for path in mounted), (
                f"{service}: {model['path']} not mounted"
            )


@pytest.mark.parametrize("variant", service_variants())
def test_worker_id_is_the_pod_name(rendered: dict[str, Rendered], variant: str):
    entry = rendered[variant].env(rendered[variant].container("model-worker"))["PIPESERVE_WORKER_ID"]
    assert entry["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_fetch_job_downloads_every_model_the_volume_serves(rendered: dict[str, Rendered]):
    (job,) = rendered["fetch-models"].of_kind("Job")
    local_dirs = set()
    for container in job["spec"]["template"]["spec"]["containers"]:
        command = container["command"]
        local_dirs |= {command[i + 1] for i, arg in enumerate(command) if arg == "--local-dir"}
    for variant in ("base", "gpu", "external-redis"):
        assert {m["path"] for m in rendered[variant].models()} <= local_dirs, variant


@pytest.mark.parametrize("variant", service_variants())
def test_redis_is_reached_on_the_port_of_the_default_url(rendered: dict[str, Rendered], variant: str):
    result = rendered[variant]
    default_url = CommonSettings.model_fields["redis_url"].default
    redis_port = int(default_url.rsplit(":", 1)[1].split("/")[0])
    clients = result.get("NetworkPolicy", "pipeserve-redis-clients")
    assert [p["port"] for p in clients["spec"]["egress"][0]["ports"]] == [redis_port]
    for statefulset in result.of_kind("StatefulSet"):
        ports = [p["containerPort"] for p in statefulset["spec"]["template"]["spec"]["containers"][0]["ports"]]
        assert ports == [redis_port]
        assert [p["port"] for p in result.get("Service", "pipeserve-redis")["spec"]["ports"]] == [redis_port]


@pytest.mark.parametrize("variant", service_variants())
def test_network_policies_open_only_ports_their_pods_listen_on(rendered: dict[str, Rendered], variant: str):
    result = rendered[variant]
    pods = [(w["spec"]["template"]["metadata"]["labels"], p) for w, p in result.pod_templates()]
    for policy in result.of_kind("NetworkPolicy"):
        selected = [p for labels, p in pods if selector_matches(policy["spec"]["podSelector"], labels)]
        listening = {port["containerPort"] for p in selected for c in p["containers"] for port in c.get("ports", [])}
        for rule in policy["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                assert not selected or port["port"] in listening, f"{policy['metadata']['name']}: {port} unused"
    deny = result.get("NetworkPolicy", "pipeserve-default-deny")["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"} and "ingress" not in deny


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_gateways_reach_tokenizers_and_anyone_reaches_gateways(rendered: dict[str, Rendered], overlay: str):
    result = rendered[overlay]
    gateway_labels = result.get("Deployment", "pipeserve-gateway")["spec"]["template"]["metadata"]["labels"]
    (tokenizer_rule,) = result.get("NetworkPolicy", "pipeserve-tokenizer")["spec"]["ingress"]
    (source,) = tokenizer_rule["from"]
    assert selector_matches(source["podSelector"], gateway_labels) and "namespaceSelector" not in source
    (gateway_rule,) = result.get("NetworkPolicy", "pipeserve-gateway")["spec"]["ingress"]
    assert "from" not in gateway_rule and [p["port"] for p in gateway_rule["ports"]] == [
        listen_port(setting(result, "gateway", "PIPESERVE_GATEWAY_LISTEN"))
    ]
