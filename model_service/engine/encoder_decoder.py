"""Generation for encoder-decoder models (T5, BART, Marian...): cohorts of requests decoded side by side.

The decoder-only batcher lets each row sit at its own position in one
padded batch. An encoder-decoder decoder cannot: T5's relative position
bias and BART's learned positions are computed once per forward from the
cache length, for every row alike. So rows of one decoder forward must be
at the same decoder step, and requests admitted in the same engine step
form a cohort: each prompt is encoded alone (as ``generate`` encodes it),
the encoder states are right-padded into one tensor with an attention
mask, and the cohort decodes one token per step against its own self- and
cross-attention cache. Cohorts run side by side, one decoder forward each
per step, so a request that arrives while others generate is not held until
they finish: it starts a new cohort at the next step and gets its first
token in that step. Rows leave their cohort as soon as they finish. A
sequence resumed after its worker died (model_service.resume) feeds the
tokens already published to the decoder first, so it gets a cohort of its own.

Only max_batch_size bounds the rows in flight; the KV-cache budget
(PIPESERVE_KV_CACHE_BUDGET_MB) of the decoder-only engine is not applied here.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

from model_service.engine.cancels import PendingCancels, drop_waiting, rows_to_keep
from model_service.engine.interface import (
    EngineEvent,
    FinishReason,
    GenerationRequest,
    RequestFailed,
    SequenceUpdate,
)
from model_service.engine.sampling import SamplingRows
from pipeserve.errors import InvalidArgument

log = logging.getLogger(__name__)


@dataclass
class _Row:
    """One running sequence of a cohort."""

    request: GenerationRequest
    index: int
    generated: int = 0

    def finish_reason(self, token: int) -> FinishReason | None:
        return self.request.sampling.finish_reason(token, self.generated)


@dataclass
class _Waiting:
    request: GenerationRequest
    indexes: list[int] = field(default_factory=list)
    """The sequences still wanted (a cancel can remove some before the request starts)."""


@dataclass
class _Cohort:
    """Rows at the same decoder step, with their encoder states and their cache."""

    rows: list[_Row]
    encoder_states: torch.Tensor
    """[rows, source tokens, hidden], right-padded."""
    encoder_mask: torch.Tensor
    """[rows, source tokens]: 1 for real source tokens."""
    decoder_inputs: torch.Tensor
    """[rows, tokens]: what the next decoder step feeds each row (after the first step, its last token)."""
    sampling: SamplingRows
    cache: EncoderDecoderCache = field(default_factory=lambda: EncoderDecoderCache(DynamicCache(), DynamicCache()))
    steps: int = 0

    def keep(self, keep: list[int]) -> None:
        if len(keep) == len(self.rows):
            return
        index = torch.as_tensor(keep, dtype=torch.long, device=self.decoder_inputs.device)
        self.rows = [self.rows[i] for i in keep]
        self.encoder_states = self.encoder_states[index]
        self.encoder_mask = self.encoder_mask[index]
        self.decoder_inputs = self.decoder_inputs[index]
        self.sampling = self.sampling.select(keep)
        self.cache.batch_select_indices(index)


def decoder_start_token_id(model) -> int:
    """The id every decoded sequence starts from, where generate() looks for it."""
    for config in (model.generation_config, model.config):
        token_id = getattr(config, "decoder_start_token_id", None)
        if token_id is not None:
            return int(token_id)
    raise ValueError("the model's config sets no decoder_start_token_id, so its decoder has nothing to start from")


class EncoderDecoderBatcher:
    """GenerationEngine for encoder-decoder models; see the module docstring for how cohorts work."""

    def __init__(self, model, *, max_batch_size: int, vocab_size: int, device: torch.device | str):
        self._model = model
        self._encoder = model.get_encoder()
        self._decoder_start = decoder_start_token_id(model)
        self._max_batch_size = max_batch_size
        self._vocab_size = vocab_size
        self._device = torch.device(device)
        self._cohorts: list[_Cohort] = []
        self._waiting: deque[_Waiting] = deque()
        self._cancels = PendingCancels()

    @property
    def running_rows(self) -> int:
        return sum(len(cohort.rows) for cohort in self._cohorts)

    @property
    def cache_width(self) -> int:
        """Longest row's source tokens (cross-attention) plus decoded tokens (self-attention)."""
        return max((cohort.encoder_states.shape[1] + cohort.steps for cohort in self._cohorts), default=0)

    @property
    def free_rows(self) -> int:
        return self._max_batch_size - self.running_rows - sum(len(w.indexes) for w in self._waiting)

    @property
    def has_work(self) -> bool:
        return bool(self._cohorts or self._waiting or self._cancels)

    def add(self, request: GenerationRequest) -> None:
        n = request.sampling.num_return_sequences
        if not 1 <= n <= self._max_batch_size:
            raise InvalidArgument(f"num_return_sequences must be in [1, {self._max_batch_size}], got {n}")
        if not request.prompt_token_ids:
            raise InvalidArgument("the prompt is empty")
        self._waiting.append(_Waiting(request, list(range(n))))

    def cancel(self, request_id: str, indexes: Iterable[int] | None = None) -> None:
        """Noted now, applied at the start of the next step; unknown or finished requests are ignored there."""
        self._cancels.note(request_id, indexes)

    def step(self) -> list[EngineEvent]:
        events: list[EngineEvent] = []
        with torch.inference_mode():
            self._apply_cancels(events)
            for cohort in list(self._cohorts):
                self._decode(cohort, events)
            self._admit(events)
        return events

    def close(self) -> None:
        self._cohorts = []
        self._waiting.clear()

    def _apply_cancels(self, events: list[EngineEvent]) -> None:
        if not self._cancels:
            return
        cancelled = self._cancels.take()
        drop_waiting(self._waiting, cancelled, events)
        for cohort in list(self._cohorts):
            self._keep_rows(cohort, rows_to_keep(cohort.rows, cancelled, events))

    def _decode(self, cohort: _Cohort, events: list[EngineEvent]) -> None:
        """One decoder step for every row of the cohort; finished rows leave it."""
        try:
            output = self._model(
                encoder_outputs=BaseModelOutput(last_hidden_state=cohort.encoder_states),
                attention_mask=cohort.encoder_mask,
                decoder_input_ids=cohort.decoder_inputs,
                past_key_values=cohort.cache,
                use_cache=True,
            )
            tokens = cohort.sampling.choose(output.logits[:, -1].to(dtype=torch.float32))
        except Exception as exc:  # whatever broke the forward pass, the cohort is lost, not the worker
            log.exception("decoder step failed; failing the %d sequences of its cohort", len(cohort.rows))
            failed = dict.fromkeys(row.request.request_id for row in cohort.rows)
            events.extend(RequestFailed(request_id, f"decoder step failed: {exc!r}") for request_id in failed)
            self._cohorts.remove(cohort)
            return
        cohort.sampling.record(tokens)
        cohort.decoder_inputs = tokens[:, None]
        cohort.steps += 1
        keep = []
        for position, (row, token) in enumerate(zip(cohort.rows, tokens.tolist())):
            row.generated += 1
            reason = row.finish_reason(token)
            events.append(SequenceUpdate(row.request.request_id, row.index, [token], reason))
            if reason is None:
                keep.append(position)
        self._keep_rows(cohort, keep)

    def _keep_rows(self, cohort: _Cohort, keep: list[int]) -> None:
        if keep:
            cohort.keep(keep)
        else:
            self._cohorts.remove(cohort)

    def _admit(self, events: list[EngineEvent]) -> None:
        """Encode the waiting requests that fit, as new cohorts, and decode their first tokens now.

        Fresh requests share one cohort; a resumed sequence, whose decoder
        starts further on, gets a cohort of its own.
        """
        free = self._max_batch_size - self.running_rows
        fresh: list[tuple[_Waiting, torch.Tensor]] = []
        while self._waiting and len(self._waiting[0].indexes) <= free:
            waiting = self._waiting.popleft()
            free -= len(waiting.indexes)
            prompt = torch.tensor([list(waiting.request.prompt_token_ids)], dtype=torch.long, device=self._device)
            try:
                states = self._encoder(input_ids=prompt, attention_mask=torch.ones_like(prompt)).last_hidden_state
            except Exception as exc:  # one bad request must not take the worker down
                log.exception("encoding request %s failed", waiting.request.request_id)
                events.append(RequestFailed(waiting.request.request_id, f"encoding failed: {exc!r}"))
                continue
            if waiting.request.decoder_prompt_token_ids:
                self._start(self._cohort([(waiting, states)]), events)
            else:
                fresh.append((waiting, states))
        if fresh:
            self._start(self._cohort(fresh), events)

    def _start(self, cohort: _Cohort, events: list[EngineEvent]) -> None:
        self._cohorts.append(cohort)
        self._decode(cohort, events)

    def _cohort(self, encoded: list[tuple[_Waiting, torch.Tensor]]) -> _Cohort:
        """Right-pad the requests' encoder states into one batch, one row per sequence.

        The requests' decoder prompts (the start token, then any tokens of a
        resumed sequence) must be of one length: a cohort decodes in step.
        """
        rows = [_Row(waiting.request, index) for waiting, _ in encoded for index in waiting.indexes]
        width = max(states.shape[1] for _, states in encoded)
        first = encoded[0][1]
        encoder_states = first.new_zeros((len(rows), width, first.shape[2]))
        encoder_mask = torch.zeros((len(rows), width), dtype=torch.long, device=self._device)
        sampling, decoder_prompts, row = [], [], 0
        for waiting, states in encoded:
            count, length = len(waiting.indexes), states.shape[1]
            encoder_states[row : row + count, :length] = states
            encoder_mask[row : row + count, :length] = 1
            decoder_prompt = [self._decoder_start, *waiting.request.decoder_prompt_token_ids]
            decoder_prompts.extend([decoder_prompt] * count)
            sampling.append(
                SamplingRows.for_request(
                    waiting.request.sampling, decoder_prompt, count, self._vocab_size, self._device
                )
            )
            row += count
        decoder_inputs = torch.tensor(decoder_prompts, dtype=torch.long, device=self._device)
        return _Cohort(rows, encoder_states, encoder_mask, decoder_inputs, SamplingRows.concat(sampling))
