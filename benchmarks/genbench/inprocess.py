"""Phases a, b and c: transformers in this process, the references pipeserve is measured against.

(a) ``model.generate`` one request at a time, (b) the same prompts as static
left-padded batches (the practical upper bound for throughput), (c)
transformers' own continuous batching. All are greedy with EOS disabled
(``eos_token_id=[]``: ``None`` would fall back to the model's EOS), so every
request produces exactly max_new_tokens tokens.
"""

from __future__ import annotations

import math
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, ContinuousBatchingConfig, GenerationConfig
from transformers.generation.streamers import BaseStreamer

from genbench.timing import BenchmarkError, RequestTiming
from genbench.tracker import Advance, no_progress
from genbench.workload import Prompt, Schedule

CB_RESULT_POLL_S = 1.0


def load_model(path: str, device: str):
    """The model in float32 (what the served worker loads) in eval mode, and its tokenizer."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
    return model, AutoTokenizer.from_pretrained(path)


def greedy_config(tokenizer, max_new_tokens: int) -> GenerationConfig:
    return GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=[], pad_token_id=tokenizer.pad_token_id
    )


class _StepClock(BaseStreamer):
    """Timestamps every decoding step: generate hands a streamer the prompt first, then each step's new tokens."""

    def __init__(self):
        self.prompt_seen = False
        self.step_times: list[float] = []

    def put(self, value) -> None:
        if self.prompt_seen:
            self.step_times.append(time.perf_counter())
        self.prompt_seen = True

    def end(self) -> None:
        pass


def _timed_generate(model, input_ids, attention_mask, config: GenerationConfig) -> list[float]:
    """Run generate and return the time each step's tokens were ready."""
    clock = _StepClock()
    model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config, streamer=clock)
    return clock.step_times


def run_sequential(
    model, tokenizer, prompts: list[Prompt], max_new_tokens: int, *, arrivals=None, advance: Advance = no_progress
):
    """Phase a: one ``generate`` at a time, first come first served.

    Without arrivals each request is submitted when the previous one ends
    (use ``closed_loop_view`` for N clients); with arrivals a request waits
    for its arrival time and then for the server to be free.
    """
    config = greedy_config(tokenizer, max_new_tokens)
    timings = []
    start = time.perf_counter()
    for index, prompt in enumerate(prompts):
        if arrivals is not None:
            time.sleep(max(0.0, start + arrivals[index] - time.perf_counter()))
        submitted = start + arrivals[index] if arrivals is not None else time.perf_counter()
        input_ids = torch.tensor([prompt.token_ids], device=model.device)
        steps = _timed_generate(model, input_ids, torch.ones_like(input_ids), config)
        timings.append(RequestTiming(submitted, steps))
        advance()
    return timings


def closed_loop_view(timings: list[RequestTiming], concurrency: int) -> list[RequestTiming]:
    """Phase a's timings as N closed-loop clients would see them, from one back-to-back run.

    With N clients each keeping one request outstanding, a one-at-a-time
    server is never idle and runs the requests back to back in order, exactly
    as the sequential run did; request i is submitted when request i-N ends.
    """
    start = timings[0].submitted
    return [
        RequestTiming(timings[i - concurrency].token_times[-1] if i >= concurrency else start, t.token_times)
        for i, t in enumerate(timings)
    ]


def run_static_batches(
    model, tokenizer, prompts: list[Prompt], batch_size: int, max_new_tokens: int, advance: Advance = no_progress
):
    """Phase b: consecutive batches of ``batch_size`` prompts, left-padded, one ``generate`` each.

    A batch's requests are submitted when it starts, so TTFT is the batch's
    prefill time and ITL its per-step time.
    """
    config = greedy_config(tokenizer, max_new_tokens)
    timings = []
    for first in range(0, len(prompts), batch_size):
        batch = prompts[first : first + batch_size]
        submitted = time.perf_counter()
        padded = tokenizer.pad(
            {"input_ids": [list(p.token_ids) for p in batch]}, padding_side="left", return_tensors="pt"
        ).to(model.device)
        steps = _timed_generate(model, padded["input_ids"], padded["attention_mask"], config)
        timings.extend(RequestTiming(submitted, list(steps)) for _ in batch)
        for _ in batch:
            advance()
    return timings


def cb_config(prompts: list[Prompt], max_new_tokens: int, max_requests: int) -> ContinuousBatchingConfig:
    """A small paged cache sized to the workload, as a careful CPU user would set it.

    Left to itself transformers sizes the cache from free memory (host RAM on
    a CPU), which is several times slower here; this holds ``max_requests``
    of the longest requests at once and no more. Smaller is not better: with
    too few blocks transformers evicts running requests and prefills them
    again (see _check_timestamps).
    """
    page_size = 64
    longest = max(len(p.token_ids) for p in prompts) + max_new_tokens
    return ContinuousBatchingConfig(
        page_size=page_size,
        num_blocks=max_requests * math.ceil(longest / page_size),
        max_batch_tokens=512,
        max_requests_per_batch=max_requests,
        allow_block_sharing=False,
    )


def run_continuous_batching(
    manager, prompts: list[Prompt], max_new_tokens: int, schedule: Schedule, advance: Advance = no_progress
):
    """Phase c: requests enter a running ``ContinuousBatchingManager`` as the schedule says.

    One loop submits whatever is due and otherwise waits for a finished
    result, never longer than until the next arrival. Token timestamps come
    from the manager (``record_timestamps``), on the same clock as ours.
    """
    timings: dict[int, RequestTiming] = {}
    in_flight: dict[str, int] = {}
    start = time.perf_counter()
    submitted = 0
    tag = f"{time.monotonic_ns()}"  # one manager serves several runs; request ids must not repeat
    while submitted < len(prompts) or in_flight:
        elapsed = time.perf_counter() - start
        while submitted < len(prompts) and schedule.due(submitted, len(in_flight), elapsed):
            when = start + schedule.arrivals[submitted] if schedule.arrivals is not None else time.perf_counter()
            request_id = manager.add_request(
                list(prompts[submitted].token_ids),
                request_id=f"{tag}-{submitted}",
                max_new_tokens=max_new_tokens,
                record_timestamps=True,
            )
            in_flight[request_id] = submitted
            timings[submitted] = RequestTiming(when)
            submitted += 1
        result = manager.get_result(timeout=_wait_s(schedule, submitted, start, len(prompts)))
        if result is None:
            if not manager.is_running():
                raise BenchmarkError("transformers' continuous batching thread stopped")
            continue
        if result.error is not None:
            raise BenchmarkError(f"transformers' continuous batching failed a request: {result.error}")
        if result.is_finished() and result.request_id in in_flight:
            _check_timestamps(result)
            timings[in_flight.pop(result.request_id)].token_times = list(result.timestamps)
            advance()
    return [timings[i] for i in range(len(prompts))]


def _check_timestamps(result) -> None:
    """A request evicted from a full cache is re-queued with its tokens so far as prompt and loses their timestamps."""
    if len(result.timestamps) != len(result.generated_tokens):
        raise BenchmarkError(
            f"transformers evicted request {result.request_id} from its full paged cache and re-prefilled it, "
            f"keeping timestamps for {len(result.timestamps)} of its {len(result.generated_tokens)} tokens: "
            "the cache is too small for this workload (num_blocks)"
        )


def _wait_s(schedule: Schedule, submitted: int, start: float, total: int) -> float:
    if schedule.arrivals is None or submitted >= total:
        return CB_RESULT_POLL_S
    return max(0.0, start + schedule.arrivals[submitted] - time.perf_counter())
