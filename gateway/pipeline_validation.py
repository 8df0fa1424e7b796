"""Checks of a PipelineRequest's envelope before any downstream call: model, task, input, sizes.

The task is resolved here (alias, or the model's own task when the request
names none) and must be one the model can run; what needs the model's
tokenizer (a mask token in a fill-mask text, token counts) is checked by the
tokenizer service.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.validation import RequestLimits, validate_model
from pipeserve.config import ModelSpec
from pipeserve.errors import InvalidArgument
from pipeserve.tasks import FORWARD_TASKS, canonical_task, input_field, served_tasks
from pipeserve.v1 import pipelines_pb2

# Input field -> the texts of each item (for counting items and characters).
_ITEM_TEXTS: dict[str, Callable] = {
    "text_classification": lambda m: [item.text + item.text_pair for item in m.items],
    "token_classification": lambda m: list(m.texts),
    "fill_mask": lambda m: list(m.texts),
    "zero_shot_classification": lambda m: [*m.sequences, *m.candidate_labels, m.hypothesis_template],
    "feature_extraction": lambda m: list(m.texts),
    # A long context becomes several rows (doc_stride windows): counted by the tokenizer service.
    "question_answering": lambda m: [item.question + item.context for item in m.items],
    # One row per query, each with the whole table.
    "table_question_answering": lambda m: [
        *m.queries,
        *(column.header for column in m.columns),
        *(cell for column in m.columns for cell in column.cells),
    ],
}


def validate_pipeline_request(
    request: pipelines_pb2.PipelineRequest, models: dict[str, ModelSpec], limits: RequestLimits
) -> str:
    """The canonical task the request runs, or NotFound (model) / InvalidArgument saying what to change."""
    spec = validate_model(request.model, models)
    tasks = [task for task in served_tasks(spec.task) if task in FORWARD_TASKS]
    if request.HasField("task"):
        task = canonical_task(request.task)
        if task is None:
            raise InvalidArgument(
                f"unknown task {request.task!r}; model {spec.name!r} does: {', '.join(tasks) or spec.task}"
            )
    else:
        task = spec.task
    if task not in tasks:
        raise InvalidArgument(
            f"model {spec.name!r} cannot do {task!r}; its tasks: {', '.join(tasks) or spec.task}"
            + ("" if tasks else " (served by GenerationService)")
        )
    which = request.WhichOneof("input")
    expected = input_field(task)
    if which != expected:
        raise InvalidArgument(f"task {task!r} takes the {expected} input; the request sets {which or 'no input'}")
    message = getattr(request, which)
    texts = _ITEM_TEXTS.get(which)
    if texts is not None:
        _check_items(which, message, texts(message), limits)
    return task


def _check_items(field: str, message, texts: list[str], limits: RequestLimits) -> None:
    items = len(texts)
    if field == "zero_shot_classification":
        if not message.candidate_labels:
            raise InvalidArgument("zero_shot_classification.candidate_labels is empty; give at least one label")
        items = len(message.sequences) * len(message.candidate_labels)
        if not message.sequences:
            raise InvalidArgument("zero_shot_classification.sequences is empty; send at least one text")
    elif field == "table_question_answering":
        _check_table(message)
        items = len(message.queries)
    elif not texts:
        raise InvalidArgument(f"{field} has no items; send at least one text")
    if items > limits.max_pipeline_rows:
        raise InvalidArgument(
            f"{field} asks for {items} model rows (texts, or texts x labels); at most {limits.max_pipeline_rows} "
            "are accepted per request (PIPESERVE_MAX_PIPELINE_ROWS)"
        )
    chars = sum(len(text) for text in texts)
    if chars > limits.max_prompt_chars:
        raise InvalidArgument(
            f"{field} holds {chars} characters of text; at most {limits.max_prompt_chars} are accepted "
            "(PIPESERVE_MAX_PROMPT_CHARS)"
        )


def _check_table(message: pipelines_pb2.TableQuestionAnsweringInput) -> None:
    """A table with columns of equal, non-zero height, and at least one query, none empty."""
    field = "table_question_answering"
    if not message.columns:
        raise InvalidArgument(f"{field}.columns is empty; send the table as columns, each a header and its cells")
    first = message.columns[0]
    for index, column in enumerate(message.columns):
        if len(column.cells) != len(first.cells):
            raise InvalidArgument(
                f"{field}.columns[{index}] ({column.header!r}) has {len(column.cells)} cells but columns[0] "
                f'({first.header!r}) has {len(first.cells)}; every column needs one cell per row ("" for an '
                "empty cell)"
            )
    if not first.cells:
        raise InvalidArgument(
            f"{field}.columns have no cells, so the table has no rows; give every column one cell per row"
        )
    if not message.queries:
        raise InvalidArgument(f"{field}.queries is empty; ask at least one question about the table")
    for index, query in enumerate(message.queries):
        if not query:
            raise InvalidArgument(f"{field}.queries[{index}] is empty; ask a question or leave it out")
