"""Exact questions about large text columns, answered through hashes of their Arrow bytes.

Which rows repeat a value (``image_id`` must be unique)? Which values occur in more than
one split (the leakage audit)? Asked of ten million strings, both are hash-table work on
text, which is slow in pandas and in Arrow alike. Here every value of an Arrow-backed text
column is hashed once, with numpy, straight from its Arrow buffers (no Python strings), and
the questions are asked of the integers:

* equal values always have equal hashes, so rows whose hash is not repeated (or does not
  occur in two parts) are settled: they cannot repeat a value (or leak);
* the few rows left, the *candidates*, are a superset of the answer, and the caller
  settles them on their text with the exact pandas operation it always used.

The answers are therefore exact; the hashes only decide how little text must be compared.
A hash collision costs a few more candidates, never a wrong answer.

The hashes of a column backed by an immutable Arrow array are kept while that array lives,
so the contract's duplicate check and the audit's checks share one pass over each column.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

#: Rows from which a column is hashed rather than handled by pandas directly.
MIN_ROWS = 1 << 16
_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_K = np.uint64(0x9E3779B97F4A7C15)
_FOLD = np.uint64(0xC2B2AE3D27D4EB4F)
#: The mask of the low ``i`` bytes of a word, for ``i`` from 0 to 8.
_LOW_BYTES = np.array([(1 << (8 * i)) - 1 for i in range(9)], dtype=np.uint64)
_S33 = np.uint64(33)
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)
#: Rows hashed at a time.
_PIECE = 1 << 17
#: From this many keys, a sort runs on two cores.
_PARALLEL_SORT = 1 << 20
#: Up to this many rows, 32 bits of hash leave few false candidates (about n**2 / 2**33).
_ROWS_FOR_32_BITS = 50_000_000


def _mix(h: np.ndarray) -> None:
    """MurmurHash3's 64-bit finaliser, in place."""
    h ^= h >> _S33
    h *= _M1
    h ^= h >> _S33
    h *= _M2
    h ^= h >> _S33


def _text_arrow(values: Any) -> pa.Array | pa.ChunkedArray | None:
    """The Arrow array behind a text column (string or large_string), or None when it is not one."""
    if isinstance(values, pd.Series):
        values = values.array
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        arrow = values
    elif hasattr(values, "__arrow_array__") and isinstance(getattr(values, "dtype", None), (pd.StringDtype, pd.ArrowDtype)):
        arrow = values.__arrow_array__()
    else:
        return None
    if not (pa.types.is_string(arrow.type) or pa.types.is_large_string(arrow.type)):
        return None
    return arrow


def _chunk_keys(chunk: pa.Array, bits: int) -> np.ndarray:
    """The hash of every value of one chunk, as ``bits``-bit keys (the high bits of :func:`_chunk_hash`)."""
    h = _chunk_hash(chunk)
    return (h >> np.uint64(32)).astype(np.uint32) if bits == 32 else h


