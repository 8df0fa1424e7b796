"""Gateway settings: the shared ones plus the public server's limits.

Every field is read from ``PIPESERVE_<FIELD>`` unless its alias says
otherwise; ``python -m gateway`` flags override the environment.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from pipeserve.config import EnqueueSettings

MIB = 1024 * 1024


class GatewaySettings(EnqueueSettings):
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
    max_new_tokens_limit: int = Field(4096, gt=0, description="largest max_new_tokens a request may ask for")
    max_num_return_sequences: int = Field(16, gt=0, description="largest num_return_sequences a request may ask for")
    max_beams: int = Field(
        8, gt=0, description="largest num_beams a request may ask for (each beam is a row of the beam search)"
    )
    request_timeout_s: float = Field(600.0, gt=0, description="deadline of a request whose client set none")
    max_message_bytes: int = Field(
        4 * MIB, gt=0, description="largest request message accepted; bigger ones get RESOURCE_EXHAUSTED from grpc"
    )
    max_stop_strings: int = Field(16, ge=0, description="stop strings per request")
    max_stop_length: int = Field(256, gt=0, description="characters per stop string")
    max_chat_messages: int = Field(512, gt=0, description="messages per chat input")
    max_eos_token_ids: int = Field(64, gt=0, description="eos_token_id entries per request")
    max_prompt_chars: int = Field(
        1_000_000, gt=0, description="characters of a prompt, or of a chat's contents together"
    )
    shutdown_grace_s: float = Field(25.0, ge=0, description="time in-flight calls get to finish after SIGTERM")
    api_keys_file: Path | None = Field(
        None,
        description="file of accepted API keys, one per line (e.g. a mounted Secret; re-read when it changes); "
        "when set, every call but health and reflection needs 'authorization: Bearer <key>' or 'x-api-key'",
    )
    tls_cert_file: Path | None = Field(None, description="PEM certificate chain: serve TLS (with tls_key_file)")
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA bundle: require client certificates signed by it (mutual TLS)"
    )
    health_listen: str | None = Field(
        None,
        validation_alias=AliasChoices("PIPESERVE_GATEWAY_HEALTH_LISTEN"),
        description="host:port of a plaintext server answering grpc.health.v1 only, for probes that cannot "
        "speak TLS (Kubernetes gRPC probes); unset: none",
    )
    tokenizer_tls_ca_file: Path | None = Field(
        None, description="PEM CA bundle: dial the tokenizer service over TLS, verifying its certificate"
    )
    tokenizer_client_cert_file: Path | None = Field(
        None, description="PEM certificate the gateway presents to a tokenizer service that requires mutual TLS"
    )
    tokenizer_client_key_file: Path | None = Field(None, description="PEM private key of tokenizer_client_cert_file")
