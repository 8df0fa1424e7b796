"""transformers' ContinuousBatchingManager behind our GenerationEngine interface (PIPESERVE_ENGINE=transformers-cb).

The manager keeps a paged KV cache (num_blocks × page_size tokens, fixed at
start-up, so it is its own memory budget) and runs the model in a thread of
its own; ``step`` hands it nothing but collects the tokens it streamed since
the last step, waiting briefly for them so the worker loop follows the
manager's pace instead of spinning on Redis round trips.

Greedy decoding only: the manager fixes do_sample for all its requests when
it is created and has neither per-request seeds nor a repetition penalty (nor
n-gram or minimum-length bans), so a request asking for those is refused with
INVALID_ARGUMENT naming the padded-kv engine, which has them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from transformers import ContinuousBatchingConfig, GenerationConfig

from model_service.engine.interface import (
    EngineEvent,
    FinishReason,
    GenerationRequest,
    RequestFailed,
    SequenceUpdate,
)
from pipeserve.errors import InvalidArgument

log = logging.getLogger(__name__)

RESULT_WAIT_S = 0.05
"""How long a step waits for the manager's next tokens before handing control back to the worker loop."""


def _final_length(request: GenerationRequest) -> int:
    return len(request.prompt_token_ids) + request.sampling.max_new_tokens


@dataclass
class _Stream:
    request: GenerationRequest
    sent: int = 0
    """Generated tokens already reported."""


class TransformersCBEngine:
    """GenerationEngine around ``model.init_continuous_batching`` with a small paged cache."""

    def __init__(self, model, *, max_batch_size: int, num_blocks: int, page_size: int, max_batch_tokens: int):
        self._max_batch_size = max_batch_size
        self._cache_tokens = num_blocks * page_size
        cache_config = ContinuousBatchingConfig(
            page_size=page_size,
            num_blocks=num_blocks,
            max_batch_tokens=max_batch_tokens,
            max_requests_per_batch=max_batch_size,
            allow_block_sharing=False,
        )
        # EOS comes with each request; an empty list here means "none" (None would mean the model's).
        generation_config = GenerationConfig(do_sample=False, eos_token_id=[], pad_token_id=0)
        self._manager = model.init_continuous_batching(
            generation_config=generation_config, continuous_batching_config=cache_config
        )
        self._start()
        self._streams: dict[str, _Stream] = {}
        self._pending: list[EngineEvent] = []

    @property
    def free_rows(self) -> int:
        """Rows under max_batch_size, or none once the requests in flight could fill the paged cache.

        Each request counts at its prompt plus max_new_tokens, so work the
        cache could not hold stays in the queue for another worker.
        """
        reserved = sum(_final_length(stream.request) for stream in self._streams.values())
        if reserved >= self._cache_tokens:
            return 0
        return self._max_batch_size - len(self._streams)

    @property
    def has_work(self) -> bool:
        return bool(self._streams or self._pending)

    @property
    def running_rows(self) -> int:
        """Requests handed to the manager and not finished (some may still wait inside it for cache blocks)."""
        return len(self._streams)

    @property
    def cache_width(self) -> int:
        """Tokens per running request (rounded up), so that running_rows × cache_width is the KV cache they hold.

        A paged cache has no padding: this is the mean, not the longest.
        """
        if not self._streams:
            return 0
        tokens = sum(len(stream.request.prompt_token_ids) + stream.sent for stream in self._streams.values())
        return -(-tokens // len(self._streams))

    def add(self, request: GenerationRequest) -> None:
        options = request.sampling
        if (
            options.do_sample
            or options.repetition_penalty != 1.0
            or options.num_return_sequences != 1
            or options.no_repeat_ngram_size
            or options.min_new_tokens
        ):
            raise InvalidArgument(
                "this worker runs transformers' continuous batching (PIPESERVE_ENGINE=transformers-cb), which does "
                "greedy decoding of one sequence only: drop do_sample, repetition_penalty, num_return_sequences, "
                "no_repeat_ngram_size and min_new_tokens, or serve the model with PIPESERVE_ENGINE=padded-kv"
            )
        if _final_length(request) > self._cache_tokens:
            raise InvalidArgument(
                f"the prompt ({len(request.prompt_token_ids)} tokens) plus max_new_tokens ({options.max_new_tokens}) "
                f"is more than this worker's whole paged KV cache ({self._cache_tokens} tokens, "
                "PIPESERVE_CB_NUM_BLOCKS x PIPESERVE_CB_PAGE_SIZE); shorten the prompt or lower max_new_tokens"
            )
        if not self._manager.is_running():
            log.warning("transformers' continuous batching loop had stopped; starting it again")
            self._start()
        added = self._manager.add_request(
            list(request.prompt_token_ids),
            request_id=request.request_id,
            max_new_tokens=options.max_new_tokens,
            streaming=True,
            eos_token_id=[] if options.ignore_eos else sorted(options.eos_token_ids),
        )
        if added is None:
            self._pending.append(RequestFailed(request.request_id, "transformers' continuous batching refused it"))
            return
        self._streams[request.request_id] = _Stream(request)

    def cancel(self, request_id: str, indexes: Iterable[int] | None = None) -> None:
        """The manager drops the request at its next iteration; the CANCELLED update goes out with our next step."""
        if request_id not in self._streams or (indexes is not None and 0 not in set(indexes)):
            return
        self._manager.cancel_request(request_id)
        del self._streams[request_id]
        self._pending.append(SequenceUpdate(request_id, 0, [], FinishReason.CANCELLED))

    def step(self) -> list[EngineEvent]:
        events, self._pending = self._pending, []
        wait_until = time.monotonic() + (RESULT_WAIT_S if self._streams and not events else 0.0)
        while self._streams:
            result = self._manager.get_result(timeout=max(0.0, wait_until - time.monotonic()))
            if result is None:
                break
            events.extend(self._update(result))
            wait_until = 0.0
        if self._streams and not self._manager.is_running():
            stopped = "transformers' continuous batching loop stopped"
            events.extend(RequestFailed(request_id, stopped) for request_id in self._streams)
            self._streams.clear()
        return events

    def _update(self, result) -> list[EngineEvent]:
        stream = self._streams.get(result.request_id)
        if stream is None:
            return []
        if result.error is not None:
            del self._streams[result.request_id]
            return [RequestFailed(result.request_id, f"transformers' continuous batching failed it: {result.error}")]
        tokens = list(result.generated_tokens[stream.sent :])
        stream.sent += len(tokens)
        reason = None
        if result.is_finished():
            del self._streams[result.request_id]
            options = stream.request.sampling
            eos = bool(tokens) and not options.ignore_eos and tokens[-1] in options.eos_token_ids
            reason = FinishReason.EOS if eos else FinishReason.LENGTH
        if not tokens and reason is None:
            return []
        return [SequenceUpdate(result.request_id, 0, tokens, reason)]

    def _start(self) -> None:
        """Start the manager's generation thread as a daemon, so no exit path of the worker waits for it.

        The manager makes a plain Thread, which inherits daemon-ness from the
        thread creating it: hence the short-lived daemon thread around start().
        """
        starter = threading.Thread(target=self._manager.start, name="cb-manager-start", daemon=True)
        starter.start()
        starter.join()

    def close(self) -> None:
        """Stop the manager's generation thread, finishing nothing more."""
        self._manager.stop(block=True, timeout=10, hard_stop=True)
