"""Model worker settings: the shared ones plus batching, chunked replies and shutdown.

Every field is read from ``PIPESERVE_<FIELD>``; ``python -m model_service``
flags override the environment.
"""

from __future__ import annotations

import os
import socket
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from model_service.engine import EngineKind
from pipeserve.config import CommonSettings, ModelSpec, require_model

TEXT_GENERATION = "text-generation"


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class WorkerSettings(CommonSettings):
    model_config = SettingsConfigDict(populate_by_name=True)

    worker_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated names of the models this process serves; empty = every text-generation model",
    )
    engine: EngineKind = Field("padded-kv", description="generation engine")
    max_batch_size: int = Field(32, gt=0, description="sequences decoded together, per model")
    prefill_tokens_per_step: int = Field(
        4096,
        gt=0,
        description="prompt tokens prefilled per step (at least one request), so arrivals do not stall decode",
    )
    flush_tokens: int = Field(4, gt=0, description="publish a reply chunk once a sequence has this many new tokens")
    flush_interval_ms: int = Field(30, ge=0, description="... or once this long has passed since the last chunk")
    heartbeat_interval_s: float = Field(2.0, gt=0, description="liveness heartbeat period (gateways' readiness signal)")
    idle_block_ms: int = Field(
        500, gt=0, description="how long an idle worker waits on the queue per read; bounds shutdown latency"
    )
    drain_timeout_s: float = Field(
        30.0, ge=0, description="after SIGTERM, time in-flight requests get to finish; the rest stay unacknowledged"
    )
    worker_id: str = Field(default_factory=_default_worker_id, description="consumer name in the consumer group")

    @field_validator("worker_models", mode="before")
    @classmethod
    def _split_names(cls, value):
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    def served_models(self, models: dict[str, ModelSpec]) -> list[ModelSpec]:
        """The specs this worker loads: the named ones, or every text-generation model in the file."""
        if not self.worker_models:
            specs = [spec for spec in models.values() if spec.task == TEXT_GENERATION]
            if not specs:
                raise ValueError(f"{self.models_file} lists no {TEXT_GENERATION} model for a model worker to serve")
            return specs
        specs = [require_model(models, name) for name in self.worker_models]
        for spec in specs:
            if spec.task != TEXT_GENERATION:
                raise ValueError(f"model {spec.name!r} has task {spec.task!r}; model workers serve {TEXT_GENERATION}")
        return specs
