"""Tracing is off unless an exporter is named; exporters are found by their standard names."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import ConsoleSpanExporter

from pipeserve import tracing
from pipeserve.config import CommonSettings


@pytest.fixture
def installed(monkeypatch) -> list:
    """Tracer providers configure_tracing would install (the process-wide one is set only once, elsewhere)."""
    providers = []
    monkeypatch.setattr(trace, "set_tracer_provider", providers.append)
    return providers


@pytest.mark.parametrize("exporters", ["", "none", " none , "])
def test_off_unless_an_exporter_is_named(installed, exporters):
    assert tracing.configure_tracing("gateway", exporters) is False
    assert installed == []


def test_off_by_default(monkeypatch):
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    assert CommonSettings().traces_exporter == "none"
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    assert CommonSettings().traces_exporter == "console"


def test_console_and_otlp_are_found_and_the_service_is_named(installed, monkeypatch):
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert tracing.configure_tracing("model-worker", "console,otlp") is True
    (provider,) = installed
    exporters = [processor.span_exporter for processor in provider._active_span_processor._span_processors]
    assert isinstance(exporters[0], ConsoleSpanExporter)
    assert type(exporters[1]).__module__.startswith("opentelemetry.exporter.otlp.proto.grpc")
    assert provider.resource.attributes["service.name"] == "pipeserve-model-worker"
    provider.shutdown()


def test_otel_service_name_wins(installed, monkeypatch):
    monkeypatch.setenv("OTEL_SERVICE_NAME", "my-gateway")
    tracing.configure_tracing("gateway", "console")
    assert installed[0].resource.attributes["service.name"] == "my-gateway"
    installed[0].shutdown()


def test_an_unknown_exporter_is_named_with_the_choices(installed):
    with pytest.raises(ValueError, match=r"'zipkin'.*'console'.*'otlp'"):
        tracing.configure_tracing("gateway", "zipkin")
    assert installed == []


def test_a_trace_context_round_trips_through_a_work_item_map():
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    from pipeserve.internal.v1 import queue_pb2

    span = NonRecordingSpan(SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(1)))
    item = queue_pb2.WorkItem()
    with trace.use_span(span):
        tracing.inject(item.trace_context)
    assert item.trace_context["traceparent"] == f"00-{0xABC:032x}-{0xDEF:016x}-01"
    parsed = queue_pb2.WorkItem.FromString(item.SerializeToString())
    carried = trace.get_current_span(tracing.extract(parsed.trace_context)).get_span_context()
    assert (carried.trace_id, carried.span_id, carried.is_remote) == (0xABC, 0xDEF, True)
