"""Beam search through the real processes: the text equals tokenizer.decode(model.generate(..., num_beams=...)),
the sequences arrive whole when the search ends, and the batch keeps streaming meanwhile."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from polling import wait_for

from pipeserve.local_models import TINY_LLAMA
from pipeserve.queue.keys import CONSUMER_GROUP
from pipeserve.v1 import types_pb2

from .conftest import stream_request, unary_request
from .test_generation import collect, tokenize

FINISH = types_pb2.FinishReason
PROMPT = "def fibonacci(n):\n    if n < 2:"


def beam_reference(reference, prompt_ids: list[int], **options) -> list[list[int]]:
    """generate's sequences, best first, each up to and including its end-of-sequence token (generate pads them)."""
    import torch

    model, _ = reference
    with torch.inference_mode():
        output = model.generate(
            torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long), **options
        )
    eos = set(model.generation_config.eos_token_id)
    sequences = []
    for row in output[:, len(prompt_ids) :].tolist():
        ends = [position for position, token in enumerate(row) if token in eos]
        sequences.append(row[: ends[0] + 1] if ends else row)
    return sequences


@pytest.mark.parametrize(
    "options",
    [
        dict(num_beams=4, max_new_tokens=24),
        dict(num_beams=4, num_return_sequences=3, max_new_tokens=20, length_penalty=-0.5, early_stopping=True),
        dict(num_beams=3, num_return_sequences=2, max_new_tokens=20, no_repeat_ngram_size=2, min_new_tokens=12),
    ],
    ids=["4 beams", "best 3 of 4", "n-gram and minimum length"],
)
def test_beam_search_text_equals_generate(generation, models_api, reference, options):
    model, tokenizer = reference
    eos = set(model.generation_config.eos_token_id)
    expected = beam_reference(reference, tokenize(models_api, PROMPT), do_sample=False, **options)
    unary = generation.Generate(unary_request(prompt=PROMPT, **options), timeout=120)
    responses = list(generation.GenerateStream(stream_request(prompt=PROMPT, **options), timeout=120))
    texts, ids, finish, usage = collect(responses)
    count = options.get("num_return_sequences", 1)
    assert [list(c.token_ids) for c in unary.completions] == [ids[i] for i in range(count)] == expected
    for i, sequence in enumerate(expected):
        assert unary.completions[i].text == texts[i] == tokenizer.decode(sequence, skip_special_tokens=True)
        assert finish[i] == (FINISH.FINISH_REASON_EOS if sequence[-1] in eos else FINISH.FINISH_REASON_LENGTH)
    # Not token by token: each sequence arrives whole, in one message, when the search ends.
    assert len(responses) == count
    assert usage.completion_tokens == sum(len(sequence) for sequence in expected)


def test_a_stop_string_cuts_a_beam_sequence(generation, models_api, reference):
    _, tokenizer = reference
    (sequence,) = beam_reference(
        reference, tokenize(models_api, PROMPT), do_sample=False, num_beams=4, max_new_tokens=24
    )
    text = tokenizer.decode(sequence, skip_special_tokens=True)
    assert len(text) >= 4
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    reply = generation.Generate(unary_request(prompt=PROMPT, num_beams=4, max_new_tokens=24, stop=[stop]), timeout=120)
    assert reply.completions[0].text == text[: text.index(stop)]
    assert reply.completions[0].finish_reason == FINISH.FINISH_REASON_STOP


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(num_beams=9), "PIPESERVE_MAX_BEAMS"),
        (dict(num_beams=2, do_sample=True), "beam sampling is not served"),
        (dict(num_beams=2, num_return_sequences=3), "more than num_beams"),
        (dict(min_new_tokens=5, max_new_tokens=4), "min_new_tokens is 5"),
    ],
)
def test_what_beam_search_cannot_do_is_invalid_argument(generation, options, message):
    with pytest.raises(grpc.RpcError) as raised:
        generation.Generate(unary_request(prompt=PROMPT, **options), timeout=60)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in raised.value.details()


def test_a_greedy_stream_keeps_streaming_while_a_beam_search_runs(stack, generation, models_api, reference):
    # The end tokens are banned for all its tokens, so the search cannot end before its length limit.
    search = dict(num_beams=4, max_new_tokens=300, min_new_tokens=300)
    beam_done: list[float] = []
    beam_ids: dict = {}

    def beam_search():
        beam_ids.update(collect(generation.GenerateStream(stream_request(prompt=PROMPT, **search), timeout=300))[1])
        beam_done.append(time.monotonic())

    client = stack.redis()
    stream = stack.keys.request_stream(TINY_LLAMA)

    def picked_up() -> bool:
        # Entries leave the stream when acknowledged: every entry read, none waiting, means the worker has it.
        pending = client.xpending(stream, CONSUMER_GROUP)["pending"]
        return pending >= 1 and client.xlen(stream) == pending

    searching = threading.Thread(target=beam_search)
    searching.start()
    try:
        wait_for(picked_up, "the worker to pick the beam search up", timeout_s=60)
        arrivals = []
        for response in generation.GenerateStream(
            stream_request(prompt="x = ", max_new_tokens=48, ignore_eos=True), timeout=120
        ):
            arrivals.append((time.monotonic(), len(response.token_ids)))
    finally:
        searching.join(timeout=300)
        client.close()
    assert beam_done, "the beam search did not end"
    assert arrivals[-1][0] < beam_done[0], "the greedy stream waited for the beam search"
    assert len(arrivals) > 4, "the greedy tokens were not streamed in chunks while the search ran"
    prompt_ids = tokenize(models_api, PROMPT)
    expected = beam_reference(reference, prompt_ids, do_sample=False, **search)
    assert beam_ids[0] == expected[0]
