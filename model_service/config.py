"""Model worker settings: the shared ones plus batching, chunked replies and shutdown.

Every field is read from ``PIPESERVE_<FIELD>``; ``python -m model_service``
flags override the environment.
"""

from __future__ import annotations

import os
import socket
from typing import Annotated

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from model_service.engine import EngineKind, EngineSettings
from pipeserve.config import CommonSettings, ModelSpec, require_model
from pipeserve.tasks import MODEL_CLASSES


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class WorkerSettings(CommonSettings):
    model_config = SettingsConfigDict(populate_by_name=True)

    worker_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated names of the models this process serves; empty = every model of the "
        "models file whose task model workers serve",
    )
    engine: EngineKind = Field(
        "padded-kv",
        description="generation engine: padded-kv (ours: any sampling option, fast on CPU) or transformers-cb "
        "(transformers' ContinuousBatchingManager with a paged cache; greedy only)",
    )
    max_batch_size: int = Field(
        32, gt=0, description="sequences decoded together, or rows run in one forward (forward-only tasks), per model"
    )
    max_wait_ms: int = Field(
        0,
        ge=0,
        description="forward-only tasks: how long the first queued rows wait for more to share their forward "
        "(a full batch runs at once); 0 = run what is queued at once, which still batches concurrent requests "
        "(measured faster than 5 ms at 1 and at 32 clients, benchmarks/pipelines.py)",
    )
    prefill_tokens_per_step: int = Field(
        512,
        gt=0,
        description="prompt tokens prefilled per step (at least one chunk), so arrivals do not stall decode; "
        "512 measured best on CPU (benchmarks/README.md): a burst gets its first tokens a few prompts at a time",
    )
    prefill_chunk_tokens: int = Field(
        512,
        gt=0,
        description="padded-kv: longer prompts are prefilled this many tokens per step, between decode steps",
    )
    kv_cache_budget_mb: float = Field(
        0.0,
        ge=0,
        description="padded-kv: KV cache per model (rows x longest prompt+max_new_tokens); a request that would "
        "not fit stays in the queue; 0 = no limit",
    )
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads in this process; 0 = torch's default")
    cb_num_blocks: int = Field(256, gt=0, description="transformers-cb: paged KV cache blocks")
    cb_page_size: int = Field(64, gt=0, description="transformers-cb: tokens per block")
    cb_max_batch_tokens: int = Field(512, gt=0, description="transformers-cb: tokens per forward pass")
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
    claim_idle_ms: int = Field(
        10_000,
        gt=0,
        description="a queue entry whose worker has not refreshed it for this long (it refreshes them every "
        "heartbeat_interval_s from a thread of its own) belonged to a dead worker, and is taken over",
    )
    max_deliveries: int = Field(
        3, gt=0, description="workers a request may take down before it is moved to the dead-letter stream"
    )
    health_listen: str = Field(
        "0.0.0.0:50053",
        validation_alias=AliasChoices("PIPESERVE_WORKER_HEALTH_LISTEN"),
        description="host:port of the worker's grpc.health.v1 server (probes): SERVING once every model is "
        "loaded and warmed up, NOT_SERVING before and from SIGTERM on",
    )

    @model_validator(mode="after")
    def _claims_spare_live_workers(self) -> WorkerSettings:
        # A live worker refreshes its entries once per heartbeat; a shorter claim time would steal them.
        least_ms = round(3 * self.heartbeat_interval_s * 1000)
        if self.claim_idle_ms < least_ms:
            raise ValueError(
                f"claim_idle_ms ({self.claim_idle_ms}) must be at least 3 heartbeat intervals "
                f"({least_ms} ms), or live workers' requests would be taken over"
            )
        return self

    def engine_settings(self) -> EngineSettings:
        return EngineSettings(
            kind=self.engine,
            max_batch_size=self.max_batch_size,
            prefill_tokens_per_step=self.prefill_tokens_per_step,
            prefill_chunk_tokens=self.prefill_chunk_tokens,
            kv_cache_budget_mb=self.kv_cache_budget_mb,
            torch_threads=self.torch_threads,
            cb_num_blocks=self.cb_num_blocks,
            cb_page_size=self.cb_page_size,
            cb_max_batch_tokens=self.cb_max_batch_tokens,
        )

    @field_validator("worker_models", mode="before")
    @classmethod
    def _split_names(cls, value):
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    def served_models(self, models: dict[str, ModelSpec]) -> list[ModelSpec]:
        """The specs this worker loads: the named ones, or every model of a task model workers serve."""
        if not self.worker_models:
            specs = [spec for spec in models.values() if spec.task in MODEL_CLASSES]
            if not specs:
                raise ValueError(f"{self.models_file} lists no model of a task model workers serve ({_served()})")
            return specs
        specs = [require_model(models, name) for name in self.worker_models]
        for spec in specs:
            if spec.task not in MODEL_CLASSES:
                raise ValueError(f"model {spec.name!r} has task {spec.task!r}; model workers serve {_served()}")
        return specs


def _served() -> str:
    return ", ".join(MODEL_CLASSES)
