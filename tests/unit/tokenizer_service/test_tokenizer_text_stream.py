"""stream_text with fake reply chunks: text, token ids, finish reasons, stop strings, usage, errors."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import grpc
import pytest
from detokenizer_samples import SAMPLE_TEXTS

from pipeserve.errors import InvalidArgument, PipeserveError, StatusError
from pipeserve.internal.v1 import queue_pb2, tokenizer_pb2
from pipeserve.v1 import types_pb2
from tokenizer_service.detokenizer import DecodeTraits
from tokenizer_service.text_stream import stream_text

FINISH = types_pb2.FinishReason


class FakeReplies:
    """Reply chunks as a worker would publish them; records how far the reader read and what it cancelled."""

    def __init__(self, chunks: list[queue_pb2.ReplyChunk]):
        self._chunks = chunks
        self.read = 0
        self.cancelled: list[str] = []

    async def chunks(self) -> AsyncIterator[queue_pb2.ReplyChunk]:
        for chunk in self._chunks:
            self.read += 1
            yield chunk

    async def cancel(self, index: str) -> None:
        self.cancelled.append(index)


def chunk(*deltas: queue_pb2.SequenceDelta) -> queue_pb2.ReplyChunk:
    return queue_pb2.ReplyChunk(deltas=deltas)


def delta(index: int, token_ids, finish_reason=FINISH.FINISH_REASON_UNSPECIFIED) -> queue_pb2.SequenceDelta:
    return queue_pb2.SequenceDelta(index=index, token_ids=token_ids, finish_reason=finish_reason)


def chunked(rng: random.Random, ids: list[int], index: int = 0, finish=FINISH.FINISH_REASON_LENGTH):
    """ids split into random chunk sizes (0 included), the last carrying the finish reason."""
    chunks, position = [], 0
    while position < len(ids):
        size = rng.randint(0, 6)
        chunks.append(chunk(delta(index, ids[position : position + size])))
        position += size
    chunks.append(chunk(delta(index, [], finish)))
    return chunks


async def run(tokenizer, prompt_ids, options, chunks) -> tuple[list[tokenizer_pb2.StreamTextResponse], FakeReplies]:
    replies = FakeReplies(chunks)
    responses = [
        response
        async for response in stream_text(
            tokenizer, prompt_ids, options, replies.chunks(), replies.cancel, traits=DecodeTraits.of(tokenizer)
        )
    ]
    return responses, replies


def expected_text(tokenizer, prompt, generated, skip_special_tokens=True) -> str:
    full = tokenizer.decode(prompt + generated, skip_special_tokens=skip_special_tokens)
    return full[len(tokenizer.decode(prompt, skip_special_tokens=skip_special_tokens)) :]


def joined(responses, index=0) -> tuple[str, list[int]]:
    mine = [r for r in responses if r.index == index]
    return "".join(r.text for r in mine), [t for r in mine for t in r.token_ids]


async def test_randomly_chunked_streams_give_the_full_decode(any_tokenizer):
    tokenizer = any_tokenizer
    rng = random.Random(99)
    options = tokenizer_pb2.DecodeOptions(skip_special_tokens=True, num_sequences=1)
    for _ in range(60):
        prompt = tokenizer.encode(rng.choice(SAMPLE_TEXTS)[: rng.randint(1, 10)])
        generated = tokenizer.encode("".join(rng.sample(SAMPLE_TEXTS, 3)), add_special_tokens=False)
        responses, _ = await run(tokenizer, prompt, options, chunked(rng, generated))
        text, ids = joined(responses)
        assert text == expected_text(tokenizer, prompt, generated)
        assert ids == generated
        assert not any("\ufffd" in r.text for r in responses)
        assert [r.finish_reason for r in responses][-1] == FINISH.FINISH_REASON_LENGTH
        assert [r.HasField("usage") for r in responses] == [False] * (len(responses) - 1) + [True]
        assert responses[-1].usage == types_pb2.Usage(prompt_tokens=len(prompt), completion_tokens=len(generated))


async def test_return_full_text_starts_with_the_decoded_prompt(tiny_llama_tokenizer):
    tokenizer = tiny_llama_tokenizer
    prompt = tokenizer.encode("def main():")
    generated = tokenizer.encode("\n    return 0\n", add_special_tokens=False)
    options = tokenizer_pb2.DecodeOptions(skip_special_tokens=True, return_full_text=True, num_sequences=2)
    chunks = [
        chunk(delta(0, generated[:2]), delta(1, generated[:1])),
        chunk(delta(0, generated[2:], FINISH.FINISH_REASON_EOS), delta(1, generated[1:], FINISH.FINISH_REASON_LENGTH)),
    ]
    responses, _ = await run(tokenizer, prompt, options, chunks)
    for index in (0, 1):
        first = next(r for r in responses if r.index == index)
        assert first.text.startswith("def main():")
        assert joined(responses, index)[0] == "def main():" + expected_text(tokenizer, prompt, generated)


async def test_stop_string_straddling_chunks_cuts_text_counts_tokens_and_cancels(tiny_llama_tokenizer):
    tokenizer = tiny_llama_tokenizer
    prompt = tokenizer.encode("def f():")
    generated = tokenizer.encode("\n    x = '你好 🙂 world'\n    return x\n", add_special_tokens=False)
    full = expected_text(tokenizer, prompt, generated)
    stop = "🙂 wo"
    # The token whose text completes the stop string is the last one consumed.
    completing = next(
        k for k in range(1, len(generated) + 1) if stop in expected_text(tokenizer, prompt, generated[:k])
    )
    rng = random.Random(5)
    for _ in range(20):
        options = tokenizer_pb2.DecodeOptions(skip_special_tokens=True, stop=["NEVER", stop], num_sequences=1)
        responses, replies = await run(tokenizer, prompt, options, chunked(rng, generated))
        text, ids = joined(responses)
        assert text == full[: full.index(stop)]
        assert ids == generated[:completing]
        assert responses[-1].finish_reason == FINISH.FINISH_REASON_STOP
        assert responses[-1].usage.completion_tokens == completing
        assert replies.cancelled == ["0"]


async def test_one_sequence_stops_the_others_go_on(tiny_llama_tokenizer):
    tokenizer = tiny_llama_tokenizer
    prompt = tokenizer.encode("x =")
    stopping = tokenizer.encode(" 1\nSTOP here", add_special_tokens=False)
    going = tokenizer.encode(" 2 + 3", add_special_tokens=False)
    options = tokenizer_pb2.DecodeOptions(skip_special_tokens=True, stop=["STOP"], num_sequences=2)
    chunks = [
        chunk(delta(0, stopping), delta(1, going[:1])),
        chunk(delta(0, [5, 6, 7]), delta(1, going[1:])),  # the worker has not seen the cancel flag yet
        chunk(delta(1, [], FINISH.FINISH_REASON_EOS)),
        chunk(delta(0, [8])),  # never read: every sequence has finished
    ]
    responses, replies = await run(tokenizer, prompt, options, chunks)
    assert replies.cancelled == ["0"] and replies.read == 3
    assert joined(responses, 0)[0] == " 1\n"
    assert joined(responses, 1) == (" 2 + 3", going)
    finishes = {r.index: r.finish_reason for r in responses if r.finish_reason}
    assert finishes == {0: FINISH.FINISH_REASON_STOP, 1: FINISH.FINISH_REASON_EOS}
    completing = len(tokenizer.encode(" 1\nSTOP", add_special_tokens=False))
    assert responses[-1].index == 1
    assert responses[-1].usage == types_pb2.Usage(prompt_tokens=len(prompt), completion_tokens=completing + len(going))


async def test_a_beam_search_reply_of_whole_sequences_in_one_chunk_streams_as_token_by_token(tiny_llama_tokenizer):
    """A beam search's sequences arrive whole, together, each with its finish reason; stop strings still cut them."""
    tokenizer = tiny_llama_tokenizer
    prompt = tokenizer.encode("x =")
    sequences = [
        tokenizer.encode(" 1\nSTOP here", add_special_tokens=False) + [tokenizer.eos_token_id],
        tokenizer.encode(" 2 + 3", add_special_tokens=False) + [tokenizer.eos_token_id],
        tokenizer.encode(" 4 # 你好 STO", add_special_tokens=False),
    ]
    reasons = [FINISH.FINISH_REASON_EOS, FINISH.FINISH_REASON_EOS, FINISH.FINISH_REASON_LENGTH]
    options = tokenizer_pb2.DecodeOptions(skip_special_tokens=True, stop=["STOP"], num_sequences=3)
    whole = [chunk(*(delta(index, ids, reason) for index, (ids, reason) in enumerate(zip(sequences, reasons))))]
    by_token = [
        chunk(delta(index, [token], reason if position == len(ids) - 1 else FINISH.FINISH_REASON_UNSPECIFIED))
        for index, (ids, reason) in enumerate(zip(sequences, reasons))
        for position, token in enumerate(ids)
    ]
    (at_once, replies), (one_by_one, _) = [await run(tokenizer, prompt, options, c) for c in (whole, by_token)]
    for index in range(3):
        assert joined(at_once, index) == joined(one_by_one, index)
    assert joined(at_once, 0)[0] == " 1\n" and joined(at_once, 2)[0] == " 4 # 你好 STO"
    finishes = {r.index: r.finish_reason for r in at_once if r.finish_reason}
    assert finishes == {0: FINISH.FINISH_REASON_STOP, 1: FINISH.FINISH_REASON_EOS, 2: FINISH.FINISH_REASON_LENGTH}
    assert replies.cancelled == ["0"]
    assert at_once[-1].usage == one_by_one[-1].usage