def _chunk_hash(chunk: pa.Array) -> np.ndarray:
    """A 64-bit hash of every value of one string or large_string chunk (nulls: any value).

    The value's length seeds the state; each 8-byte word of it (the last one zero-padded) is
    folded in with ``h = (h ^ word) * odd``, a bijection of the state, so two values of one
    length never share the 64-bit state before the final MurmurHash3 mix; different lengths
    collide only by chance. Words that every value of the chunk has in full are plain loads
    (a strided view when all values have one length); only the last, partial words need masks.
    """
    n = len(chunk)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    _, offsets_buf, data_buf = chunk.buffers()
    offset_type = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
    offsets = np.frombuffer(offsets_buf, dtype=offset_type, count=chunk.offset + n + 1)[chunk.offset :]
    start, end = int(offsets[0]), int(offsets[-1])
    data = np.frombuffer(data_buf, dtype=np.uint8, count=end) if data_buf is not None and end else np.zeros(0, np.uint8)
    if end < 8:  # too short for one 8-byte load: pad a copy
        data = np.concatenate([data, np.zeros(8, np.uint8)])
    # Every 8-byte window of the data, one byte apart: word k of a value is window[start + 8k].
    window = np.ndarray((len(data) - 7,), dtype="<u8", buffer=data, strides=(1,))
    last = len(data) - 8
    begin = offsets[:-1].astype(np.int64)
    length = offsets[1:].astype(np.int64) - begin
    h = (length.astype(np.uint64) + np.uint64(1)) * _K
    shortest, longest = int(length.min()), int(length.max())
    k = 0
    while 8 * k + 8 <= shortest:  # a word every value has in full
        if shortest == longest:
            word = np.ndarray((n,), dtype="<u8", buffer=data, offset=start + 8 * k, strides=(shortest,))
        else:
            word = window[begin + 8 * k]
        h ^= word
        h *= _FOLD
        k += 1
    rows = None  # the rows still having bytes to hash (None: all)
    while 8 * k < longest:
        rem = length - 8 * k if rows is None else length[rows] - 8 * k
        more = rem > 0
        if not more.all():
            rows = np.flatnonzero(more) if rows is None else rows[more]
            rem = rem[more]
        pos = (begin if rows is None else begin[rows]) + 8 * k
        # Positions increase with the row: only the last values' loads can pass the end of the data.
        safe = int(np.searchsorted(pos, last, side="right"))
        word = window[pos[:safe]]
        if safe < len(pos):  # moved back to end at the data's end, then the bytes before dropped
            tail = window[np.full(len(pos) - safe, last)] >> ((pos[safe:] - last) * 8).astype(np.uint64)
            word = np.concatenate([word, tail])
        word &= _LOW_BYTES[np.minimum(rem, 8)]
        if rows is None:
            h ^= word
            h *= _FOLD
        else:
            part = h[rows] ^ word
            part *= _FOLD
            h[rows] = part
        k += 1
    _mix(h)
    return h


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class _Hashed:
    """The hash of every row of one text column, as 32- or 64-bit keys, and its null mask."""

    __slots__ = ("keys", "null", "bits", "duplicates")

    def __init__(self, arrow: pa.Array | pa.ChunkedArray) -> None:
        # Pieces of at most _PIECE rows (zero-copy slices): small temporaries, and work for every core.
        chunks = [
            c.slice(i, _PIECE)
            for c in (arrow.chunks if isinstance(arrow, pa.ChunkedArray) else [arrow])
            for i in range(0, max(len(c), 1), _PIECE)
        ]
        n = len(arrow)
        self.bits = key_bits(n)
        if len(chunks) > 1 and n >= 4 * MIN_ROWS:
            # numpy releases the GIL in its loops: the chunks hash on every core.
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(_cores()) as pool:
                keys = list(pool.map(_chunk_keys, chunks, [self.bits] * len(chunks)))
        else:
            keys = [_chunk_keys(c, self.bits) for c in chunks]
        self.keys = np.concatenate(keys) if keys else np.zeros(0, np.uint32 if self.bits == 32 else np.uint64)
        del keys
        self.null = np.concatenate([null_mask(c) for c in chunks]) if chunks else np.zeros(0, bool)
        self.duplicates: np.ndarray | None = None


def key_bits(rows: int) -> int:
    """The width of the keys of a column of ``rows`` values: 32 bits below :data:`_ROWS_FOR_32_BITS`, else 64."""
    return 32 if rows < _ROWS_FOR_32_BITS else 64


def chunk_keys(chunk: pa.Array, bits: int) -> np.ndarray:
    """The ``bits``-bit key of every value of one string or large_string array (nulls: any key).

    Equal values have equal keys, whatever the chunk they are in; pieces of at most
    :data:`_PIECE` rows are hashed at a time, so the temporaries stay small.
    """
    pieces = [_chunk_keys(chunk.slice(i, _PIECE), bits) for i in range(0, len(chunk), _PIECE)]
    if len(pieces) == 1:
        return pieces[0]
    return np.concatenate(pieces) if pieces else np.zeros(0, np.uint32 if bits == 32 else np.uint64)


def null_mask(chunk: pa.Array) -> np.ndarray:
    """Whether each value of an Arrow array is null, as a numpy bool array."""
    if chunk.null_count == 0:
        return np.zeros(len(chunk), dtype=bool)
    return chunk.is_null().to_numpy(zero_copy_only=False)


#: id(Arrow array) -> its hashes, dropped when the array is (Arrow arrays are immutable).
_CACHE: dict[int, _Hashed] = {}


