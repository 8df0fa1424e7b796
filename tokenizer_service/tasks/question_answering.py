"""question-answering: transformers 4.x's QuestionAnsweringPipeline, ported (transformers 5 dropped it).

Preprocess cuts each (question, context) pair into windows of ``max_seq_len``
tokens that overlap by ``doc_stride`` (the tokenizer's overflowing tokens;
only the context is truncated), and every window of every item becomes one
row of the request's single forward. Postprocess is the pipeline's, step for
step: per window, mask what cannot be an answer, softmax the start and end
logits, score every span up to ``max_answer_len`` tokens, map the best ones
to characters of the original context (widened to whole words unless
``align_to_words`` is false), add up the scores of equal answers found in
several windows, and keep the ``top_k`` best. Only the fast-tokenizer path
is ported: offsets and word ids need a tokenizers-backed tokenizer.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from pipeserve.errors import InvalidArgument
from pipeserve.tasks import QUESTION_ANSWERING
from pipeserve.v1 import question_answering_pb2 as qa_pb2
from tokenizer_service.tasks.forward import ForwardModel, ForwardTask, Prepared, Row, RowOutputs

DEFAULT_TOP_K = 1
DEFAULT_MAX_ANSWER_LEN = 15
MAX_SEQ_LEN_CAP = 384
DOC_STRIDE_CAP = 128
MIN_NULL_SCORE = 1000000.0
"""The pipeline's starting value for the no-answer score: large, so the first window's score replaces it."""


@dataclass(frozen=True)
class _Options:
    top_k: int
    max_answer_len: int
    max_seq_len: int
    doc_stride: int
    handle_impossible_answer: bool
    align_to_words: bool


@dataclass(frozen=True)
class _Item:
    """What postprocess needs of one (question, context) pair besides the model outputs."""

    context: str
    windows: list
    """tokenizers.Encoding per window: its offsets and word ids map tokens back to the context."""
    p_masks: list[np.ndarray]
    """Per window, 1 where a token cannot be part of an answer (question, special tokens), as the pipeline builds it."""


class QuestionAnswering(ForwardTask):
    task = QUESTION_ANSWERING
    input_field = "question_answering"
    output_names = ("start_logits", "end_logits")
    token_outputs = ("start_logits", "end_logits")

    def __init__(self, model: ForwardModel):
        super().__init__(model)
        tokenizer = model.tokenizer
        if not tokenizer.is_fast:
            raise ValueError(f"question-answering needs a fast (tokenizers-backed) tokenizer; {model.name!r} has none")
        self._question_first = tokenizer.padding_side == "right"
        self._input_names = [name for name in tokenizer.model_input_names if name != "special_tokens_mask"]
        # Windowed tokenization sets the backend tokenizer's truncation (max_length, stride) for the call: one
        # call at a time, or concurrent requests would change it under each other ("Already borrowed").
        self._tokenize_lock = threading.Lock()

    def preprocess(self, input_msg: qa_pb2.QuestionAnsweringInput) -> Prepared:
        options = self._options(input_msg)
        if not input_msg.items:
            raise InvalidArgument("question_answering.items is empty; send at least one question with its context")
        rows: list[Row] = []
        items: list[_Item] = []
        for position, pair in enumerate(input_msg.items):
            for field in ("question", "context"):
                if not getattr(pair, field).strip():
                    raise InvalidArgument(
                        f"question_answering.items[{position}].{field} is empty; the answer is a span of the "
                        "context, so every item needs a question and a non-empty context"
                    )
            item, item_rows = self._windows(pair, options, position)
            items.append(item)
            rows.extend(item_rows)
        return Prepared(rows, (options, items))

    def postprocess(self, input_msg, state, outputs: list[RowOutputs]) -> qa_pb2.QuestionAnsweringOutput:
        options, items = state
        results = []
        row = 0
        for item in items:
            windows = outputs[row : row + len(item.windows)]
            row += len(item.windows)
            answers = self._answers(item, windows, options)
            results.append(
                qa_pb2.QuestionAnsweringResult(answers=[qa_pb2.QuestionAnsweringAnswer(**a) for a in answers])
            )
        return qa_pb2.QuestionAnsweringOutput(results=results)

    def _options(self, msg: qa_pb2.QuestionAnsweringInput) -> _Options:
        """The pipeline's defaults and checks (_sanitize_parameters, preprocess)."""
        top_k = msg.top_k if msg.HasField("top_k") else DEFAULT_TOP_K
        if top_k < 1:
            raise InvalidArgument(f"top_k must be at least 1, got {top_k}")
        max_answer_len = msg.max_answer_len if msg.HasField("max_answer_len") else DEFAULT_MAX_ANSWER_LEN
        if max_answer_len < 1:
            raise InvalidArgument(f"max_answer_len must be at least 1, got {max_answer_len}")
        max_seq_len = (
            msg.max_seq_len
            if msg.HasField("max_seq_len")
            else min(self.model.tokenizer.model_max_length, MAX_SEQ_LEN_CAP)
        )
        limit = self.model.context_length
        if limit is not None and max_seq_len > limit:
            raise InvalidArgument(f"max_seq_len ({max_seq_len}) is more than model {self.model.name!r} takes ({limit})")
        doc_stride = msg.doc_stride if msg.HasField("doc_stride") else min(max_seq_len // 2, DOC_STRIDE_CAP)
        if doc_stride > max_seq_len:
            raise InvalidArgument(f"doc_stride ({doc_stride}) must not be larger than max_seq_len ({max_seq_len})")
        return _Options(
            top_k=top_k,
            max_answer_len=max_answer_len,
            max_seq_len=max_seq_len,
            doc_stride=doc_stride,
            handle_impossible_answer=msg.handle_impossible_answer,
            align_to_words=msg.align_to_words if msg.HasField("align_to_words") else True,
        )

    def _windows(self, pair: qa_pb2.QuestionAnsweringItem, options: _Options, position: int) -> tuple[_Item, list[Row]]:
        tokenizer = self.model.tokenizer
        first, second = (pair.question, pair.context) if self._question_first else (pair.context, pair.question)
        try:
            with self._tokenize_lock:
                encoded = tokenizer(
                    text=first,
                    text_pair=second,
                    truncation="only_second" if self._question_first else "only_first",
                    max_length=options.max_seq_len,
                    stride=options.doc_stride,
                    return_token_type_ids=True,
                    return_overflowing_tokens=True,
                    return_offsets_mapping=True,
                )
        except Exception as exc:  # tokenizers reports impossible windowing as a bare Exception
            raise InvalidArgument(
                f"question_answering.items[{position}] cannot be cut into windows of max_seq_len="
                f"{options.max_seq_len} tokens with doc_stride={options.doc_stride} ({exc}); the question must "
                "leave room for the context: shorten the question, raise max_seq_len or lower doc_stride"
            ) from exc
        windows = encoded.encodings
        rows, p_masks = [], []
        for index, window in enumerate(windows):
            input_ids = np.asarray(encoded["input_ids"][index], dtype=np.int64)
            # 1 for tokens that cannot be in the answer: everything but the context (the pipeline's own quirk:
            # with the context first, nothing is masked), and never the CLS token (it stands for "no answer").
            p_mask = np.asarray(
                [int(sequence != 1) if self._question_first else 0 for sequence in window.sequence_ids],
                dtype=np.int64,
            )
            if tokenizer.cls_token_id is not None:
                p_mask[input_ids == tokenizer.cls_token_id] = 0
            p_masks.append(p_mask)
            rows.append({name: np.asarray(encoded[name][index], dtype=np.int64) for name in self._input_names})
        return _Item(pair.context, windows, p_masks), rows

    def _answers(self, item: _Item, windows: list[RowOutputs], options: _Options) -> list[dict]:
        min_null_score = MIN_NULL_SCORE
        answers: list[dict] = []
        sequence_index = 1 if self._question_first else 0
        for window, p_mask, output in zip(item.windows, item.p_masks, windows):
            starts, ends, scores, min_null_score = select_starts_ends(
                output["start_logits"][None],
                output["end_logits"][None],
                p_mask[None],
                np.ones((1, len(p_mask)), dtype=np.int64),
                min_null_score,
                options.top_k,
                options.handle_impossible_answer,
                options.max_answer_len,
            )
            for start, end, score in zip(starts, ends, scores):
                first, last = _char_span(window, int(start), int(end), sequence_index, options.align_to_words)
                text = item.context[first:last]
                same = next((a for a in answers if a["answer"].lower() == text.lower()), None)
                if same is not None:
                    same["score"] += score.item()
                else:
                    answers.append({"score": score.item(), "start": first, "end": last, "answer": text})
        if options.handle_impossible_answer:
            answers.append({"score": min_null_score, "start": 0, "end": 0, "answer": ""})
        return sorted(answers, key=lambda answer: answer["score"], reverse=True)[: options.top_k]


def select_starts_ends(
    start: np.ndarray,
    end: np.ndarray,
    p_mask: np.ndarray,
    attention_mask: np.ndarray,
    min_null_score: float,
    top_k: int,
    handle_impossible_answer: bool,
    max_answer_len: int,
):
    """One window's best spans ([1, tokens] arrays in), and the no-answer score so far; the pipeline's arithmetic."""
    desired = np.abs(p_mask - 1) & attention_mask
    undesired = desired == 0
    start = np.where(undesired, -10000.0, start)
    end = np.where(undesired, -10000.0, end)
    start = np.exp(start - start.max(axis=-1, keepdims=True))
    start = start / start.sum()
    end = np.exp(end - end.max(axis=-1, keepdims=True))
    end = end / end.sum()
    if handle_impossible_answer:
        min_null_score = min(min_null_score, (start[0, 0] * end[0, 0]).item())
    # The first token stands for "no answer", never for a span.
    start[0, 0] = end[0, 0] = 0.0
    starts, ends, scores = decode_spans(start, end, top_k, max_answer_len, desired)
    return starts, ends, scores, min_null_score


def decode_spans(start: np.ndarray, end: np.ndarray, top_k: int, max_answer_len: int, desired: np.ndarray):
    """The top_k (start, end) pairs by P(start)·P(end), with start <= end < start + max_answer_len.

    Spans touching an undesired token are dropped after the top_k are taken,
    so fewer than top_k may come back, as in the pipeline.
    """
    outer = np.matmul(start[:, :, None], end[:, None, :])
    candidates = np.tril(np.triu(outer), max_answer_len - 1)
    flat = candidates.flatten()
    if top_k == 1:
        best = [np.argmax(flat)]
    elif len(flat) < top_k:
        best = np.argsort(-flat)
    else:
        partition = np.argpartition(-flat, top_k)[0:top_k]
        best = partition[np.argsort(-flat[partition])]
    starts, ends = np.unravel_index(best, candidates.shape)[1:]
    # ``nonzero()`` of a [1, tokens] mask also lists row 0, so token 0 always counts as desired (the pipeline's way).
    allowed = desired.nonzero()
    keep = np.isin(starts, allowed) & np.isin(ends, allowed)
    starts, ends = starts[keep], ends[keep]
    return starts, ends, candidates[0, starts, ends]


def _char_span(window, start: int, end: int, sequence_index: int, align_to_words: bool) -> tuple[int, int]:
    """Character offsets in the context of tokens start..end: their whole words, or the tokens' own offsets."""
    if align_to_words:
        start_word, end_word = window.token_to_word(start), window.token_to_word(end)
        try:
            return (
                window.word_to_chars(start_word, sequence_index=sequence_index)[0],
                window.word_to_chars(end_word, sequence_index=sequence_index)[1],
            )
        except TypeError:
            # A special token has no word (token_to_word gives None): keep to the token offsets.
            pass
    return window.offsets[start][0], window.offsets[end][1]
