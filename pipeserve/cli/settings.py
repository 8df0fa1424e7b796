"""What serve-all and quickstart take from the environment, read once at start-up.

The shared settings give defaults for everything; the commands also need to
know which settings were given, because "no Redis URL given" means "start an
embedded one" rather than "use the default URL".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class ConfigurationError(Exception):
    pass


@dataclass(frozen=True)
class CliEnvironment:
    key_prefix: str
    redis_url: str | None
    """REDIS_URL (or PIPESERVE_REDIS_URL) when set, else None."""
    models_file: Path | None
    """PIPESERVE_MODELS_FILE when set, else None."""
    log_level: str | None
    """PIPESERVE_LOG_LEVEL when set, else None."""


def read_environment() -> CliEnvironment:
    from pydantic import ValidationError

    from pipeserve.config import CommonSettings

    try:
        settings = CommonSettings()
    except ValidationError as exc:
        raise ConfigurationError(f"invalid environment: {exc}") from None
    given = settings.model_fields_set
    return CliEnvironment(
        key_prefix=settings.key_prefix,
        redis_url=settings.redis_url if "redis_url" in given else None,
        models_file=settings.models_file if "models_file" in given else None,
        log_level=settings.log_level if "log_level" in given else None,
    )
