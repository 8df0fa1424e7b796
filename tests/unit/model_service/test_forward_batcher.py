"""Dynamic batching of forward-only work: what the batch returns equals each row's own forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertForTokenClassification,
    TapasConfig,
    TapasForQuestionAnswering,
)

from model_service.engine.forward_batcher import ForwardBatcher, ForwardDone, ForwardRequest, pad_rows, run_forward
from model_service.engine.interface import FinishReason, RequestFailed, SequenceUpdate
from pipeserve.queue.forward_rows import POSITIONS

CONFIG = {
    "vocab_size": 100,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "num_labels": 5,
}


@pytest.fixture(scope="module")
def token_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return BertForTokenClassification(BertConfig(**CONFIG)).eval()


@pytest.fixture(scope="module")
def sequence_model() -> torch.nn.Module:
    torch.manual_seed(1)
    return BertForSequenceClassification(BertConfig(**CONFIG)).eval()


def row(length: int, seed: int) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(seed).integers(5, 100, size=length)
    return {
        "input_ids": ids,
        "token_type_ids": np.zeros(length, dtype=np.int64),
        "attention_mask": np.ones(length, dtype=np.int64),
    }


def alone(model, r: dict[str, np.ndarray]) -> torch.Tensor:
    with torch.inference_mode():
        inputs = {name: torch.from_numpy(np.asarray(value))[None] for name, value in r.items() if name != POSITIONS}
        return model(**inputs).logits[0]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_padded_batch_equals_each_row_alone_and_is_cut_back_per_token(token_model, sequence_model):
    rows = [row(length, seed) for seed, length in enumerate([3, 17, 9, 1])]
    token_out = run_forward(token_model, [ForwardRequest("a", rows[:2], ("logits",), ("logits",)),
                                          ForwardRequest("b", rows[2:], ("logits",), ("logits",))],
                            pad_token_id=0, device="cpu")  # fmt: skip
    flat = [out for request in token_out for out in request]
    for r, out in zip(rows, flat, strict=True):
        assert out["logits"].shape == (len(r["input_ids"]), 5)
        np.testing.assert_allclose(out["logits"], alone(token_model, r).numpy(), atol=1e-5)
    seq_out = run_forward(sequence_model, [ForwardRequest("c", rows, ("logits",))], pad_token_id=0, device="cpu")[0]
    for r, out in zip(rows, seq_out, strict=True):
        assert out["logits"].shape == (5,)
        np.testing.assert_allclose(out["logits"], alone(sequence_model, r).numpy(), atol=1e-5)


def test_inputs_with_values_per_token_are_padded_along_the_token_axis_only():
    rows = [
        {"input_ids": np.array([5, 6, 7]), "token_type_ids": np.arange(21).reshape(3, 7)},
        {"input_ids": np.array([8]), "token_type_ids": np.full((1, 7), 9)},
    ]
    batch = pad_rows(rows, pad_token_id=1)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    types = batch["token_type_ids"].numpy()
    assert types.shape == (2, 3, 7)
    np.testing.assert_array_equal(types[0], rows[0]["token_type_ids"])
    np.testing.assert_array_equal(types[1], [[9] * 7, [0] * 7, [0] * 7])


def test_tapas_rows_batched_equal_each_row_alone():
    """TAPAS's [tokens, 7] token types: per-token logits cut back per row, the aggregation logits per row."""
    torch.manual_seed(2)
    config = TapasConfig(**CONFIG, type_vocab_sizes=[3, 6, 6, 2, 6, 6, 10], num_aggregation_labels=4)
    model = TapasForQuestionAnswering(config).eval()
    rows = []
    for seed, length in enumerate([4, 11, 7]):
        r = row(length, seed)
        types = np.random.default_rng(seed).integers(0, config.type_vocab_sizes, size=(length, 7))
        rows.append({**r, "token_type_ids": types})
    names = ("logits", "logits_aggregation")
    (outputs,) = run_forward(model, [ForwardRequest("t", rows, names, ("logits",))], pad_token_id=0, device="cpu")
    for r, out in zip(rows, outputs, strict=True):
        with torch.inference_mode():
            want = model(**{name: torch.from_numpy(value)[None] for name, value in r.items()})
        assert out["logits"].shape == (len(r["input_ids"]),) and out["logits_aggregation"].shape == (4,)
        np.testing.assert_allclose(out["logits"], want.logits[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(out["logits_aggregation"], want.logits_aggregation[0].numpy(), atol=1e-5)


def test_positions_select_per_token_outputs(token_model):
    r = {**row(12, 7), POSITIONS: np.array([4, 1])}
    out = run_forward(token_model, [ForwardRequest("a", [r], ("logits",), ("logits",))], pad_token_id=0, device="cpu")
    np.testing.assert_allclose(out[0][0]["logits"], alone(token_model, r).numpy()[[4, 1]], atol=1e-5)


def test_a_partial_batch_waits_max_wait_ms_a_full_one_runs_at_once(sequence_model):
    clock = Clock()
    batcher = ForwardBatcher(
        sequence_model, max_batch_size=4, max_wait_ms=10, pad_token_id=0, device="cpu", clock=clock
    )
    batcher.add(ForwardRequest("a", [row(3, 0)], ("logits",)))
    assert batcher.step() == [] and batcher.has_work
    clock.now = 0.011
    events = batcher.step()
    assert [type(e) for e in events] == [ForwardDone] and not batcher.has_work
    batcher.add(ForwardRequest("b", [row(3, 1), row(4, 2)], ("logits",)))
    batcher.add(ForwardRequest("c", [row(5, 3), row(6, 4)], ("logits",)))
    assert batcher.free_rows == 0
    assert [e.request_id for e in batcher.step()] == ["b", "c"]


def test_whole_requests_fill_a_batch_and_an_oversized_one_runs_alone_in_slices(sequence_model):
    clock = Clock()
    batcher = ForwardBatcher(sequence_model, max_batch_size=3, max_wait_ms=0, pad_token_id=0, device="cpu", clock=clock)
    big = [row(2 + i, i) for i in range(7)]
    batcher.add(ForwardRequest("small", [row(4, 9), row(5, 10)], ("logits",)))
    batcher.add(ForwardRequest("big", big, ("logits",)))
    assert [e.request_id for e in batcher.step()] == ["small"]
    (done,) = batcher.step()
    assert done.request_id == "big" and len(done.outputs) == 7
    for r, out in zip(big, done.outputs, strict=True):
        np.testing.assert_allclose(out["logits"], alone(sequence_model, r).numpy(), atol=1e-5)


def test_a_cancelled_request_is_never_run(sequence_model):
    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, input_ids, attention_mask=None, token_type_ids=None):
            self.calls += 1
            return sequence_model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)

    model = Counting()
    batcher = ForwardBatcher(model, max_batch_size=8, max_wait_ms=0, pad_token_id=0, device="cpu")
    batcher.add(ForwardRequest("gone", [row(3, 0)], ("logits",)))
    batcher.cancel("gone")
    assert batcher.step() == [SequenceUpdate("gone", 0, [], FinishReason.CANCELLED)]
    assert model.calls == 0 and not batcher.has_work


def test_a_failing_forward_fails_its_requests_only(sequence_model):
    batcher = ForwardBatcher(sequence_model, max_batch_size=8, max_wait_ms=0, pad_token_id=0, device="cpu")
    batcher.add(ForwardRequest("bad", [row(3, 0)], ("no_such_output",)))
    (event,) = batcher.step()
    assert isinstance(event, RequestFailed) and event.request_id == "bad"
    batcher.add(ForwardRequest("good", [row(3, 0)], ("logits",)))
    assert isinstance(batcher.step()[0], ForwardDone)
