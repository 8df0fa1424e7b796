"""Forward-only work on the queue: model rows in, per-row output tensors back (both sides import this).

Rows are dicts of integer arrays with the token axis first (input name ->
token-level values: [tokens], or [tokens, 7] for TAPAS's token_type_ids),
plus optionally ``POSITIONS``; outputs are dicts of float arrays. On the
queue each array is a pipeserve.v1.Tensor (dtype, shape, raw bytes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from pipeserve.internal.v1 import queue_pb2
from pipeserve.tensors import from_tensor, to_tensor

POSITIONS = "positions"
"""Row key, not a model input: the token positions whose per-token outputs to return (fill-mask's masks)."""

Row = dict[str, np.ndarray]
RowOutputs = dict[str, np.ndarray]


def forward_work(
    rows: Iterable[Row], output_names: Sequence[str], token_outputs: Sequence[str]
) -> queue_pb2.ForwardWork:
    work = queue_pb2.ForwardWork(output_names=output_names, token_outputs=token_outputs)
    for row in rows:
        message = work.rows.add(positions=row.get(POSITIONS, ()))
        for name, values in row.items():
            if name != POSITIONS:
                message.inputs[name].CopyFrom(to_tensor(np.asarray(values, dtype=np.int64)))
    return work


def rows_of(work: queue_pb2.ForwardWork) -> list[Row]:
    rows = []
    for message in work.rows:
        row = {name: from_tensor(tensor) for name, tensor in message.inputs.items()}
        if message.positions:
            row[POSITIONS] = np.array(message.positions, dtype=np.int64)
        rows.append(row)
    return rows


def forward_result(outputs: Iterable[RowOutputs]) -> queue_pb2.ForwardResult:
    result = queue_pb2.ForwardResult()
    for row in outputs:
        message = result.rows.add()
        for name, value in row.items():
            message.outputs[name].CopyFrom(to_tensor(value))
    return result


def outputs_of(result: queue_pb2.ForwardResult) -> list[RowOutputs]:
    return [{name: from_tensor(tensor) for name, tensor in row.outputs.items()} for row in result.rows]
