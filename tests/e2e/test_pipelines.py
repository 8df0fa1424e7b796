"""Forward-only pipeline tasks through the running services, equal to transformers.pipeline in one process.

One stack serves the small local BERTs (one per task) and the real
all-MiniLM-L6-v2 from a single model worker. Every request sends several
texts of different lengths, so rows of different lengths share a padded
forward on the worker.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from transformers import pipeline

from pipeserve.local_encoder_models import (
    TINY_BERT_EMBEDDINGS,
    TINY_BERT_MLM,
    TINY_BERT_NER,
    TINY_BERT_NLI,
    TINY_BERT_SENTIMENT,
    TINY_TAPAS,
)
from pipeserve.tensors import from_tensor
from pipeserve.v1 import models_pb2, models_pb2_grpc, pipelines_pb2_grpc, types_pb2
from pipeserve.v1 import pipelines_pb2 as pb

from .conftest import RunningStack, start_stack, stop_stack

MINILM = "all-minilm-l6-v2"
ATOL = 1e-5
TEXTS = [
    "I loved this film, the acting was superb!",
    "terrible",
    "John Smith moved from Paris to Berlin in 2019 and now works for the United Nations in Geneva.",
    "ok",
]


@pytest.fixture(scope="module")
def pipeline_stack(pipeline_models_file, redis_url, tmp_path_factory) -> Iterator[RunningStack]:
    running = start_stack(pipeline_models_file, redis_url, tmp_path_factory.mktemp("pipelines"))
    yield running
    assert stop_stack(running.process) == 0, f"serve-all did not shut down cleanly:\n{running.logs()}"


@pytest.fixture(scope="module")
def channel(pipeline_stack) -> Iterator[grpc.Channel]:
    with pipeline_stack.channel() as channel:
        yield channel


@pytest.fixture(scope="module")
def pipelines(channel) -> pipelines_pb2_grpc.PipelineServiceStub:
    return pipelines_pb2_grpc.PipelineServiceStub(channel)


@pytest.fixture(scope="module")
def reference(pipeline_models_file):
    models_dir = pipeline_models_file.parent
    return lambda task, name: pipeline(task, model=str(models_dir / name))


def run(stub, **fields) -> pb.PipelineResponse:
    return stub.Run(pb.PipelineRequest(**fields), timeout=60)


def assert_scores(got, expected) -> None:
    np.testing.assert_allclose(got, expected, atol=ATOL)


def test_text_classification_top_k_pairs_and_alias(pipelines, reference):
    items = [pb.TextClassificationItem(text=text) for text in TEXTS]
    items.append(pb.TextClassificationItem(text="The cat sat.", text_pair="A cat was sitting on the mat."))
    response = run(
        pipelines,
        model=TINY_BERT_SENTIMENT,
        task="sentiment-analysis",
        text_classification=pb.TextClassificationInput(
            items=items, top_k=0, function_to_apply=pb.CLASSIFICATION_FUNCTION_SIGMOID
        ),
    )
    assert response.task == "text-classification"
    inputs = [*TEXTS, {"text": "The cat sat.", "text_pair": "A cat was sitting on the mat."}]
    expected = reference("text-classification", TINY_BERT_SENTIMENT)(inputs, top_k=None, function_to_apply="sigmoid")
    for result, want in zip(response.text_classification.results, expected, strict=True):
        assert [label.label for label in result.labels] == [w["label"] for w in want]
        assert_scores([label.score for label in result.labels], [w["score"] for w in want])


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_token_classification_equals_the_pipeline(pipelines, reference, strategy):
    response = run(
        pipelines,
        model=TINY_BERT_NER,
        task="ner",
        token_classification=pb.TokenClassificationInput(
            texts=TEXTS, aggregation_strategy=pb.AggregationStrategy.Value(f"AGGREGATION_STRATEGY_{strategy.upper()}")
        ),
    )
    expected = reference("token-classification", TINY_BERT_NER)(TEXTS, aggregation_strategy=strategy)
    for result, want in zip(response.token_classification.results, expected, strict=True):
        assert [(e.label, e.word, e.start, e.end) for e in result.entities] == [
            (w.get("entity_group", w.get("entity")), w["word"], w["start"], w["end"]) for w in want
        ]
        assert_scores([e.score for e in result.entities], [w["score"] for w in want])


def test_long_texts_truncated_or_tagged_in_overlapping_windows(pipelines, reference):
    """truncation and stride: one long text becomes one cut row, or several window rows merged back."""
    long_text = " ".join(f"John Smith visited Paris on day {i} of the trip." for i in range(70))  # > 512 tokens
    items = [pb.TextClassificationItem(text=long_text), pb.TextClassificationItem(text="short")]
    classified = run(
        pipelines,
        model=TINY_BERT_SENTIMENT,
        text_classification=pb.TextClassificationInput(items=items, top_k=0, truncation=True),
    )
    expected = reference("text-classification", TINY_BERT_SENTIMENT)([long_text, "short"], top_k=None, truncation=True)
    for result, want in zip(classified.text_classification.results, expected, strict=True):
        assert [label.label for label in result.labels] == [w["label"] for w in want]
        assert_scores([label.score for label in result.labels], [w["score"] for w in want])

    tagged = run(
        pipelines,
        model=TINY_BERT_NER,
        token_classification=pb.TokenClassificationInput(
            texts=[long_text, TEXTS[2]], aggregation_strategy=pb.AGGREGATION_STRATEGY_SIMPLE, stride=64
        ),
    )
    expected = reference("token-classification", TINY_BERT_NER)(
        [long_text, TEXTS[2]], aggregation_strategy="simple", stride=64
    )
    for result, want in zip(tagged.token_classification.results, expected, strict=True):
        assert [(e.label, e.start, e.end) for e in result.entities] == [
            (w["entity_group"], w["start"], w["end"]) for w in want
        ]
        assert_scores([e.score for e in result.entities], [w["score"] for w in want])


def test_fill_mask_equals_the_pipeline(pipelines, reference):
    texts = ["Hello [MASK] world.", "The [MASK] is [MASK] today, and the rest of this sentence is longer."]
    response = run(pipelines, model=TINY_BERT_MLM, fill_mask=pb.FillMaskInput(texts=texts, top_k=3))
    expected = reference("fill-mask", TINY_BERT_MLM)(texts, top_k=3)
    for result, want in zip(response.fill_mask.results, expected, strict=True):
        per_mask = want if isinstance(want[0], list) else [want]
        for mask, candidates in zip(result.masks, per_mask, strict=True):
            assert [(c.token_str, c.sequence) for c in mask.candidates] == [
                (c["token_str"], c["sequence"]) for c in candidates
            ]
            assert_scores([c.score for c in mask.candidates], [c["score"] for c in candidates])


@pytest.mark.parametrize("multi_label", [False, True])
def test_zero_shot_classification_equals_the_pipeline(pipelines, reference, multi_label):
    labels = ["cinema", "politics", "sports"]
    response = run(
        pipelines,
        model=TINY_BERT_NLI,
        zero_shot_classification=pb.ZeroShotClassificationInput(
            sequences=TEXTS, candidate_labels=labels, multi_label=multi_label
        ),
    )
    expected = reference("zero-shot-classification", TINY_BERT_NLI)(
        TEXTS, candidate_labels=labels, multi_label=multi_label
    )
    for result, want in zip(response.zero_shot_classification.results, expected, strict=True):
        assert [label.label for label in result.labels] == want["labels"]
        assert_scores([label.score for label in result.labels], want["scores"])


def test_feature_extraction_packs_token_and_sentence_embeddings(pipelines, reference):
    response = run(pipelines, model=TINY_BERT_EMBEDDINGS, feature_extraction=pb.FeatureExtractionInput(texts=TEXTS))
    expected = reference("feature-extraction", TINY_BERT_EMBEDDINGS)(TEXTS)
    for result, want in zip(response.feature_extraction.results, expected, strict=True):
        assert result.token_embeddings.dtype == types_pb2.DATA_TYPE_FP32
        tokens = from_tensor(result.token_embeddings)
        assert_scores(tokens, np.array(want[0]))
        assert_scores(from_tensor(result.sentence_embedding), tokens.mean(axis=0))


def test_real_sentence_embeddings_put_similar_sentences_closer(pipelines):
    """all-MiniLM-L6-v2, its task taken from its config (no task in the models file or the request)."""
    sentences = [
        "A man is playing a guitar on stage.",
        "Someone performs music with a guitar.",
        "The stock market fell sharply on Monday.",
    ]
    response = run(
        pipelines, model=MINILM, feature_extraction=pb.FeatureExtractionInput(texts=sentences, normalize=True)
    )
    assert response.task == "feature-extraction"
    embeddings = np.stack([from_tensor(r.sentence_embedding) for r in response.feature_extraction.results])
    assert embeddings.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    similar, unrelated = embeddings[0] @ embeddings[1], embeddings[0] @ embeddings[2]
    assert similar > unrelated + 0.3, (similar, unrelated)


def test_concurrent_clients_get_their_own_answers(pipelines, reference):
    texts = [" ".join(["word"] * (1 + i % 7)) + f" number {i}" for i in range(24)]
    expected = reference("text-classification", TINY_BERT_SENTIMENT)(texts, top_k=None)

    def classify(text: str) -> pb.TextClassificationResult:
        request = pb.TextClassificationInput(items=[pb.TextClassificationItem(text=text)], top_k=0)
        return run(pipelines, model=TINY_BERT_SENTIMENT, text_classification=request).text_classification.results[0]

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(classify, texts))
    for result, want in zip(results, expected, strict=True):
        assert [label.label for label in result.labels] == [w["label"] for w in want]
        assert_scores([label.score for label in result.labels], [w["score"] for w in want])


def test_the_pipeline_command_prints_what_the_pipeline_returns(pipeline_stack, reference):
    """`pipeserve pipeline` as a user types it, its JSON against transformers.pipeline on the same model."""
    cli = str(Path(sys.executable).with_name("pipeserve"))
    completed = subprocess.run(
        [cli, "pipeline", TINY_BERT_SENTIMENT, TEXTS[0], "--task", "sentiment-analysis", TEXTS[1],
         "--options", '{"top_k": 0}', "--target", pipeline_stack.gateway],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    expected = reference("text-classification", TINY_BERT_SENTIMENT)(TEXTS[:2], top_k=None)
    for result, want in zip(json.loads(completed.stdout), expected, strict=True):
        assert [label["label"] for label in result["labels"]] == [w["label"] for w in want]
        assert_scores([label["score"] for label in result["labels"]], [w["score"] for w in want])

    completed = subprocess.run(
        [cli, "pipeline", TINY_BERT_MLM, "no mask", "--target", pipeline_stack.gateway],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert completed.returncode == 1
    assert completed.stderr.startswith("error: INVALID_ARGUMENT: fill-mask item 0: No mask_token")
    assert "Traceback" not in completed.stderr


def test_list_models_names_each_task(channel):
    models = models_pb2_grpc.ModelsServiceStub(channel).ListModels(models_pb2.ListModelsRequest(), timeout=30).models
    tasks = {model.name: model.task for model in models}
    assert (
        tasks.items()
        >= {
            TINY_BERT_SENTIMENT: "text-classification",
            TINY_BERT_NER: "token-classification",
            TINY_BERT_MLM: "fill-mask",
            TINY_BERT_NLI: "zero-shot-classification",
            TINY_BERT_EMBEDDINGS: "feature-extraction",
            TINY_TAPAS: "table-question-answering",
            MINILM: "feature-extraction",
        }.items()
    )


@pytest.mark.parametrize(
    "fields, code, message",
    [
        (
            {"model": TINY_BERT_MLM, "fill_mask": pb.FillMaskInput(texts=["a [MASK] b", "no mask here"])},
            grpc.StatusCode.INVALID_ARGUMENT,
            r"fill-mask item 1: No mask_token \(\[MASK\]\) found on the input",
        ),
        (
            {"model": TINY_BERT_NLI, "zero_shot_classification": pb.ZeroShotClassificationInput(sequences=["x"])},
            grpc.StatusCode.INVALID_ARGUMENT,
            "candidate_labels is empty",
        ),
        (
            {"model": TINY_BERT_MLM, "task": "summarise", "fill_mask": pb.FillMaskInput(texts=["[MASK]"])},
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown task 'summarise'; model 'tiny-bert-mlm' does: fill-mask",
        ),
        (
            {"model": TINY_BERT_MLM, "task": "ner", "token_classification": pb.TokenClassificationInput(texts=["x"])},
            grpc.StatusCode.INVALID_ARGUMENT,
            "model 'tiny-bert-mlm' cannot do 'token-classification'; its tasks: fill-mask",
        ),
        (
            {"model": TINY_BERT_SENTIMENT, "task": "zero-shot-classification",
             "zero_shot_classification": pb.ZeroShotClassificationInput(sequences=["x"], candidate_labels=["a"])},
            grpc.StatusCode.INVALID_ARGUMENT,
            "cannot do zero-shot-classification: none of its labels",
        ),
        (
            {"model": TINY_BERT_MLM, "feature_extraction": pb.FeatureExtractionInput(texts=["x"])},
            grpc.StatusCode.INVALID_ARGUMENT,
            "task 'fill-mask' takes the fill_mask input; the request sets feature_extraction",
        ),
        (
            {"model": "nope", "fill_mask": pb.FillMaskInput(texts=["[MASK]"])},
            grpc.StatusCode.NOT_FOUND,
            "unknown model 'nope'; served models: ",
        ),
    ],
)  # fmt: skip
def test_bad_input_is_refused_with_a_clear_message(pipelines, fields, code, message):
    with pytest.raises(grpc.RpcError) as raised:
        run(pipelines, **fields)
    assert raised.value.code() == code
    assert re.search(message, raised.value.details() or ""), raised.value.details()
