"""One log format for every process, so serve-all's interleaved output says who spoke.

Lines are JSON objects (one per line) when stderr is not a terminal — what
log collectors in Kubernetes and the e2e tests read — and plain text on a
terminal; ``PIPESERVE_LOG_FORMAT=json|text`` overrides the guess. Both name
the service, the logger and, while code works for one request
(``pipeserve.request_context``), that request's id; JSON lines also carry
the trace and span ids when a span is being recorded.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal

from opentelemetry import trace

from pipeserve.request_context import current_request_id

LogFormat = Literal["auto", "json", "text"]


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str):
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = current_request_id()
        if request_id:
            line["request_id"] = request_id
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            line["trace_id"] = trace.format_trace_id(span.trace_id)
            line["span_id"] = trace.format_span_id(span.span_id)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line)


class TextFormatter(logging.Formatter):
    def __init__(self, service: str):
        super().__init__(f"%(asctime)s %(levelname)-5s [{service}] %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        request_id = current_request_id()
        return f"{text} request_id={request_id}" if request_id else text


def configure_logging(service: str, level: str = "INFO", log_format: LogFormat = "auto") -> None:
    if log_format == "auto":
        log_format = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if log_format == "json" else TextFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
