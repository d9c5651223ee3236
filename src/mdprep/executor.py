"""The one place where per-file work is spread over processes.

Every source that reads files one by one (DICOM headers, image headers, and later
content hashes) goes through :func:`map_chunks`, so a distributed engine such as
Dask can be plugged in here without touching the readers.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """All cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


#: Items per task when the items arrive as a stream and their number is unknown.
STREAM_CHUNK = 256


#: Above this resident size, forking the parent costs more than a fork server.
FORK_RSS_LIMIT = 1 << 30


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return 0


def _pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes: forked from a light parent, else from a small fork server.

    fork starts workers in milliseconds and shares the imported modules (the
    workers only run pure-Python readers, never the parent's thread pools). A parent
    holding gigabytes (a notebook with data loaded) makes every fork copy its page
    tables and fault on its pages, so such a parent uses a fork server instead.
    """
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and _resident_bytes() < FORK_RSS_LIMIT:
        return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))
    if "forkserver" in methods:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["mdprep.ingest.dicom", "mdprep.ingest.images", "mdprep.hashing"])
        return ProcessPoolExecutor(max_workers=workers, mp_context=context)
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def _stream_chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def map_chunks(
    func: Callable[[Sequence[T]], R],
    items: Iterable[T],
    *,
    workers: int | None = None,
    chunk_size: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> list[R]:
    """Apply ``func`` to consecutive chunks of ``items``; return one result per chunk, in order.

    Parameters
    ----------
    func : callable
        Takes a chunk (a sequence of items) and returns one result for the chunk
        (a list, an Arrow record batch, ...). It must be picklable (a module-level
        function or a ``functools.partial`` of one) and should turn per-item
        failures into data rather than raise. Returning columnar data keeps the
        work of the parent process, which no worker can share, small.
    items : sequence or iterable
        A sequence is cut into about 4 chunks per worker. Any other iterable (a
        generator walking a folder) is consumed as a stream: each chunk of
        :data:`STREAM_CHUNK` items goes to a worker as soon as it is complete, so
        producing the items overlaps with processing them.
    workers : int, optional
        Processes to use; ``None`` means all cores, ``1`` runs in this process.
    chunk_size : int, optional
        Items per task.
    on_progress : callable, optional
        Called with the number of items finished after each chunk (from a helper
        thread when workers run in parallel).

    Examples
    --------
    >>> map_chunks(lambda chunk: [x * 2 for x in chunk], [1, 2, 3], workers=1)
    [[2, 4, 6]]
    >>> map_chunks(sum, iter(range(600)), workers=1)
    [32640, 98176, 48884]
    """
    workers = default_workers() if workers is None else max(1, int(workers))
    if isinstance(items, Sequence):
        n = len(items)
        if n == 0:
            return []
        workers = min(workers, n)
        size = chunk_size or max(16, min(2048, -(-n // (workers * 4))))
        chunks: Iterable[Sequence[T]] = [items[i : i + size] for i in range(0, n, size)]
        if len(chunks) == 1:  # type: ignore[arg-type]
            workers = 1
    else:
        chunks = _stream_chunks(items, chunk_size or STREAM_CHUNK)
    results: list[R] = []
    if workers == 1:
        for chunk in chunks:
            results.append(func(chunk))
            if on_progress:
                on_progress(len(chunk))
        return results
    with _pool(workers) as pool:
        futures = []
        try:
            for chunk in chunks:
                future = pool.submit(func, chunk)
                if on_progress:
                    future.add_done_callback(lambda _f, k=len(chunk): on_progress(k))
                futures.append(future)
            results = [f.result() for f in futures]
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM) or failed: drop the chunks not started yet
            # instead of working through them before the error can surface.
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return results
