"""Gateway settings: the shared ones plus the public server's limits.

Every field is read from ``PIPESERVE_<FIELD>`` unless its alias says
otherwise; ``python -m gateway`` flags override the environment.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from pipeserve.config import CommonSettings

MIB = 1024 * 1024


class GatewaySettings(CommonSettings):
    # Lets code and the CLI pass fields by name (listen=..., redis_url=...) as
    # well as by their environment aliases.
    model_config = SettingsConfigDict(populate_by_name=True)

    listen: str = Field(
        "0.0.0.0:50051",
        validation_alias=AliasChoices("PIPESERVE_GATEWAY_LISTEN"),
        description="host:port the public gRPC server binds",
    )
    tokenizer_target: str = Field(
        "127.0.0.1:50052",
        description="gRPC target of the tokenizer service; in Kubernetes dns:///tokenizer-headless:50052 "
        "(calls are spread over every resolved address with round_robin)",
    )
    max_queue_depth: int = Field(256, gt=0, description="queued requests per model before RESOURCE_EXHAUSTED")
    max_new_tokens_limit: int = Field(4096, gt=0, description="largest max_new_tokens a request may ask for")
    max_num_return_sequences: int = Field(16, gt=0, description="largest num_return_sequences a request may ask for")
    request_timeout_s: float = Field(600.0, gt=0, description="deadline of a request whose client set none")
    worker_liveness_s: float = Field(
        15.0,
        ge=0,
        description="reject with UNAVAILABLE when no worker of the model sent a heartbeat this recently; "
        "0 disables the check (workers scaled from zero on queue depth)",
    )
    max_message_bytes: int = Field(
        4 * MIB, gt=0, description="largest request message accepted; bigger ones get RESOURCE_EXHAUSTED from grpc"
    )
    max_stop_strings: int = Field(16, ge=0, description="stop strings per request")
    max_stop_length: int = Field(256, gt=0, description="characters per stop string")
    max_chat_messages: int = Field(512, gt=0, description="messages per chat input")
    max_prompt_chars: int = Field(
        1_000_000, gt=0, description="characters of a prompt, or of a chat's contents together"
    )
    shutdown_grace_s: float = Field(25.0, ge=0, description="time in-flight calls get to finish after SIGTERM")
