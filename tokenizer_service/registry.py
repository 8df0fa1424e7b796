"""The served models as this service sees them: loaded once at start-up, looked up per request."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pipeserve.config import ModelSpec, require_model
from pipeserve.errors import InvalidArgument
from pipeserve.v1 import models_pb2
from tokenizer_service.tasks import text_generation
from tokenizer_service.tasks.text_generation import TextGenerationModel

log = logging.getLogger(__name__)

# task -> loader of its tokenizer-side model; a task gets served here once it has an entry.
TASK_LOADERS: dict[str, Callable[[ModelSpec], object]] = {text_generation.TASK: TextGenerationModel.load}


class ModelLoadError(RuntimeError):
    """A model in the models file could not be loaded; the service must not start half-configured."""


class ModelRegistry:
    def __init__(self, specs: dict[str, ModelSpec], loaded: dict[str, object]):
        self._specs = specs
        self._loaded = loaded

    @classmethod
    def load(cls, specs: dict[str, ModelSpec]) -> ModelRegistry:
        loaded = {}
        for name, spec in specs.items():
            loader = TASK_LOADERS.get(spec.task)
            if loader is None:
                log.warning(
                    "model %s: task %r is not served by the tokenizer service; its requests are refused",
                    name,
                    spec.task,
                )
                continue
            started = time.monotonic()
            try:
                loaded[name] = loader(spec)
            except Exception as exc:
                raise ModelLoadError(f"cannot load the tokenizer of model {name!r} from {spec.path!r}: {exc}") from exc
            log.info(
                "model %s: tokenizer and configs loaded from %s in %.2f s", name, spec.path, time.monotonic() - started
            )
        return cls(specs, loaded)

    def describe(self) -> list[models_pb2.ModelInfo]:
        """Every model of the models file; what only a loaded tokenizer knows is filled where loaded."""
        infos = []
        for name, spec in self._specs.items():
            info = models_pb2.ModelInfo(name=name, task=spec.task)
            model = self._loaded.get(name)
            if isinstance(model, TextGenerationModel):
                info.max_context_length = model.context_length or 0
                info.has_chat_template = model.tokenizer.chat_template is not None
            infos.append(info)
        return infos

    def text_generation(self, name: str) -> TextGenerationModel:
        """The named model, or NotFound (unknown name) / InvalidArgument (not a text-generation model)."""
        spec = require_model(self._specs, name)
        model = self._loaded.get(name)
        if not isinstance(model, TextGenerationModel):
            raise InvalidArgument(
                f"model {name!r} serves task {spec.task!r}; this request needs a text-generation model"
            )
        return model
