"""numpy arrays <-> pipeserve.v1.Tensor: dtype + shape + raw little-endian bytes (KServe v2's binary form).

One codec for the public API (embeddings) and the queue (model rows and
outputs), so every side packs and unpacks the same way.
"""

from __future__ import annotations

import numpy as np

from pipeserve.errors import InvalidArgument
from pipeserve.v1 import types_pb2

_DTYPES = {
    types_pb2.DATA_TYPE_FP32: np.dtype("<f4"),
    types_pb2.DATA_TYPE_FP16: np.dtype("<f2"),
    types_pb2.DATA_TYPE_INT64: np.dtype("<i8"),
    types_pb2.DATA_TYPE_INT32: np.dtype("<i4"),
}
_CODES = {dtype.newbyteorder("="): code for code, dtype in _DTYPES.items()}


def to_tensor(array: np.ndarray) -> types_pb2.Tensor:
    array = np.asarray(array)
    code = _CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise TypeError(f"no Tensor dtype for numpy {array.dtype}")
    data = np.ascontiguousarray(array, dtype=_DTYPES[code]).tobytes()
    return types_pb2.Tensor(dtype=code, shape=array.shape, data=data)


def from_tensor(tensor: types_pb2.Tensor) -> np.ndarray:
    """The array (read-only, native byte order), or InvalidArgument when dtype, shape and bytes disagree."""
    dtype = _DTYPES.get(tensor.dtype)
    if dtype is None:
        raise InvalidArgument(f"unsupported tensor dtype {types_pb2.DataType.Name(tensor.dtype)}")
    shape = tuple(tensor.shape)
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(tensor.data) != expected:
        raise InvalidArgument(f"tensor of shape {list(shape)} needs {expected} bytes, got {len(tensor.data)}")
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)
