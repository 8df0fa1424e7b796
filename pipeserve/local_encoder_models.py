"""Small BERT (and TAPAS) checkpoints for the forward-only pipeline tasks, built locally like local_models' Llama.

Each is a real transformers checkpoint with random weights and the WordPiece
tokenizer ``local_models.train_wordpiece_tokenizer`` trains (BERT's own
scheme, so offsets, word ids and ``##`` sub-words behave as with a hub BERT). Weights are drawn wider than
BERT's default initialisation so that labels are well separated: with
near-uniform random scores a float rounding difference could reorder them.
"""

from __future__ import annotations

from pathlib import Path

from pipeserve.tasks import (
    FEATURE_EXTRACTION,
    FILL_MASK,
    QUESTION_ANSWERING,
    TABLE_QUESTION_ANSWERING,
    TEXT_CLASSIFICATION,
    TOKEN_CLASSIFICATION,
    ZERO_SHOT_CLASSIFICATION,
)

TINY_BERT_SENTIMENT = "tiny-bert-sentiment"
TINY_BERT_NER = "tiny-bert-ner"
TINY_BERT_MLM = "tiny-bert-mlm"
TINY_BERT_NLI = "tiny-bert-nli"
TINY_BERT_EMBEDDINGS = "tiny-bert-embeddings"
TINY_BERT_QA = "tiny-bert-qa"
TINY_TAPAS = "tiny-tapas"

SENTIMENT_LABELS = ["negative", "neutral", "positive"]
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
NLI_LABELS = ["contradiction", "neutral", "entailment"]
# WikiTableQuestions' aggregation operators, as google/tapas-base-finetuned-wtq names them (0: no aggregation).
TAPAS_AGGREGATION_LABELS = {0: "NONE", 1: "SUM", 2: "AVERAGE", 3: "COUNT"}


# Every tiny BERT-style test model: 2 layers, 64 wide, and weights drawn wider than BERT's 0.02 so that a
# random model's outputs (labels, spans, selected cells) vary from input to input.
TINY_ENCODER_SHAPE = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=128,
    max_position_embeddings=512,
    initializer_range=0.2,
)


def _build(out_dir: Path, model_class: str, *, labels: list[str] | None = None, seed: int = 0) -> Path:
    import torch
    import transformers
    from transformers import BertConfig

    from pipeserve.local_models import train_wordpiece_tokenizer

    tokenizer = train_wordpiece_tokenizer()
    extra = {}
    if labels is not None:
        extra = {"id2label": dict(enumerate(labels)), "label2id": {label: i for i, label in enumerate(labels)}}
    config = BertConfig(
        vocab_size=len(tokenizer),
        **TINY_ENCODER_SHAPE,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )
    torch.manual_seed(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    getattr(transformers, model_class)(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_tiny_bert_sentiment(out_dir: Path) -> Path:
    return _build(out_dir, "BertForSequenceClassification", labels=SENTIMENT_LABELS, seed=1)


def build_tiny_bert_ner(out_dir: Path) -> Path:
    return _build(out_dir, "BertForTokenClassification", labels=NER_LABELS, seed=2)


def build_tiny_bert_mlm(out_dir: Path) -> Path:
    return _build(out_dir, "BertForMaskedLM", seed=3)


def build_tiny_bert_nli(out_dir: Path) -> Path:
    return _build(out_dir, "BertForSequenceClassification", labels=NLI_LABELS, seed=4)


def build_tiny_bert_embeddings(out_dir: Path) -> Path:
    return _build(out_dir, "BertModel", seed=5)


def build_tiny_bert_qa(out_dir: Path) -> Path:
    return _build(out_dir, "BertForQuestionAnswering", seed=6)


def build_tiny_tapas(out_dir: Path) -> Path:
    """A 2-layer, 64-wide TapasForQuestionAnswering with WTQ's aggregation head.

    TAPAS's tokenizer is a slow one read from a vocab.txt: the trained
    WordPiece's vocabulary plus TAPAS's ``[EMPTY]`` (the token of an empty
    cell). The WordPiece trainer breaks ties in no fixed order, so the
    vocabulary, and with it the answers, differ a little from build to build.
    With this seed, in every build tried, the random model selected cells for
    the tests' tables (SUM for one, no aggregation for the other) and no
    cell's probability came within 1e-3 of the 0.5 threshold: far from the
    ~1e-6 by which a padded batch rounds differently.
    """
    import torch
    from transformers import TapasConfig, TapasForQuestionAnswering, TapasTokenizer

    from pipeserve.local_models import train_wordpiece_tokenizer

    vocabulary = sorted(train_wordpiece_tokenizer().get_vocab().items(), key=lambda entry: entry[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_file = out_dir / "vocab.txt"
    vocab_file.write_text("".join(f"{token}\n" for token, _ in vocabulary) + "[EMPTY]\n")
    tokenizer = TapasTokenizer(str(vocab_file))
    config = TapasConfig(
        vocab_size=len(tokenizer),
        **TINY_ENCODER_SHAPE,
        pad_token_id=tokenizer.pad_token_id,
        num_aggregation_labels=len(TAPAS_AGGREGATION_LABELS),
        aggregation_labels=TAPAS_AGGREGATION_LABELS,
        no_aggregation_label_index=0,
    )
    torch.manual_seed(2)
    TapasForQuestionAnswering(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


BUILDERS = {
    TINY_BERT_SENTIMENT: (TEXT_CLASSIFICATION, build_tiny_bert_sentiment),
    TINY_BERT_NER: (TOKEN_CLASSIFICATION, build_tiny_bert_ner),
    TINY_BERT_MLM: (FILL_MASK, build_tiny_bert_mlm),
    TINY_BERT_NLI: (ZERO_SHOT_CLASSIFICATION, build_tiny_bert_nli),
    TINY_BERT_EMBEDDINGS: (FEATURE_EXTRACTION, build_tiny_bert_embeddings),
    TINY_BERT_QA: (QUESTION_ANSWERING, build_tiny_bert_qa),
    TINY_TAPAS: (TABLE_QUESTION_ANSWERING, build_tiny_tapas),
}
