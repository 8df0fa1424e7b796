"""Extractive question answering by its definition, from a model's logits: what pipeserve's answers must equal.

transformers 5 has no QuestionAnsweringPipeline to compare with, so this is
the task written plainly, independently of tokenizer_service: per window
of the context, softmax the start and end logits over the context tokens
and the first token, score every span of context tokens start <= end <
start + max_answer_len by P(start)·P(end), and keep the best over all
windows (equal answers from several windows add up, as the 4.x pipeline
did). Spans map to characters by the tokens' own offsets (align_to_words
off).
"""

from __future__ import annotations

import torch


def reference(model, tokenizer, question, context, *, top_k=1, max_answer_len=15, max_seq_len=384, doc_stride=128):
    """Best spans as (text, start, end, score) and the no-answer score, from the logits of each window."""
    encoded = tokenizer(
        question,
        context,
        truncation="only_second",
        max_length=max_seq_len,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    found: dict[str, tuple[str, int, int, float]] = {}
    null_score = float("inf")
    for window in range(len(encoded["input_ids"])):
        inputs = {
            name: torch.tensor([encoded[name][window]]) for name in ("input_ids", "token_type_ids", "attention_mask")
        }
        with torch.inference_mode():
            output = model(**inputs)
        in_context = [i for i, sequence in enumerate(encoded.sequence_ids(window)) if sequence == 1]
        allowed = [0, *in_context]
        p_start = torch.zeros_like(output.start_logits[0])
        p_end = torch.zeros_like(output.end_logits[0])
        p_start[allowed] = output.start_logits[0][allowed].softmax(-1)
        p_end[allowed] = output.end_logits[0][allowed].softmax(-1)
        null_score = min(null_score, float(p_start[0] * p_end[0]))
        spans = sorted(
            (
                (float(p_start[s] * p_end[e]), s, e)
                for s in in_context
                for e in in_context
                if s <= e < s + max_answer_len
            ),
            reverse=True,
        )[:top_k]
        offsets = encoded["offset_mapping"][window]
        for score, s, e in spans:
            start, end = offsets[s][0], offsets[e][1]
            text = context[start:end]
            if text.lower() in found:
                kept = found[text.lower()]
                found[text.lower()] = (*kept[:3], kept[3] + score)
            else:
                found[text.lower()] = (text, start, end, score)
    return sorted(found.values(), key=lambda answer: answer[3], reverse=True)[:top_k], null_score
