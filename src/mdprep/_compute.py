"""The pyarrow compute functions the Arrow table path calls, by name, without importing :mod:`pyarrow.compute`.

``import pyarrow.compute`` builds a Python wrapper, documentation included, for each of
pyarrow's compute functions, several hundred: 0.02 to 0.03 s of CPU, about a twentieth
of all that ``mdprep ingest table --preset chexpert`` needs. The arrays' own methods
that compute (``Array.cast``, ``dictionary_encode``, ``is_valid``, ``unique``, ...)
import it too. This module calls :func:`pyarrow._compute.call_function` with the
options :mod:`pyarrow.compute`'s wrappers would pass, for the few functions that path
uses; each gives what the function of the same name there gives.

>>> import pyarrow as pa
>>> a = pa.chunked_array([["b", "a", "b"]]).combine_chunks()
>>> unique(a).to_pylist(), all(starts_with(a, "b")).as_py(), cast(pa.nulls(2), pa.string()).type
(['b', 'a'], False, DataType(string))
"""

from __future__ import annotations

import pyarrow as pa
from pyarrow import _compute as _c

__all__ = [
    "all", "any", "binary_join_element_wise", "cast", "dictionary_encode", "equal", "if_else", "is_in", "is_nan", "is_valid",
    "min_max", "not_equal", "starts_with", "take", "unique", "utf8_trim_whitespace", "utf8_upper", "value_counts",
]  # fmt: skip


def _call(name: str, args: list, options: _c.FunctionOptions | None = None):
    return _c.call_function(name, args, options)


def cast(arr, target_type: pa.DataType, safe: bool = True):
    """``pyarrow.compute.cast`` (and ``Array.cast``)."""
    return _call("cast", [arr], _c.CastOptions.safe(target_type) if safe else _c.CastOptions.unsafe(target_type))


def dictionary_encode(arr):
    """``Array.dictionary_encode()``: nulls stay nulls of the indices."""
    return _call("dictionary_encode", [arr], _c.DictionaryEncodeOptions("mask"))


def take(data, indices):
    return _call("take", [data, indices], _c.TakeOptions(boundscheck=True))


def starts_with(arr, pattern: str):
    return _call("starts_with", [arr], _c.MatchSubstringOptions(pattern))


def is_in(arr, value_set):
    return _call("is_in", [arr], _c.SetLookupOptions(value_set))


def all(arr):  # noqa: A001 - pyarrow.compute's name
    return _call("all", [arr], _c.ScalarAggregateOptions())


def any(arr):  # noqa: A001
    return _call("any", [arr], _c.ScalarAggregateOptions())


def min_max(arr):
    return _call("min_max", [arr], _c.ScalarAggregateOptions())


def binary_join_element_wise(*strings):
    return _call("binary_join_element_wise", list(strings), _c.JoinOptions())


def _plain(name: str):
    def function(*args):
        return _call(name, list(args))

    function.__name__ = function.__qualname__ = name
    function.__doc__ = f"``pyarrow.compute.{name}``."
    return function


equal = _plain("equal")
not_equal = _plain("not_equal")
if_else = _plain("if_else")
is_valid = _plain("is_valid")
is_nan = _plain("is_nan")
unique = _plain("unique")
value_counts = _plain("value_counts")
utf8_upper = _plain("utf8_upper")
utf8_trim_whitespace = _plain("utf8_trim_whitespace")
