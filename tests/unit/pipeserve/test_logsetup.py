"""The one log format: JSON lines or text, naming the service, the logger and the request being served."""

from __future__ import annotations

import json
import logging

import pytest

from pipeserve.logsetup import configure_logging
from pipeserve.request_context import bound_request_id


@pytest.fixture
def stderr(capsys):
    """What the configured handler writes (to the captured sys.stderr); the root logger is restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield lambda: capsys.readouterr().err
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_service_logger_level_message_and_the_bound_request_id(stderr):
    configure_logging("tokenizer", "INFO", "json")
    log = logging.getLogger("tokenizer_service.servicer")
    log.info("before %s", "binding")
    with bound_request_id("req-1"):
        log.warning("about the request")
    log.debug("below the level")
    first, second = (json.loads(line) for line in stderr().splitlines())
    assert first["service"] == "tokenizer" and first["logger"] == "tokenizer_service.servicer"
    assert first["level"] == "INFO" and first["message"] == "before binding" and "request_id" not in first
    assert second["request_id"] == "req-1" and second["level"] == "WARNING" and second["time"].endswith("+00:00")


def test_a_traceback_stays_inside_its_json_line(stderr):
    configure_logging("model-worker", "INFO", "json")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("x").exception("failed")
    (line,) = stderr().splitlines()
    assert "ValueError: boom" in json.loads(line)["exception"]


def test_text_lines_name_the_service_and_the_request(stderr):
    configure_logging("gateway", "INFO", "text")
    with bound_request_id("req-2"):
        logging.getLogger("gateway.requests").info("GenerateStream status=OK")
    assert stderr().rstrip().endswith("INFO  [gateway] gateway.requests: GenerateStream status=OK request_id=req-2")


def test_auto_is_json_unless_stderr_is_a_terminal(stderr):
    configure_logging("gateway", "INFO", "auto")
    logging.getLogger("g").info("hello")
    assert json.loads(stderr())["message"] == "hello"


def test_request_ids_are_bound_per_block_and_nest():
    from pipeserve.request_context import current_request_id

    with bound_request_id("outer"):
        with bound_request_id("inner"):
            assert current_request_id() == "inner"
        assert current_request_id() == "outer"
        with bound_request_id(""):
            assert current_request_id() == "outer"
    assert current_request_id() is None
