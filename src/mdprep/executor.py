"""The one place where per-file work is spread over processes.

Every source that reads files one by one (DICOM headers, image headers, and later
content hashes) goes through :func:`map_chunks`, so a distributed engine such as
Dask can be plugged in here without touching the readers.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """All cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def map_chunks(
    func: Callable[[Sequence[T]], list[R]],
    items: Sequence[T],
    *,
    workers: int | None = None,
    chunk_size: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> list[R]:
    """Apply ``func`` to consecutive chunks of ``items`` and return all results in order.

    Parameters
    ----------
    func : callable
        Takes a chunk (a sequence of items) and returns one result per item. It must
        be picklable (a module-level function or a ``functools.partial`` of one) and
        should turn per-item failures into results rather than raise.
    items : sequence
    workers : int, optional
        Processes to use; ``None`` means all cores, ``1`` runs in this process.
    chunk_size : int, optional
        Items per task; by default about 8 tasks per worker, between 16 and 512 items.
    on_progress : callable, optional
        Called with the number of items finished after each chunk.

    Examples
    --------
    >>> map_chunks(lambda chunk: [x * 2 for x in chunk], [1, 2, 3], workers=1)
    [2, 4, 6]
    """
    n = len(items)
    if n == 0:
        return []
    workers = default_workers() if workers is None else max(1, int(workers))
    workers = min(workers, n)
    if chunk_size is None:
        chunk_size = max(16, min(512, -(-n // (workers * 8))))
    chunks = _chunks(items, chunk_size)
    results: list[R] = []
    if workers == 1 or len(chunks) == 1:
        for chunk in chunks:
            results.extend(func(chunk))
            if on_progress:
                on_progress(len(chunk))
        return results
    methods = multiprocessing.get_all_start_methods()
    # fork starts workers in milliseconds and shares the imported modules; the
    # workers only run pure-Python readers, never the parent's thread pools.
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for chunk, part in zip(chunks, pool.map(func, chunks)):
            results.extend(part)
            if on_progress:
                on_progress(len(chunk))
    return results
