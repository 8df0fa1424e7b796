"""Task names and the model's default task; the packed tensor codec both sides of the queue use."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeserve.config import ModelSpec
from pipeserve.errors import InvalidArgument
from pipeserve.queue.forward_rows import POSITIONS, forward_result, forward_work, outputs_of, rows_of
from pipeserve.tasks import canonical_task, served_tasks, task_of_architectures
from pipeserve.tensors import from_tensor, to_tensor
from pipeserve.v1 import types_pb2


def test_aliases_and_unknown_tasks():
    assert canonical_task("sentiment-analysis") == "text-classification"
    assert canonical_task("ner") == "token-classification"
    assert canonical_task("fill-mask") == "fill-mask"
    assert canonical_task("summarise") is None


@pytest.mark.parametrize(
    "architecture, task",
    [
        ("LlamaForCausalLM", "text-generation"),
        ("GPT2LMHeadModel", "text-generation"),
        ("BertForSequenceClassification", "text-classification"),
        ("BertForTokenClassification", "token-classification"),
        ("BertForMaskedLM", "fill-mask"),
        ("BertForQuestionAnswering", "question-answering"),
        ("TapasForQuestionAnswering", "table-question-answering"),
        ("T5ForConditionalGeneration", "text2text-generation"),
        ("BertModel", "feature-extraction"),
    ],
)
def test_the_architecture_decides_the_default_task(architecture, task):
    assert task_of_architectures([architecture]) == task


def test_a_models_file_entry_without_task_takes_its_checkpoints(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"]}))
    assert ModelSpec(name="m", path=str(tmp_path)).task == "fill-mask"
    assert ModelSpec(name="m", path=str(tmp_path), task="ner").task == "token-classification"
    assert ModelSpec(name="m", path="some/hub-id").task == "text-generation"


def test_a_sequence_classifier_serves_zero_shot_too():
    assert served_tasks("text-classification") == ("text-classification", "zero-shot-classification")
    assert served_tasks("fill-mask") == ("fill-mask",)


@pytest.mark.parametrize("array", [np.arange(12, dtype=np.float32).reshape(3, 4), np.array([5, -1], dtype=np.int64)])
def test_tensors_round_trip_as_packed_little_endian_bytes(array):
    tensor = to_tensor(array)
    assert list(tensor.shape) == list(array.shape)
    assert tensor.data == array.astype(array.dtype.newbyteorder("<")).tobytes()
    np.testing.assert_array_equal(from_tensor(tensor), array)


def test_a_tensor_whose_bytes_disagree_with_its_shape_is_refused():
    tensor = types_pb2.Tensor(dtype=types_pb2.DATA_TYPE_FP32, shape=[2, 2], data=b"\0" * 12)
    with pytest.raises(InvalidArgument, match="needs 16 bytes, got 12"):
        from_tensor(tensor)


def test_forward_rows_and_outputs_round_trip():
    rows = [
        {"input_ids": np.array([1, 2, 3]), "attention_mask": np.array([1, 1, 1])},
        {"input_ids": np.array([4]), "attention_mask": np.array([1]), POSITIONS: np.array([0])},
    ]
    back = rows_of(forward_work(rows, ["logits"], ["logits"]))
    for original, decoded in zip(rows, back, strict=True):
        assert original.keys() == decoded.keys()
        for name in original:
            np.testing.assert_array_equal(original[name], decoded[name])
    outputs = [{"logits": np.ones((3, 2), dtype=np.float32)}, {"logits": np.zeros(2, dtype=np.float32)}]
    for original, decoded in zip(outputs, outputs_of(forward_result(outputs)), strict=True):
        np.testing.assert_array_equal(original["logits"], decoded["logits"])
