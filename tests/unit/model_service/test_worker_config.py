"""Worker settings from the environment, and which models a worker serves."""

from __future__ import annotations

import os

import pytest

from model_service.__main__ import parse_args, settings_from_args
from model_service.config import WorkerSettings
from pipeserve.config import ModelSpec
from pipeserve.errors import NotFound

MODELS = {
    "chat": ModelSpec(name="chat", path="/m/chat"),
    "coder": ModelSpec(name="coder", path="/m/coder"),
    "sentiment": ModelSpec(name="sentiment", path="/m/sentiment", task="text-classification"),
    "speech": ModelSpec(name="speech", path="/m/speech", task="text-to-audio"),
}


def test_environment_names_the_served_models_and_batching(monkeypatch):
    monkeypatch.setenv("PIPESERVE_WORKER_MODELS", "coder, chat")
    monkeypatch.setenv("PIPESERVE_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("PIPESERVE_FLUSH_TOKENS", "1")
    monkeypatch.setenv("PIPESERVE_DRAIN_TIMEOUT_S", "3")
    settings = WorkerSettings()
    assert settings.worker_models == ["coder", "chat"]
    assert (settings.max_batch_size, settings.flush_tokens, settings.flush_interval_ms) == (8, 1, 30)
    assert settings.drain_timeout_s == 3
    assert [spec.name for spec in settings.served_models(MODELS)] == ["coder", "chat"]


def test_by_default_every_model_of_a_served_task_is_served(monkeypatch):
    monkeypatch.delenv("PIPESERVE_WORKER_MODELS", raising=False)
    settings = WorkerSettings()
    assert [spec.name for spec in settings.served_models(MODELS)] == ["chat", "coder", "sentiment"]
    assert settings.worker_id.endswith(f"-{os.getpid()}")


def test_unknown_models_and_tasks_are_refused():
    with pytest.raises(NotFound, match="served models: chat, coder, sentiment, speech"):
        WorkerSettings(worker_models="nope").served_models(MODELS)
    with pytest.raises(ValueError, match="has task 'text-to-audio'"):
        WorkerSettings(worker_models="speech").served_models(MODELS)


def test_flags_override_the_environment(monkeypatch):
    monkeypatch.setenv("PIPESERVE_WORKER_MODELS", "chat")
    monkeypatch.setenv("REDIS_URL", "redis://env:6379/0")
    args = parse_args(["--models", "coder", "--redis-url", "redis://flag:6379/1", "--models-file", "x.yaml"])
    settings = settings_from_args(args)
    assert settings.worker_models == ["coder"]
    assert settings.redis_url == "redis://flag:6379/1"
    assert str(settings.models_file) == "x.yaml"