async def test_worker_finish_reasons_pass_through_and_eos_token_is_kept(tiny_llama_tokenizer):
    tokenizer = tiny_llama_tokenizer
    eos = tokenizer.eos_token_id
    words = tokenizer.encode(" ok", add_special_tokens=False)
    options = tokenizer_pb2.DecodeOptions(skip_special_tokens=True, num_sequences=2)
    chunks = [chunk(delta(0, [*words, eos], FINISH.FINISH_REASON_EOS), delta(1, [], FINISH.FINISH_REASON_CANCELLED))]
    responses, _ = await run(tokenizer, [], options, chunks)
    assert [(r.index, r.text, list(r.token_ids), r.finish_reason) for r in responses] == [
        (0, " ok", [*words, eos], FINISH.FINISH_REASON_EOS),
        (1, "", [], FINISH.FINISH_REASON_CANCELLED),
    ]
    # With special tokens kept, the EOS token's text is part of the output.
    kept = tokenizer_pb2.DecodeOptions(skip_special_tokens=False, num_sequences=1)
    responses, _ = await run(tokenizer, [], kept, [chunk(delta(0, [*words, eos], FINISH.FINISH_REASON_EOS))])
    assert joined(responses)[0] == " ok<|im_end|>"


async def test_incomplete_character_at_the_end_is_released_as_the_full_decode_has_it(tiny_llama_tokenizer):
    tokenizer = tiny_llama_tokenizer
    emoji = tokenizer.encode("🙂", add_special_tokens=False)
    generated = tokenizer.encode(" a", add_special_tokens=False) + emoji[:1]
    options = tokenizer_pb2.DecodeOptions(skip_special_tokens=True, num_sequences=1)
    responses, _ = await run(
        tokenizer, [], options, [chunk(delta(0, generated)), chunk(delta(0, [], FINISH.FINISH_REASON_LENGTH))]
    )
    assert [r.text for r in responses] == [" a", "\ufffd"]
    assert list(responses[0].token_ids) == generated and not responses[1].token_ids


