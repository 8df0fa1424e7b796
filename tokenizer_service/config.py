"""Tokenizer service settings: the shared ones, the queue limits (it enqueues forward-only tasks), where it
listens and how it shuts down.

Every field is read from ``PIPESERVE_<FIELD>`` unless its alias says
otherwise; ``python -m tokenizer_service`` flags override the environment.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from pipeserve.config import EnqueueSettings


class TokenizerSettings(EnqueueSettings):
    # Lets code and the CLI pass fields by name (listen=...) as well as by their environment aliases.
    model_config = SettingsConfigDict(populate_by_name=True)

    listen: str = Field(
        "0.0.0.0:50052",
        validation_alias=AliasChoices("PIPESERVE_TOKENIZER_LISTEN"),
        description="host:port the tokenizer service's gRPC server binds",
    )
    shutdown_grace_s: float = Field(
        25.0, ge=0, description="time in-flight StreamText calls get to finish after SIGTERM"
    )
    # Named PIPESERVE_TOKENIZER_TLS_*, not PIPESERVE_TLS_*: serve-all gives every service one environment,
    # and the gateway's own certificate must not turn TLS on here too.
    tls_cert_file: Path | None = Field(
        None,
        validation_alias=AliasChoices("PIPESERVE_TOKENIZER_TLS_CERT_FILE"),
        description="PEM certificate chain: serve TLS to the gateways (with tls_key_file)",
    )
    tls_key_file: Path | None = Field(
        None, validation_alias=AliasChoices("PIPESERVE_TOKENIZER_TLS_KEY_FILE"), description="PEM key of tls_cert_file"
    )
    tls_client_ca_file: Path | None = Field(
        None,
        validation_alias=AliasChoices("PIPESERVE_TOKENIZER_TLS_CLIENT_CA_FILE"),
        description="PEM CA bundle: require gateways to present a client certificate signed by it (mutual TLS)",
    )
    health_listen: str | None = Field(
        None,
        validation_alias=AliasChoices("PIPESERVE_TOKENIZER_HEALTH_LISTEN"),
        description="host:port of a plaintext server answering grpc.health.v1 only, for probes that cannot "
        "speak TLS (Kubernetes gRPC probes); unset: none",
    )
