"""Arrow arrays to and from numpy without importing pandas.

pyarrow imports pandas, when it is installed, the first time ``pa.array``, ``pa.scalar``,
``Array.to_numpy`` or a compute function given a Python value runs (to ask whether the
value is a pandas object). A command that never needs pandas builds its arrays from
buffers instead, with the helpers here, and passes compute functions Arrow scalars.

>>> import numpy as np
>>> a = from_numpy(np.array([1, 0, -1], dtype=np.int8), valid=np.array([True, False, True]))
>>> a.to_pylist(), values(a).tolist(), valid_mask(a).tolist()
([1, None, -1], [1, 0, -1], [True, False, True])
>>> strings(["a", None, "é"]).to_pylist()
['a', None, 'é']
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

#: Arrow types whose values buffer numpy reads as it is.
_NUMPY_TYPES = {
    pa.int8(): np.int8,
    pa.int16(): np.int16,
    pa.int32(): np.int32,
    pa.int64(): np.int64,
    pa.uint8(): np.uint8,
    pa.uint16(): np.uint16,
    pa.uint32(): np.uint32,
    pa.uint64(): np.uint64,
    pa.float32(): np.float32,
    pa.float64(): np.float64,
}


def _bits(buffer: pa.Buffer | None, offset: int, length: int, default: bool) -> np.ndarray:
    if buffer is None:
        return np.full(length, default)
    packed = np.frombuffer(buffer, dtype=np.uint8)
    return np.unpackbits(packed, bitorder="little", count=offset + length)[offset:].astype(bool)


def valid_mask(arr: pa.Array) -> np.ndarray:
    """Which slots of ``arr`` hold a value (not null), as a numpy bool array."""
    if arr.null_count == 0:
        return np.ones(len(arr), dtype=bool)
    if pa.types.is_null(arr.type):
        return np.zeros(len(arr), dtype=bool)
    return _bits(arr.buffers()[0], arr.offset, len(arr), True)


def values(arr: pa.Array) -> np.ndarray:
    """The values of a numeric or boolean array as numpy, without a copy where the layout allows; null slots hold anything."""
    if pa.types.is_boolean(arr.type):
        return _bits(arr.buffers()[1], arr.offset, len(arr), False)
    dtype = np.dtype(_NUMPY_TYPES[arr.type])
    if len(arr) == 0:
        return np.zeros(0, dtype=dtype)
    return np.frombuffer(arr.buffers()[1], dtype=dtype, count=arr.offset + len(arr))[arr.offset :]


def true_mask(arr: pa.Array) -> np.ndarray:
    """Where a boolean array is true (null counts as false)."""
    return values(arr) & valid_mask(arr)


def from_numpy(data: np.ndarray, valid: np.ndarray | None = None, type: pa.DataType | None = None) -> pa.Array:
    """A numeric array from numpy values and an optional validity mask (False: null)."""
    data = np.ascontiguousarray(data)
    arrow_type = type or pa.from_numpy_dtype(data.dtype)
    validity = None if valid is None or valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(arrow_type, len(data), [validity, pa.py_buffer(data)])


def strings(items: Sequence[str | None]) -> pa.Array:
    """A ``string`` array of ``items`` (None: null)."""
    encoded = [b"" if s is None else s.encode("utf-8") for s in items]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    valid = np.array([s is not None for s in items], dtype=bool)
    validity = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(pa.string(), len(encoded), [validity, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])


def text_scalar(text: str) -> pa.Scalar:
    """A ``string`` scalar, for compute functions (a Python str would make pyarrow import pandas)."""
    return strings([text])[0]


def null_scalar(arrow_type: pa.DataType) -> pa.Scalar:
    """A null of ``arrow_type``, for compute functions."""
    return pa.nulls(1, arrow_type)[0]


def is_text(arr: pa.Array | pa.ChunkedArray) -> bool:
    return pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)


def stripped(arr: pa.Array | pa.ChunkedArray) -> bool:
    """Whether no value of a text array has white space around it (what ``str.strip`` of pandas' Arrow text removes).

    >>> stripped(strings(["a", None])), stripped(strings(["a\\u3000"]))
    (True, False)
    """
    from .. import _compute as pc

    return not pc.any(pc.not_equal(arr, pc.utf8_trim_whitespace(arr))).as_py()


def distinct(arr: pa.Array | pa.ChunkedArray) -> bool:
    """Whether the non-null values of an array are all different (one hash pass of ``unique``).

    >>> distinct(strings(["a", "b", None, None])), distinct(strings(["a", "a"]))
    (True, False)
    """
    from .. import _compute as pc

    found = pc.unique(arr)
    return len(found) - found.null_count == len(arr) - arr.null_count
