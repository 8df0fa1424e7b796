"""Each forward task's pre/post-processing around a real forward equals transformers.pipeline in one process.

The rows of a request go through the model worker's own batched forward
(model_service.engine.forward_batcher.run_forward: padded together, split
back), so these also check that padding does not change results.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import transformers
from table_question_answering_samples import (
    CITIES,
    CITY_QUERIES,
    REPOSITORIES,
    REPOSITORY_QUERIES,
    pipeline_answers,
    served_answers,
    table_input,
)
from transformers import pipeline

from model_service.engine.forward_batcher import ForwardRequest, run_forward
from pipeserve.config import ModelSpec
from pipeserve.errors import InvalidArgument
from pipeserve.local_encoder_models import (
    TINY_BERT_EMBEDDINGS,
    TINY_BERT_MLM,
    TINY_BERT_NER,
    TINY_BERT_NLI,
    TINY_BERT_SENTIMENT,
    TINY_TAPAS,
)
from pipeserve.tasks import MODEL_CLASSES
from pipeserve.tensors import from_tensor
from pipeserve.v1 import pipelines_pb2 as pb
from pipeserve.v1 import table_question_answering_pb2 as tqa
from tokenizer_service.tasks.forward import ForwardModel
from tokenizer_service.tasks.registry import FORWARD_TASKS, ForwardTasks

TEXTS = [
    "I loved this film, the acting was superb!",
    "terrible",
    "John Smith moved from Paris to Berlin in 2019 and works for the United Nations.",
]
ATOL = 1e-5


@pytest.fixture(scope="module")
def models_dir(pipeline_models_file: Path) -> Path:
    return pipeline_models_file.parent


@cache
def _handler(models_dir: Path, name: str, task: str):
    return FORWARD_TASKS[task](ForwardModel.load(ModelSpec(name=name, path=str(models_dir / name), task=task)))


@cache
def _model(models_dir: Path, name: str, task: str):
    return getattr(transformers, MODEL_CLASSES[task]).from_pretrained(models_dir / name).eval()


def served(models_dir: Path, name: str, task: str, input_msg):
    """What the services answer: preprocess, one batched forward of every row, postprocess."""
    handler = _handler(models_dir, name, task)
    prepared = handler.preprocess(input_msg)
    request = ForwardRequest("r", prepared.rows, handler.output_names, handler.token_outputs)
    outputs = run_forward(_model(models_dir, name, task), [request], pad_token_id=0, device="cpu")[0]
    return handler.postprocess(input_msg, prepared.state, outputs)


def reference(models_dir: Path, name: str, task: str):
    return pipeline(task, model=str(models_dir / name))


def assert_labels(got, expected) -> None:
    assert [item.label for item in got] == [item["label"] for item in expected]
    np.testing.assert_allclose([item.score for item in got], [item["score"] for item in expected], atol=ATOL)


@pytest.mark.parametrize(
    "options, pipeline_kwargs",
    [
        ({}, {"top_k": 1}),
        ({"top_k": 0}, {"top_k": None}),
        (
            {"top_k": 2, "function_to_apply": pb.CLASSIFICATION_FUNCTION_SIGMOID},
            {"top_k": 2, "function_to_apply": "sigmoid"},
        ),
        (
            {"top_k": 0, "function_to_apply": pb.CLASSIFICATION_FUNCTION_NONE},
            {"top_k": None, "function_to_apply": "none"},
        ),
    ],
)
def test_text_classification(models_dir, options, pipeline_kwargs):
    items = [pb.TextClassificationItem(text=text) for text in TEXTS]
    items.append(pb.TextClassificationItem(text="The cat sat.", text_pair="A cat was sitting."))
    got = served(
        models_dir, TINY_BERT_SENTIMENT, "text-classification", pb.TextClassificationInput(items=items, **options)
    )
    inputs = [*TEXTS, {"text": "The cat sat.", "text_pair": "A cat was sitting."}]
    expected = reference(models_dir, TINY_BERT_SENTIMENT, "text-classification")(inputs, **pipeline_kwargs)
    for result, want in zip(got.results, expected, strict=True):
        assert_labels(result.labels, want)


LONG_TEXT = " ".join(f"John Smith visited Paris on day {i} of the trip." for i in range(70))  # > 512 tokens


def test_text_classification_truncation_cuts_long_items_as_the_pipeline_does(models_dir):
    items = [
        pb.TextClassificationItem(text=LONG_TEXT),
        pb.TextClassificationItem(text="short", text_pair=LONG_TEXT),
        pb.TextClassificationItem(text=TEXTS[0]),
    ]
    message = pb.TextClassificationInput(items=items, top_k=0, truncation=True)
    got = served(models_dir, TINY_BERT_SENTIMENT, "text-classification", message)
    inputs = [LONG_TEXT, {"text": "short", "text_pair": LONG_TEXT}, TEXTS[0]]
    expected = reference(models_dir, TINY_BERT_SENTIMENT, "text-classification")(inputs, top_k=None, truncation=True)
    for result, want in zip(got.results, expected, strict=True):
        assert_labels(result.labels, want)
    with pytest.raises(InvalidArgument, match="item 0 has .* tokens, more than model .* takes \\(512\\)"):
        served(models_dir, TINY_BERT_SENTIMENT, "text-classification", pb.TextClassificationInput(items=items[:1]))


@pytest.mark.parametrize(
    "strategy, name", [(pb.AGGREGATION_STRATEGY_SIMPLE, "simple"), (pb.AGGREGATION_STRATEGY_MAX, "max")]
)
def test_token_classification_stride_tags_the_whole_of_a_long_text(models_dir, strategy, name):
    texts = [LONG_TEXT, TEXTS[2]]
    message = pb.TokenClassificationInput(texts=texts, aggregation_strategy=strategy, stride=64)
    handler = _handler(models_dir, TINY_BERT_NER, "token-classification")
    assert len(handler.preprocess(message).rows) > len(texts)  # the long text runs as several windows
    got = served(models_dir, TINY_BERT_NER, "token-classification", message)
    expected = reference(models_dir, TINY_BERT_NER, "token-classification")(texts, aggregation_strategy=name, stride=64)
    for result, want in zip(got.results, expected, strict=True):
        assert [(e.label, e.word, e.start, e.end) for e in result.entities] == [
            (w["entity_group"], w["word"], w["start"], w["end"]) for w in want
        ]
        np.testing.assert_allclose([e.score for e in result.entities], [w["score"] for w in want], atol=ATOL)
    assert max(e.end for e in got.results[0].entities) > len(LONG_TEXT) // 2  # tagged past the first window


@pytest.mark.parametrize(
    "options, message",
    [
        ({"stride": 64}, "aggregation_strategy"),
        ({"stride": 512, "aggregation_strategy": pb.AGGREGATION_STRATEGY_SIMPLE}, "must be less than"),
    ],
)
def test_token_classification_bad_stride_is_refused(models_dir, options, message):
    handler = _handler(models_dir, TINY_BERT_NER, "token-classification")
    with pytest.raises(InvalidArgument, match=message):
        handler.preprocess(pb.TokenClassificationInput(texts=[LONG_TEXT], **options))


@pytest.mark.parametrize(
    "strategy, name", [(pb.AGGREGATION_STRATEGY_NONE, "none"), (pb.AGGREGATION_STRATEGY_SIMPLE, "simple"),
                       (pb.AGGREGATION_STRATEGY_FIRST, "first"), (pb.AGGREGATION_STRATEGY_AVERAGE, "average"),
                       (pb.AGGREGATION_STRATEGY_MAX, "max")],
)  # fmt: skip
def test_token_classification_with_offsets(models_dir, strategy, name):
    got = served(
        models_dir,
        TINY_BERT_NER,
        "token-classification",
        pb.TokenClassificationInput(texts=TEXTS, aggregation_strategy=strategy),
    )
    expected = reference(models_dir, TINY_BERT_NER, "token-classification")(TEXTS, aggregation_strategy=name)
    for text, result, want in zip(TEXTS, got.results, expected, strict=True):
        assert [(e.label, e.word, e.start, e.end) for e in result.entities] == [
            (w.get("entity_group", w.get("entity")), w["word"], w["start"], w["end"]) for w in want
        ]
        np.testing.assert_allclose([e.score for e in result.entities], [w["score"] for w in want], atol=ATOL)
        assert all(text[e.start : e.end] for e in result.entities)
        if name == "none":
            assert [e.index for e in result.entities] == [w["index"] for w in want]


def test_token_classification_ignore_labels(models_dir):
    keep_all = pb.TokenClassificationInput(texts=TEXTS[:1], ignore_labels=pb.LabelList())
    got = served(models_dir, TINY_BERT_NER, "token-classification", keep_all)
    expected = reference(models_dir, TINY_BERT_NER, "token-classification")(TEXTS[0], ignore_labels=[])
    assert [e.label for e in got.results[0].entities] == [w["entity"] for w in expected]
    only_per = pb.TokenClassificationInput(texts=TEXTS[:1], ignore_labels=pb.LabelList(labels=["O", "B-PER", "I-PER"]))
    got = served(models_dir, TINY_BERT_NER, "token-classification", only_per)
    assert all(e.label not in {"O", "B-PER", "I-PER"} for e in got.results[0].entities)


@pytest.mark.parametrize("options", [{}, {"top_k": 3}, {"top_k": 2, "targets": ["the", "file", "data"]}])
def test_fill_mask(models_dir, options):
    texts = ["Hello [MASK] world.", "The [MASK] is [MASK] today, says the long sentence here."]
    got = served(models_dir, TINY_BERT_MLM, "fill-mask", pb.FillMaskInput(texts=texts, **options))
    expected = reference(models_dir, TINY_BERT_MLM, "fill-mask")(texts, **options)
    for result, want in zip(got.results, expected, strict=True):
        per_mask = want if isinstance(want[0], list) else [want]
        assert len(result.masks) == len(per_mask)
        for mask, candidates in zip(result.masks, per_mask):
            assert [(c.token, c.token_str, c.sequence) for c in mask.candidates] == [
                (c["token"], c["token_str"], c["sequence"]) for c in candidates
            ]
            np.testing.assert_allclose([c.score for c in mask.candidates], [c["score"] for c in candidates], atol=ATOL)


def test_fill_mask_rows_carry_only_the_mask_positions(models_dir):
    handler = _handler(models_dir, TINY_BERT_MLM, "fill-mask")
    prepared = handler.preprocess(pb.FillMaskInput(texts=["a [MASK] b [MASK] c"]))
    row = prepared.rows[0]
    assert list(row["input_ids"][row["positions"]]) == [handler.model.tokenizer.mask_token_id] * 2


def test_fill_mask_without_a_mask_token_is_refused(models_dir):
    with pytest.raises(InvalidArgument, match=r"item 1: No mask_token \(\[MASK\]\) found"):
        served(models_dir, TINY_BERT_MLM, "fill-mask", pb.FillMaskInput(texts=["a [MASK]", "no mask here"]))


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"multi_label": True},
        {"hypothesis_template": "This text is about {}."},
    ],
)
def test_zero_shot_classification(models_dir, options):
    labels = ["cinema", "politics", "sports", "food"]
    got = served(
        models_dir,
        TINY_BERT_NLI,
        "zero-shot-classification",
        pb.ZeroShotClassificationInput(sequences=TEXTS, candidate_labels=labels, **options),
    )
    expected = reference(models_dir, TINY_BERT_NLI, "zero-shot-classification")(
        TEXTS, candidate_labels=labels, **options
    )
    for result, want in zip(got.results, expected, strict=True):
        assert result.sequence == want["sequence"]
        assert [label.label for label in result.labels] == want["labels"]
        np.testing.assert_allclose([label.score for label in result.labels], want["scores"], atol=ATOL)


def test_zero_shot_batches_every_label_of_every_sequence_into_one_request(models_dir):
    handler = _handler(models_dir, TINY_BERT_NLI, "zero-shot-classification")
    prepared = handler.preprocess(pb.ZeroShotClassificationInput(sequences=TEXTS[:2], candidate_labels=["a", "b", "c"]))
    assert len(prepared.rows) == 6


@pytest.mark.parametrize(
    "input_msg, message",
    [
        (pb.ZeroShotClassificationInput(sequences=["x"]), "candidate_labels is empty"),
        (
            pb.ZeroShotClassificationInput(sequences=["x"], candidate_labels=["a"], hypothesis_template="no slot"),
            "has no {}",
        ),
    ],
)
def test_zero_shot_bad_options_are_refused(models_dir, input_msg, message):
    with pytest.raises(InvalidArgument, match=message):
        _handler(models_dir, TINY_BERT_NLI, "zero-shot-classification").preprocess(input_msg)


def test_zero_shot_needs_an_entailment_label(models_dir):
    handler = _handler(models_dir, TINY_BERT_SENTIMENT, "zero-shot-classification")
    with pytest.raises(InvalidArgument, match="none of its labels .* starts with 'entail'"):
        handler.preprocess(pb.ZeroShotClassificationInput(sequences=["x"], candidate_labels=["a"]))


@pytest.mark.parametrize("normalize", [False, True])
def test_feature_extraction(models_dir, normalize):
    got = served(
        models_dir,
        TINY_BERT_EMBEDDINGS,
        "feature-extraction",
        pb.FeatureExtractionInput(texts=TEXTS, normalize=normalize),
    )
    expected = reference(models_dir, TINY_BERT_EMBEDDINGS, "feature-extraction")(TEXTS)
    for result, want in zip(got.results, expected, strict=True):
        tokens = from_tensor(result.token_embeddings)
        np.testing.assert_allclose(tokens, np.array(want[0]), atol=ATOL)
        pooled = np.array(want[0]).mean(axis=0)
        if normalize:
            pooled /= np.linalg.norm(pooled)
        np.testing.assert_allclose(from_tensor(result.sentence_embedding), pooled, atol=ATOL)


def test_feature_extraction_truncation_cuts_long_texts_as_the_pipeline_does(models_dir):
    texts = [LONG_TEXT, TEXTS[1]]
    message = pb.FeatureExtractionInput(texts=texts, truncation=True)
    got = served(models_dir, TINY_BERT_EMBEDDINGS, "feature-extraction", message)
    expected = reference(models_dir, TINY_BERT_EMBEDDINGS, "feature-extraction")(texts, truncation=True)
    for result, want in zip(got.results, expected, strict=True):
        np.testing.assert_allclose(from_tensor(result.token_embeddings), np.array(want[0]), atol=ATOL)
    assert from_tensor(got.results[0].token_embeddings).shape[0] == 512


@pytest.mark.parametrize("table, queries", [(REPOSITORIES, REPOSITORY_QUERIES), (CITIES, CITY_QUERIES)])
def test_table_question_answering(models_dir, table, queries):
    got = served(models_dir, TINY_TAPAS, "table-question-answering", table_input(table, queries))
    expected = reference(models_dir, TINY_TAPAS, "table-question-answering")(table=table, query=queries)
    assert served_answers(got) == pipeline_answers(expected)
    assert any(cells for _, _, cells, _ in served_answers(got)), "the random model selects no cell: a weak check"


def test_table_queries_are_one_row_each_with_seven_token_types_per_token(models_dir):
    handler = _handler(models_dir, TINY_TAPAS, "table-question-answering")
    assert handler.output_names == ("logits", "logits_aggregation")
    prepared = handler.preprocess(table_input(REPOSITORIES, REPOSITORY_QUERIES[:3]))
    assert len(prepared.rows) == 3
    for row in prepared.rows:
        assert row["token_type_ids"].shape == (len(row["input_ids"]), 7)


def test_a_table_too_long_for_the_model_loses_rows_unless_asked_not_to(models_dir):
    rows = 150
    table = {"Name": [f"person {i}" for i in range(rows)], "Age": [str(20 + i % 50) for i in range(rows)]}
    query = "Who is the oldest?"
    handler = _handler(models_dir, TINY_TAPAS, "table-question-answering")
    (row,) = handler.preprocess(table_input(table, [query])).rows
    # Token types' third column is the row id: 0 for the header, then 1, 2, ... for the rows kept.
    assert len(row["input_ids"]) <= 512 and row["token_type_ids"][:, 2].max() < rows
    got = served(models_dir, TINY_TAPAS, "table-question-answering", table_input(table, [query]))
    expected = reference(models_dir, TINY_TAPAS, "table-question-answering")(table=table, query=query)
    assert served_answers(got) == pipeline_answers(expected)
    keep_rows = table_input(table, [query], truncation=tqa.TABLE_TRUNCATION_DO_NOT_TRUNCATE)
    with pytest.raises(InvalidArgument, match=r"item 0 has \d+ tokens, more than model .* takes \(512\)"):
        handler.preprocess(keep_rows)


def test_rows_longer_than_the_model_takes_are_refused(models_dir):
    handler = _handler(models_dir, TINY_BERT_EMBEDDINGS, "feature-extraction")
    with pytest.raises(InvalidArgument, match="item 1 has .* tokens, more than model .* takes \\(512\\)"):
        handler.preprocess(pb.FeatureExtractionInput(texts=["short", "word " * 600]))


def test_tasks_sharing_a_tokenizer_preprocess_concurrently(models_dir):
    """text- and zero-shot-classification of one model truncate differently, on one fast tokenizer object."""
    served = ForwardTasks.load(
        ModelSpec(name=TINY_BERT_NLI, path=str(models_dir / TINY_BERT_NLI), task="text-classification")
    )
    classify = served.handlers["text-classification"]
    zero_shot = served.handlers["zero-shot-classification"]
    texts = [f"{'many words ' * (i % 9)} sentence {i}" for i in range(200)]

    def preprocess(index: int) -> int:
        if index % 2:
            message = pb.ZeroShotClassificationInput(sequences=[texts[index]], candidate_labels=["a", "b"])
            return len(zero_shot.preprocess(message).rows)
        message = pb.TextClassificationInput(items=[pb.TextClassificationItem(text=texts[index])])
        return len(classify.preprocess(message).rows)

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(preprocess, range(200))) == [1, 2] * 100
