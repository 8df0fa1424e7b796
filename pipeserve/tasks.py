"""Pipeline task names, as transformers spells them, and what each needs of a model.

Shared by every service: the gateway resolves a request's task (aliases,
the model's default), the tokenizer service picks the task's pre/post
processing, the model worker loads the task's AutoModel class. Tasks that
transformers 5 dropped (question-answering, summarization, translation,
text2text-generation) keep their 4.x names.
"""

from __future__ import annotations

import json
from pathlib import Path

TEXT_GENERATION = "text-generation"
TEXT_CLASSIFICATION = "text-classification"
TOKEN_CLASSIFICATION = "token-classification"
FILL_MASK = "fill-mask"
ZERO_SHOT_CLASSIFICATION = "zero-shot-classification"
FEATURE_EXTRACTION = "feature-extraction"
QUESTION_ANSWERING = "question-answering"
TABLE_QUESTION_ANSWERING = "table-question-answering"
SUMMARIZATION = "summarization"
TRANSLATION = "translation"
TEXT2TEXT_GENERATION = "text2text-generation"

# The AutoModel class (in transformers) whose forward each task runs.
MODEL_CLASSES = {
    TEXT_GENERATION: "AutoModelForCausalLM",
    TEXT_CLASSIFICATION: "AutoModelForSequenceClassification",
    ZERO_SHOT_CLASSIFICATION: "AutoModelForSequenceClassification",
    TOKEN_CLASSIFICATION: "AutoModelForTokenClassification",
    FILL_MASK: "AutoModelForMaskedLM",
    FEATURE_EXTRACTION: "AutoModel",
    QUESTION_ANSWERING: "AutoModelForQuestionAnswering",
    TABLE_QUESTION_ANSWERING: "AutoModelForTableQuestionAnswering",
    SUMMARIZATION: "AutoModelForSeq2SeqLM",
    TRANSLATION: "AutoModelForSeq2SeqLM",
    TEXT2TEXT_GENERATION: "AutoModelForSeq2SeqLM",
}
# Served by one forward pass per request (dynamic batching); the other tasks generate.
FORWARD_TASKS = frozenset(
    {
        TEXT_CLASSIFICATION,
        TOKEN_CLASSIFICATION,
        FILL_MASK,
        ZERO_SHOT_CLASSIFICATION,
        FEATURE_EXTRACTION,
        QUESTION_ANSWERING,
        TABLE_QUESTION_ANSWERING,
    }
)

# transformers' aliases (pipelines.TASK_ALIASES), for the tasks served here.
ALIASES = {"sentiment-analysis": TEXT_CLASSIFICATION, "ner": TOKEN_CLASSIFICATION}

# Architecture name endings -> the task pipeline(model=...) would pick for them. transformers asks the hub
# for the model's pipeline_tag instead; offline, the head in config.architectures says the same.
_ARCHITECTURE_TASKS = (
    ("ForCausalLM", TEXT_GENERATION),
    ("LMHeadModel", TEXT_GENERATION),
    ("ForSequenceClassification", TEXT_CLASSIFICATION),
    ("ForTokenClassification", TOKEN_CLASSIFICATION),
    ("ForMaskedLM", FILL_MASK),
    # TAPAS's head is named like an extractive QA head but answers over tables: matched before it.
    ("TapasForQuestionAnswering", TABLE_QUESTION_ANSWERING),
    ("ForQuestionAnswering", QUESTION_ANSWERING),
    ("ForConditionalGeneration", TEXT2TEXT_GENERATION),
    ("Model", FEATURE_EXTRACTION),
)


def canonical_task(name: str) -> str | None:
    """The canonical name of a task or alias; None when it is not a task pipeserve knows."""
    name = ALIASES.get(name, name)
    return name if name in MODEL_CLASSES else None


def input_field(task: str) -> str:
    """A forward task's field in PipelineRequest's `input` oneof (and PipelineResponse's `output`)."""
    return task.replace("-", "_")


def task_of_architectures(architectures: list[str] | None) -> str | None:
    """The task a checkpoint's head is for (``BertForMaskedLM`` -> fill-mask); None when none matches."""
    for architecture in architectures or ():
        for ending, task in _ARCHITECTURE_TASKS:
            if architecture.endswith(ending):
                return task
    return None


def task_of_model_dir(path: str) -> str | None:
    """The task a local checkpoint's config.json implies; None when path is no local checkpoint or says nothing."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return None
    try:
        architectures = json.loads(config.read_text()).get("architectures")
    except (OSError, ValueError):
        return None
    return task_of_architectures(architectures)


def served_tasks(task: str) -> tuple[str, ...]:
    """Every task a model loaded for ``task`` can run: those whose forward is the same model class.

    A sequence classifier serves text-classification and (trained on NLI)
    zero-shot-classification, as pipeline() accepts either for it.
    """
    model_class = MODEL_CLASSES.get(task)
    if model_class is None:
        return (task,)
    siblings = {other for other, cls in MODEL_CLASSES.items() if cls == model_class and other != task}
    # Seq2seq tasks share a class but differ in prompt conventions; only classification pairs up.
    siblings &= {TEXT_CLASSIFICATION, ZERO_SHOT_CLASSIFICATION}
    return (task, *sorted(siblings))
