"""Settings read once at start-up and passed down, never read from os.environ deep inside.

Every service's settings class derives from ``CommonSettings``; environment
variables are ``PIPESERVE_<FIELD>`` (``REDIS_URL`` is also accepted, as the
quickstart and Kubernetes manifests use it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import yaml
from pydantic import AliasChoices, BaseModel, Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeserve.errors import NotFound
from pipeserve.logsetup import LogFormat
from pipeserve.tasks import ALIASES, TEXT_GENERATION, task_of_model_dir

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class ModelSpec(BaseModel):
    """One served model, as an operator writes it in the models file."""

    name: str = Field(pattern=MODEL_NAME_PATTERN, description="public name clients use")
    path: str = Field(description="local directory or hub id, given to from_pretrained")
    task: str | None = Field(
        None,
        description="pipeline task, or a transformers alias (sentiment-analysis, ner); unset: the task of the "
        "checkpoint's architecture in its local config.json (BertForMaskedLM: fill-mask), else text-generation",
    )
    revision: str | None = None
    dtype: str = Field("auto", description='torch dtype name, or "auto" for the checkpoint\'s')
    device_map: str | None = Field(None, description='e.g. "auto", "cpu", "cuda:0"; None = CPU')
    quantization: Literal["8bit", "4bit"] | None = Field(None, description="bitsandbytes, GPU only")
    trust_remote_code: bool = Field(False, description="operator's choice; never taken from a request")

    @field_validator("path")
    @classmethod
    def _local_to_the_models_file(cls, path: str, info: ValidationInfo) -> str:
        """A relative path naming a directory beside the models file is that directory (else a hub id)."""
        models_dir = (info.context or {}).get("models_dir")
        if models_dir is not None and not Path(path).is_absolute():
            local = (Path(models_dir) / path).resolve()
            if local.exists():
                return str(local)
        return path

    @field_validator("task")
    @classmethod
    def _canonical_task(cls, task: str | None) -> str | None:
        return None if task is None else ALIASES.get(task, task)

    @model_validator(mode="after")
    def _task_from_checkpoint(self) -> ModelSpec:
        # pipeline(model=...) asks the hub for the task; the head named in config.json says the same offline.
        if self.task is None:
            self.task = task_of_model_dir(self.path) or TEXT_GENERATION
        return self


class ModelsFile(BaseModel):
    models: list[ModelSpec]

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelSpec]) -> list[ModelSpec]:
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        if not models:
            raise ValueError("the models file lists no models")
        return models


def load_models_file(path: Path) -> dict[str, ModelSpec]:
    """Parse the YAML models file; relative model paths are resolved against its directory."""
    data = yaml.safe_load(path.read_text())
    parsed = ModelsFile.model_validate(data, context={"models_dir": path.parent})
    return {spec.name: spec for spec in parsed.models}


class CommonSettings(BaseSettings):
    # hide_input_in_errors: a settings error must not print the Redis URL's password or any other secret.
    model_config = SettingsConfigDict(env_prefix="PIPESERVE_", extra="ignore", hide_input_in_errors=True)

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "PIPESERVE_REDIS_URL"),
        description="the Redis (or Valkey) holding the request queue",
    )
    key_prefix: str = Field("pipeserve", description="namespace of every Redis key")
    models_file: Path = Field(Path("models.yaml"), description="YAML file listing the served models")
    key_ttl_s: int = Field(600, gt=0, description="TTL of every per-request Redis key (reply stream, cancel flag)")
    log_level: str = "INFO"
    log_format: LogFormat = Field(
        "auto", description="json or text; auto = JSON lines unless stderr is a terminal (pipeserve.logsetup)"
    )
    metrics_port: int = Field(
        9090, ge=0, le=65535, description="port of the Prometheus /metrics endpoint, on every interface; 0 = off"
    )
    traces_exporter: str = Field(
        "none",
        validation_alias=AliasChoices("OTEL_TRACES_EXPORTER"),
        description="OpenTelemetry span exporters, comma-separated (otlp, console); none = tracing off. "
        "The other OTEL_* variables (endpoint, sampler, service name) are read by the SDK",
    )
    redis_password_file: Path | None = Field(
        None, description="file holding the Redis password (e.g. a mounted Secret), for a redis_url without one"
    )

    @model_validator(mode="after")
    def _redis_password_from_file(self) -> CommonSettings:
        """Put the file's password into redis_url, so every Redis client built from the URL authenticates."""
        if self.redis_password_file is None:
            return self
        try:
            password = self.redis_password_file.read_text().strip()
        except OSError as exc:
            raise ValueError(
                f"PIPESERVE_REDIS_PASSWORD_FILE={self.redis_password_file}: cannot read it ({exc})"
            ) from None
        parts = urlsplit(self.redis_url)
        if parts.password is not None:
            if unquote(parts.password) != password:
                raise ValueError(
                    "the Redis URL carries a password and PIPESERVE_REDIS_PASSWORD_FILE another one; give only one"
                )
            return self
        user = quote(unquote(parts.username), safe="") if parts.username else ""
        host = parts.netloc.rpartition("@")[2]
        self.redis_url = urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))
        return self

    def models(self) -> dict[str, ModelSpec]:
        return load_models_file(self.models_file)


class EnqueueSettings(CommonSettings):
    """Settings of the services that put work items on the queue: the gateway (generation) and the
    tokenizer service (forward-only tasks, which it runs from preprocess to postprocess)."""

    max_queue_depth: int = Field(256, gt=0, description="queued requests per model before RESOURCE_EXHAUSTED")
    max_pipeline_rows: int = Field(
        256,
        gt=0,
        description="model rows one PipelineService request may ask for: the gateway counts texts (or texts x "
        "labels), the tokenizer service the rows they become (long texts cut into windows count one per window)",
    )
    worker_liveness_s: float = Field(
        15.0,
        ge=0,
        description="reject with UNAVAILABLE when no worker of the model sent a heartbeat this recently; "
        "0 disables the check (workers scaled from zero on queue depth)",
    )


def require_model(models: dict[str, ModelSpec], name: str) -> ModelSpec:
    """Look a model up by its public name, or raise NotFound naming the served ones."""
    try:
        return models[name]
    except KeyError:
        served = ", ".join(sorted(models)) or "none"
        raise NotFound(f"unknown model {name!r}; served models: {served}") from None
