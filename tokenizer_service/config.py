"""Tokenizer service settings: the shared ones plus where it listens and how it shuts down.

Every field is read from ``PIPESERVE_<FIELD>`` unless its alias says
otherwise; ``python -m tokenizer_service`` flags override the environment.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from pipeserve.config import CommonSettings


class TokenizerSettings(CommonSettings):
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
