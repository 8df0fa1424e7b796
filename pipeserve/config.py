"""Settings read once at start-up and passed down, never read from os.environ deep inside.

Every service's settings class derives from ``CommonSettings``; environment
variables are ``PIPESERVE_<FIELD>`` (``REDIS_URL`` is also accepted, as the
quickstart and Kubernetes manifests use it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import AliasChoices, BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeserve.errors import NotFound

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class ModelSpec(BaseModel):
    """One served model, as an operator writes it in the models file."""

    name: str = Field(pattern=MODEL_NAME_PATTERN, description="public name clients use")
    path: str = Field(description="local directory or hub id, given to from_pretrained")
    task: str = "text-generation"
    revision: str | None = None
    dtype: str = Field("auto", description='torch dtype name, or "auto" for the checkpoint\'s')
    device_map: str | None = Field(None, description='e.g. "auto", "cpu", "cuda:0"; None = CPU')
    quantization: Literal["8bit", "4bit"] | None = Field(None, description="bitsandbytes, GPU only")
    trust_remote_code: bool = Field(False, description="operator's choice; never taken from a request")


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
    parsed = ModelsFile.model_validate(data)
    specs = {}
    for spec in parsed.models:
        local = (path.parent / spec.path).resolve()
        if not Path(spec.path).is_absolute() and local.exists():
            spec = spec.model_copy(update={"path": str(local)})
        specs[spec.name] = spec
    return specs


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PIPESERVE_", extra="ignore")

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "PIPESERVE_REDIS_URL"),
        description="the Redis (or Valkey) holding the request queue",
    )
    key_prefix: str = Field("pipeserve", description="namespace of every Redis key")
    models_file: Path = Field(Path("models.yaml"), description="YAML file listing the served models")
    key_ttl_s: int = Field(600, gt=0, description="TTL of every per-request Redis key (reply stream, cancel flag)")
    log_level: str = "INFO"

    def models(self) -> dict[str, ModelSpec]:
        return load_models_file(self.models_file)


def require_model(models: dict[str, ModelSpec], name: str) -> ModelSpec:
    """Look a model up by its public name, or raise NotFound naming the served ones."""
    try:
        return models[name]
    except KeyError:
        served = ", ".join(sorted(models)) or "none"
        raise NotFound(f"unknown model {name!r}; served models: {served}") from None
