"""Which ForwardTask class serves each forward-only task (canonical names; aliases in pipeserve.tasks)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeserve.config import ModelSpec
from pipeserve.tasks import served_tasks
from tokenizer_service.tasks.feature_extraction import FeatureExtraction
from tokenizer_service.tasks.fill_mask import FillMask
from tokenizer_service.tasks.forward import ForwardModel, ForwardTask
from tokenizer_service.tasks.question_answering import QuestionAnswering
from tokenizer_service.tasks.table_question_answering import TableQuestionAnswering
from tokenizer_service.tasks.text_classification import TextClassification
from tokenizer_service.tasks.token_classification import TokenClassification
from tokenizer_service.tasks.zero_shot_classification import ZeroShotClassification

FORWARD_TASKS: dict[str, type[ForwardTask]] = {
    handler.task: handler
    for handler in (
        TextClassification,
        TokenClassification,
        FillMask,
        ZeroShotClassification,
        FeatureExtraction,
        QuestionAnswering,
        TableQuestionAnswering,
    )
}


@dataclass(frozen=True)
class ForwardTasks:
    """A served forward-only model and a handler for each task it can run (e.g. text- and zero-shot-classification)."""

    model: ForwardModel
    handlers: dict[str, ForwardTask]

    @classmethod
    def load(cls, spec: ModelSpec) -> ForwardTasks:
        model = ForwardModel.load(spec)
        handlers = {task: FORWARD_TASKS[task](model) for task in served_tasks(spec.task) if task in FORWARD_TASKS}
        return cls(model, handlers)