def _hashed(values: Any) -> _Hashed | None:
    arrow = _text_arrow(values)
    if arrow is None or len(arrow) < MIN_ROWS:
        return None
    key = id(arrow)
    found = _CACHE.get(key)
    if found is None:
        found = _Hashed(arrow)
        try:
            weakref.finalize(arrow, _CACHE.pop, key, None)
        except TypeError:  # not weak-referenceable: nothing to share it with
            return found
        _CACHE[key] = found
    return found


def _isin(keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Whether each key is one of the (few, distinct) ``wanted`` keys.

    A few wanted keys (the usual answer) are looked up by their top 16 bits in a table that
    stays in cache first; only the keys that pass are probed in a hash table.
    """
    if len(wanted) > 4096 or keys.dtype.kind != "u":
        return pd.Series(keys, copy=False).isin(wanted).to_numpy()
    shift = keys.dtype.type(8 * keys.dtype.itemsize - 16)
    table = np.zeros(1 << 16, dtype=bool)
    table[wanted >> shift] = True
    maybe = np.flatnonzero(table[keys >> shift])
    out = np.zeros(len(keys), dtype=bool)
    out[maybe] = pd.Series(keys[maybe], copy=False).isin(wanted).to_numpy()
    return out


#: id(Arrow array) -> its part codes, dropped with the array.
_CODES: dict[int, np.ndarray] = {}


def codes(values: pd.Series) -> np.ndarray:
    """The codes of ``pd.factorize(values, sort=True)`` (-1 for null), computed once per Arrow-backed column.

    For a column of few distinct values (a split column, read by every check): each Arrow
    chunk is dictionary-encoded on its own and its small dictionary mapped to the sorted
    distinct values, so no step costs more than one small integer per row.

    >>> codes(pd.Series(["test", "train", None, "test"])).tolist()
    [0, 1, -1, 0]
    """
    arrow = _text_arrow(values)
    if arrow is None or len(arrow) < MIN_ROWS:
        return pd.factorize(values, sort=True)[0]
    key = id(arrow)
    found = _CODES.get(key)
    if found is None:
        found = _sorted_codes(arrow)
        if found is None:
            return pd.factorize(values, sort=True)[0]
        try:
            weakref.finalize(arrow, _CODES.pop, key, None)
        except TypeError:
            return found
        _CODES[key] = found
    return found


def _sorted_codes(arrow: pa.Array | pa.ChunkedArray, most: int = 32767) -> np.ndarray | None:
    """Codes of the sorted distinct values of a text column, or None when it has more than ``most`` of them."""
    local, dictionaries = [], []
    for chunk in arrow.chunks if isinstance(arrow, pa.ChunkedArray) else [arrow]:
        encoded = chunk.dictionary_encode()
        names = encoded.dictionary.to_pylist()
        if len(names) > most:
            return None
        # This chunk's codes as small integers at once (null: one past its dictionary), so the Arrow indices go.
        indices = encoded.indices.fill_null(len(names)).to_numpy(zero_copy_only=False).astype(np.int16)
        local.append(indices)
        dictionaries.append(names)
    names = sorted({v for d in dictionaries for v in d})
    if len(names) > most:
        return None
    dtype = np.int8 if len(names) < 127 else np.int16
    rank = {v: i for i, v in enumerate(names)}
    out = [np.array([rank[v] for v in d] + [-1], dtype=dtype)[i] for i, d in zip(local, dictionaries)]
    return np.concatenate(out) if out else np.zeros(0, dtype)


def duplicated(values: pd.Series) -> np.ndarray:
    """Rows whose non-null value occurs more than once: ``values.duplicated(keep=False) & values.notna()``.

    Exact; a column of at least :data:`MIN_ROWS` Arrow-backed strings is answered through
    its hashes (see the module docstring), anything else by pandas directly.

    >>> s = pd.Series(["a", "b", None, "a", None])
    >>> duplicated(s).tolist()
    [True, False, False, True, False]
    """
    hashed = _hashed(values)
    if hashed is None:
        return values.duplicated(keep=False).to_numpy() & values.notna().to_numpy()
    if hashed.duplicates is None:
        candidates = repeated(hashed.keys, hashed.null)
        mask = np.zeros(len(values), dtype=bool)
        if candidates.any():
            # A mask filters Arrow data chunk by chunk; positions (iloc) would concatenate the chunks first.
            sub = values[candidates]
            mask[np.flatnonzero(candidates)[sub.duplicated(keep=False).to_numpy()]] = True
        hashed.duplicates = mask
    return hashed.duplicates.copy()


def spanning(values: pd.Series, parts: np.ndarray) -> np.ndarray | None:
    """Rows whose value may occur in more than one part (a superset), or None to look at every row.

    ``parts`` holds each row's part (split) as an integer, -1 for none; rows with a null
    value or no part are never candidates. Every row of a value that occurs in two parts is
    a candidate; the caller settles the candidates exactly. None when ``values`` is not a
    large Arrow-backed text column.

    >>> s = pd.Series(["p1", "p2", "p1", "p3"] * 20000)
    >>> rows = spanning(s, np.array([0, 1, 1, 1] * 20000))
    >>> sorted(set(s[rows]))
    ['p1']
    """
    hashed = _hashed(values)
    if hashed is None:
        return None
    if hashed.duplicates is not None and not hashed.duplicates.any():
        return np.zeros(len(parts), dtype=bool)  # every value occurs once: in one part at most
    return across(hashed.keys, np.where(hashed.null, parts.dtype.type(-1), parts) if hashed.null.any() else parts, hashed.bits)


def _sorted(keys: np.ndarray) -> np.ndarray:
    """``np.sort(keys)`` of unsigned keys; a large array as two halves of the key range, sorted on two cores."""
    if len(keys) < _PARALLEL_SORT or keys.dtype.kind != "u" or _cores() < 2:
        return np.sort(keys)
    high = keys >= keys.dtype.type(1 << (8 * keys.dtype.itemsize - 1))
    halves = [keys[~high], keys[high]]
    del high
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:  # numpy sorts without the GIL
        list(pool.map(np.ndarray.sort, halves))
    return np.concatenate(halves)


def _distinct(ordered: np.ndarray) -> np.ndarray:
    """The distinct values of a sorted array (``np.unique`` without its sort or hash table)."""
    if len(ordered) < 2:
        return ordered
    return ordered[np.concatenate([[True], ordered[1:] != ordered[:-1]])]


def repeated(keys: np.ndarray, null: np.ndarray | None = None) -> np.ndarray:
    """Rows whose key is not null and occurs more than once: a superset of the rows that repeat a value.

    >>> repeated(np.array([7, 3, 7, 5], dtype=np.uint32), np.array([False, False, False, True])).tolist()
    [True, False, True, False]
    """
    has_null = null is not None and bool(null.any())
    ordered = _sorted(keys[~null] if has_null else keys)
    twice = _distinct(ordered[1:][ordered[1:] == ordered[:-1]])
    del ordered
    if not len(twice):
        return np.zeros(len(keys), dtype=bool)
    rows = _isin(keys, twice)
    return rows & ~null if has_null else rows


def across(keys: np.ndarray, parts: np.ndarray, bits: int) -> np.ndarray | None:
    """Rows whose key occurs in more than one part (a superset of the rows whose value does), or None.

    ``parts`` holds each row's part as a small integer, -1 for a row to leave out (no part, or
    no value). None when there are too many parts to share a ``bits``-bit key with the hash.

    >>> across(np.array([5, 5, 9, 9], dtype=np.uint32) << np.uint32(8), np.array([0, 1, 0, 0]), 32).tolist()
    [True, True, False, False]
    """
    keep = parts >= 0
    n_parts = int(parts.max()) + 1 if len(parts) else 0
    part_bits = max(1, (max(n_parts, 2) - 1).bit_length())
    if part_bits > bits - 16:
        return None
    dtype = np.uint32 if bits == 32 else np.uint64
    low = dtype((1 << part_bits) - 1)
    if keep.all():
        combined = (keys & ~low) | parts.astype(dtype)
    else:
        combined = (keys[keep] & ~low) | parts[keep].astype(dtype)
    if len(combined) > 1:
        # Rows of one value in one part often come together (a patient's images): one of each run is enough.
        combined = combined[np.concatenate([[True], combined[1:] != combined[:-1]])]
    combined = _sorted(combined)
    # Neighbours of one hash (equal high bits) in two parts (different low bits): 0 < a ^ b <= low.
    step = combined[1:] ^ combined[:-1]
    leaking = _distinct(combined[1:][(step != 0) & (step <= low)] >> dtype(part_bits))
    del step, combined
    if not len(leaking):
        return np.zeros(len(parts), dtype=bool)
    return _isin(keys >> dtype(part_bits), leaking) & keep
