"""OpenTelemetry tracing, off unless OTEL_TRACES_EXPORTER names an exporter.

A request's trace starts at the gateway, or continues the client's
``traceparent``; it reaches the tokenizer service in gRPC metadata
(``pipeserve.call_context``) and the model worker inside the WorkItem
(``trace_context``: the same W3C headers, as a map). Off, the API's no-op
tracer answers: a span costs a function call, nothing is exported, and a
client's ``traceparent`` still passes through unchanged.

Exporters are the SDK's entry points (``opentelemetry_traces_exporter``):
``otlp`` (OTLP over gRPC; OTEL_EXPORTER_OTLP_ENDPOINT etc.) and ``console``
ship with pipeserve. Sampler, resource attributes and service name come
from the standard OTEL_* variables, which the SDK reads itself.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from importlib.metadata import entry_points

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

GATEWAY = "pipeserve.gateway"
TOKENIZER = "pipeserve.tokenizer"
MODEL_WORKER = "pipeserve.model_worker"
"""Tracer (instrumentation scope) names: which service recorded a span."""

EXPORTER_GROUP = "opentelemetry_traces_exporter"
# The otlp meta-package would register "otlp"; pipeserve installs its gRPC flavour only.
EXPORTER_ALIASES = {"otlp": "otlp_proto_grpc"}


def configure_tracing(service: str, exporters: str) -> bool:
    """Install an SDK tracer provider exporting to ``exporters`` (comma-separated); False when tracing is off.

    ``service`` names the process (service.name) unless OTEL_SERVICE_NAME
    or OTEL_RESOURCE_ATTRIBUTES already do.
    """
    names = [name.strip().lower() for name in exporters.split(",") if name.strip().lower() not in ("", "none")]
    if not names:
        return False
    span_exporters = [_load_exporter(name) for name in names]
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: f"pipeserve-{service}"}))
    provider = TracerProvider(resource=resource)
    for exporter in span_exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return True


def _load_exporter(name: str):
    found = entry_points(group=EXPORTER_GROUP, name=EXPORTER_ALIASES.get(name, name))
    if not found:
        installed = sorted({"otlp", *(ep.name for ep in entry_points(group=EXPORTER_GROUP))})
        raise ValueError(f"OTEL_TRACES_EXPORTER names {name!r}, which is not installed; choose from {installed}")
    return next(iter(found)).load()()


def inject(carrier: MutableMapping[str, str]) -> None:
    """Write the current trace context (W3C traceparent/tracestate) into a carrier: metadata or a WorkItem map."""
    propagate.inject(carrier)


def extract(carrier: Mapping[str, str]) -> Context:
    """The trace context a carrier holds (an empty context when it holds none)."""
    return propagate.extract(carrier)


def ns_from_unix_ms(unix_ms: int) -> int:
    """A span timestamp (ns since the epoch) from a WorkItem's millisecond time."""
    return unix_ms * 1_000_000
