"""The served models as this service sees them: loaded once at start-up, looked up per request."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pipeserve.config import ModelSpec, require_model
from pipeserve.errors import InvalidArgument
from pipeserve.v1 import models_pb2
from tokenizer_service.tasks import text_generation
from tokenizer_service.tasks.forward import ForwardTask
from tokenizer_service.tasks.registry import FORWARD_TASKS, ForwardTasks
from tokenizer_service.tasks.seq2seq import SEQ2SEQ_TASKS
from tokenizer_service.tasks.text_generation import TextGenerationModel

log = logging.getLogger(__name__)

# task -> loader of its tokenizer-side model; a task gets served here once it has an entry.
TASK_LOADERS: dict[str, Callable[[ModelSpec], object]] = {
    text_generation.TASK: TextGenerationModel.load,
    # Encoder-decoder models go through the generation path too (tokenizer_service.tasks.seq2seq).
    **{task: TextGenerationModel.load for task in SEQ2SEQ_TASKS},
    **{task: ForwardTasks.load for task in FORWARD_TASKS},
}


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
            elif isinstance(model, ForwardTasks):
                info.max_context_length = model.model.context_length or 0
            infos.append(info)
        return infos

    def text_generation(self, name: str) -> TextGenerationModel:
        """The named model, or NotFound (unknown name) / InvalidArgument (not a text-generation model)."""
        spec = require_model(self._specs, name)
        model = self._loaded.get(name)
        if not isinstance(model, TextGenerationModel):
            raise InvalidArgument(
                f"model {name!r} serves task {spec.task!r}; this request needs a text-generation, text2text-generation, "
                "summarization or translation model"
            )
        return model

    def forward_task(self, name: str, task: str) -> ForwardTask:
        """The named model's handler of a forward-only task, or NotFound / InvalidArgument saying what it serves."""
        spec = require_model(self._specs, name)
        model = self._loaded.get(name)
        handler = model.handlers.get(task) if isinstance(model, ForwardTasks) else None
        if handler is None:
            tasks = ", ".join(model.handlers) if isinstance(model, ForwardTasks) else spec.task
            raise InvalidArgument(f"model {name!r} cannot do {task!r}; its tasks: {tasks}")
        return handler