async def test_stop_string_held_back_until_the_end_is_still_found(tiny_llama_tokenizer):
    """A stop string completed only when the detokenizer releases its held bytes at finish."""
    tokenizer = tiny_llama_tokenizer
    emoji = tokenizer.encode("🙂", add_special_tokens=False)
    generated = tokenizer.encode(" a", add_special_tokens=False) + emoji[:1]
    options = tokenizer_pb2.DecodeOptions(skip_special_tokens=True, stop=["a\ufffd"], num_sequences=1)
    responses, replies = await run(tokenizer, [], options, [chunk(delta(0, generated, FINISH.FINISH_REASON_LENGTH))])
    assert joined(responses)[0] == " " and responses[-1].finish_reason == FINISH.FINISH_REASON_STOP
    assert replies.cancelled == ["0"]


async def test_error_chunk_ends_the_stream_with_its_status(tiny_llama_tokenizer):
    options = tokenizer_pb2.DecodeOptions(skip_special_tokens=True, num_sequences=1)
    chunks = [
        chunk(delta(0, [100, 101])),
        queue_pb2.ReplyChunk(
            error=queue_pb2.ReplyError(code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message="KV cache full")
        ),
    ]
    received = []
    with pytest.raises(StatusError) as raised:
        replies = FakeReplies(chunks)
        async for response in stream_text(tiny_llama_tokenizer, [], options, replies.chunks(), replies.cancel):
            received.append(response)
    assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and raised.value.message == "KV cache full"
    assert [list(r.token_ids) for r in received] == [[100, 101]]


async def test_reply_for_an_unknown_sequence_or_an_early_end_is_an_internal_error(tiny_llama_tokenizer):
    options = tokenizer_pb2.DecodeOptions(skip_special_tokens=True, num_sequences=1)
    with pytest.raises(PipeserveError, match="sequence 3") as raised:
        await run(tiny_llama_tokenizer, [], options, [chunk(delta(3, [1]))])
    assert raised.value.code == grpc.StatusCode.INTERNAL
    with pytest.raises(PipeserveError, match="unfinished"):
        await run(tiny_llama_tokenizer, [], options, [chunk(delta(0, [100]))])


async def test_empty_stop_string_from_the_caller_is_an_invalid_argument(tiny_llama_tokenizer):
    options = tokenizer_pb2.DecodeOptions(skip_special_tokens=True, stop=["x", ""], num_sequences=1)
    with pytest.raises(InvalidArgument, match="stop"):
        await run(tiny_llama_tokenizer, [], options, [])
