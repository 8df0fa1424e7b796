"""Resuming a request that a dead worker started, from what its reply stream already holds.

Each unfinished sequence continues as its own engine request: the prompt
plus the tokens already published is the new prompt, what is left of
max_new_tokens (and of min_new_tokens) the budget, and chunk numbers go on
after the last one published, so the reader sees one unbroken stream.
Greedy decoding then continues exactly as an uninterrupted run would. A beam
search publishes all its sequences in one chunk when it ends, so it is never
resumed half-way: it runs again from the start, or it is only acknowledged.

A sampled sequence continues with a fresh draw from the same distribution.
Replaying the random generator would need the shape of every draw the dead
worker made (a request's rows leave the batch as they finish, and devices
draw differently), so with a seed the continuation is made reproducible
instead: its seed derives from the request's seed, the sequence index and
the number of tokens already drawn.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from model_service.engine.interface import GenerationRequest
from pipeserve.internal.v1 import queue_pb2

ENGINE_ID_SEPARATOR = "/"
"""Engine request ids of resumed sequences are ``<request id>/<index>``; request ids hold no "/"."""


@dataclass
class PublishedReply:
    """The resume point: what a request's reply stream holds so far."""

    next_sequence_number: int = 0
    tokens: dict[int, list[int]] = field(default_factory=dict)
    finished: set[int] = field(default_factory=set)
    failed: bool = False
    """An error chunk already ended the request."""

    @classmethod
    def from_chunks(cls, chunks: Iterable[queue_pb2.ReplyChunk]) -> PublishedReply:
        reply = cls()
        for chunk in chunks:
            if chunk.sequence_number < reply.next_sequence_number:
                continue  # published twice (a retried publish); readers drop it too
            reply.next_sequence_number = chunk.sequence_number + 1
            for delta in chunk.deltas:
                reply.tokens.setdefault(delta.index, []).extend(delta.token_ids)
                if delta.finish_reason:
                    reply.finished.add(delta.index)
            reply.failed = reply.failed or chunk.HasField("error")
        return reply

    @property
    def started(self) -> bool:
        return self.next_sequence_number > 0

    def unfinished(self, sequences: int) -> list[int]:
        """Indexes still to generate; none once the request failed."""
        if self.failed:
            return []
        return [index for index in range(sequences) if index not in self.finished]


def continuation_requests(
    request: GenerationRequest, published: PublishedReply, *, encoder_decoder: bool = False
) -> dict[str, tuple[int, GenerationRequest]]:
    """Engine id -> (sequence index, engine request) for every unfinished sequence of a resumed request.

    For an encoder-decoder model the prompt stays the encoder's input and the
    tokens already published go to the decoder (``decoder_prompt_token_ids``).
    """
    sampling = request.sampling
    requests = {}
    for index in published.unfinished(sampling.num_return_sequences):
        done = published.tokens.get(index, [])
        seed = sampling.seed
        if sampling.do_sample and seed is not None:
            seed = continuation_seed(seed, index, len(done))
        options = dataclasses.replace(
            sampling,
            max_new_tokens=sampling.max_new_tokens - len(done),
            min_new_tokens=max(0, sampling.min_new_tokens - len(done)),
            num_return_sequences=1,
            seed=seed,
        )
        engine_id = f"{request.request_id}{ENGINE_ID_SEPARATOR}{index}"
        if encoder_decoder:
            continuation = GenerationRequest(
                engine_id, request.prompt_token_ids, options, decoder_prompt_token_ids=done
            )
        else:
            continuation = GenerationRequest(engine_id, [*request.prompt_token_ids, *done], options)
        requests[engine_id] = (index, continuation)
    return requests


def continuation_seed(seed: int, index: int, drawn: int) -> int:
    """A 64-bit seed for sequence ``index`` resumed after ``drawn`` tokens (stable across processes)."""
    digest = hashlib.blake2b(f"{seed}/{index}/{drawn}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")
