"""The one place where per-file work is spread over processes.

Every source that reads files one by one (DICOM headers, image headers, content
hashes) goes through :func:`map_chunks`. It runs the chunks in this process, in a
local process pool (the default), or on a ``dask.distributed`` cluster
(``scheduler=``): the readers never know which. Whatever the engine and the number
of workers, the results come back in chunk order, so the outputs are the same bytes.

Dask is an optional extra (``pip install 'mdprep[dask]'``), imported only when a
scheduler is given.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from .choices import CONNECT_TIMEOUT, LOCAL_SCHEDULER, SCHEDULER_ENV  # noqa: F401 - used below, and offered here as before
from .errors import EngineError, UsageError, cut_text

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


def _chunks(items: Iterable[T], workers: int, chunk_size: int | None) -> Iterable[Sequence[T]]:
    """A sequence cut into about 4 chunks per worker (16 to 2048 items each); a stream cut as it comes."""
    if isinstance(items, Sequence):
        n = len(items)
        size = chunk_size or max(16, min(2048, -(-n // (max(1, min(workers, n)) * 4))))
        return [items[i : i + size] for i in range(0, n, size)]
    return _stream_chunks(items, chunk_size or STREAM_CHUNK)


def map_chunks(
    func: Callable[[Sequence[T]], R],
    items: Iterable[T],
    *,
    workers: int | None = None,
    chunk_size: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    scheduler: DaskScheduler | str | Any | None = None,
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
        A sequence is cut into about 4 chunks per worker (per worker thread of a
        Dask cluster). Any other iterable (a generator walking a folder) is consumed
        as a stream: each chunk of :data:`STREAM_CHUNK` items
        (:data:`DASK_STREAM_CHUNK` on Dask) goes to a worker as soon as it is
        complete, so producing the items overlaps with processing them.
    workers : int, optional
        Processes to use; ``None`` means all cores, ``1`` runs in this process.
        With ``scheduler="local"``: the number of Dask worker processes to start.
        A running Dask cluster has its own workers: giving ``workers`` with its
        address is a :class:`~mdprep.errors.UsageError`.
    chunk_size : int, optional
        Items per task.
    on_progress : callable, optional
        Called with the number of items finished after each chunk (from a helper
        thread when a local pool runs in parallel; from this thread, as the
        cluster finishes them, on Dask).
    scheduler : DaskScheduler, str or distributed.Client, optional
        Run the chunks on a ``dask.distributed`` cluster instead of local processes:
        a scheduler address (``tcp://host:8786``), ``"local"`` for a
        ``LocalCluster`` of ``workers`` processes started for this call, a
        :class:`DaskScheduler` (an address with a connection timeout), or a
        connected ``distributed.Client``, which is used and left open. See
        :func:`dask_client` and :func:`run_on_dask`.

    Raises
    ------
    UsageError
        Dask is not installed, or ``workers`` was given with a running cluster.
    EngineError
        The scheduler cannot be reached, or the cluster lost a chunk for good.

    Examples
    --------
    >>> map_chunks(lambda chunk: [x * 2 for x in chunk], [1, 2, 3], workers=1)
    [[2, 4, 6]]
    >>> map_chunks(sum, iter(range(600)), workers=1)
    [32640, 98176, 48884]
    """
    if isinstance(items, Sequence) and len(items) == 0:
        return []
    if scheduler is not None:
        with dask_client(scheduler, workers=workers) as (client, address):
            if not _is_local(scheduler):
                check_environment(client, func, address=address)
            threads = _cluster_threads(client)
            # A stream goes in chunks of DASK_STREAM_CHUNK; a list with no worker yet (a cluster that
            # scales up on demand) too, so that the workers that join find work.
            size = chunk_size or (None if threads and isinstance(items, Sequence) else DASK_STREAM_CHUNK)
            chunks = _chunks(items, threads, size)
            return run_on_dask(func, chunks, client, address=address, on_progress=on_progress)
    workers = default_workers() if workers is None else max(1, int(workers))
    chunks = _chunks(items, workers, chunk_size)
    if isinstance(chunks, list):
        workers = min(workers, len(items))  # type: ignore[arg-type]
        if len(chunks) == 1:
            workers = 1
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


# ----------------------------------------------------------------------------- Dask


# SCHEDULER_ENV, LOCAL_SCHEDULER and CONNECT_TIMEOUT live with the other option values in
# mdprep.choices, so that the command line offers --scheduler without importing this module.
#: Items per Dask task when the items arrive as a stream: larger than :data:`STREAM_CHUNK`, as
#: each task costs the scheduler about a millisecond (docs/benchmarks.md, "Scale-out on Dask").
DASK_STREAM_CHUNK = 1024
#: Times a chunk whose task raised is run again. A chunk whose worker died is
#: rescheduled by the scheduler itself, up to ``distributed.scheduler.allowed-failures``
#: (3) deaths, after which the run stops with an :class:`~mdprep.errors.EngineError`.
TASK_RETRIES = 3

_INSTALL_HINT = "install it with pip install 'mdprep[dask]'"


@dataclass(frozen=True)
class DaskScheduler:
    """Where :func:`map_chunks` sends its chunks: a Dask scheduler, and how long to wait for it.

    Parameters
    ----------
    address : str
        ``tcp://host:8786`` (or any ``distributed`` address: ``tls://``, ``ws://``,
        ``host:port``), or ``"local"`` to start a ``LocalCluster`` for the run.
    timeout : float
        Seconds to wait for the scheduler to answer [default: :data:`CONNECT_TIMEOUT`].

    Examples
    --------
    >>> DaskScheduler("tcp://10.0.0.5:8786", timeout=30).address
    'tcp://10.0.0.5:8786'
    """

    address: str
    timeout: float = CONNECT_TIMEOUT

    def __post_init__(self) -> None:
        if not isinstance(self.address, str) or not self.address.strip():
            raise UsageError(
                f"--scheduler {self.address!r}: give a Dask scheduler address such as tcp://HOST:8786, or {LOCAL_SCHEDULER}",
                scheduler=self.address,
            )
        if not self.timeout > 0:
            raise UsageError(f"--scheduler-timeout {self.timeout!r}: give a number of seconds above 0", timeout=self.timeout)


def _is_local(scheduler: Any) -> bool:
    """A LocalCluster started here: its workers run this very environment."""
    address = scheduler.address if isinstance(scheduler, DaskScheduler) else scheduler
    return isinstance(address, str) and address.strip() == LOCAL_SCHEDULER


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise UsageError(f"--scheduler needs dask.distributed ({exc}); {_INSTALL_HINT}") from None
    return distributed


def _unreachable(address: str, timeout: float, reason: str) -> EngineError:
    return EngineError(
        f"cannot reach the Dask scheduler at {address} within {timeout:g} s ({reason}); check the address and that "
        f"the scheduler runs (`dask scheduler` listens on tcp://HOST:8786), raise --scheduler-timeout for a slow "
        f"network, or use --scheduler {LOCAL_SCHEDULER} to start a cluster on this machine",
        scheduler=address,
    )


def _os_reason(exc: BaseException) -> str:
    """What the system said (``Connection refused``, ``Name or service not known``), found along the exception's chain."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
        e = e.__cause__ or e.__context__
    return "no answer"


def _ask_identity(address: str, timeout: float) -> dict:
    """The scheduler's ``identity`` reply, within about ``timeout`` seconds all told.

    ``distributed`` bounds only the TCP connection by its timeout, not the handshake
    after it: a port that accepts and never answers would hang ``Client(address)``
    for ever. This asks once, bounded, in a thread of its own (a caller's running
    event loop, in a notebook, is left alone).
    """
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from distributed.comm import connect
    from distributed.security import Security

    async def ask() -> dict:
        async def exchange() -> dict:
            comm = await connect(address, timeout=timeout, **Security().get_connection_args("client"))
            try:
                await comm.write({"op": "identity", "n_workers": 0, "reply": True})
                return await comm.read()
            finally:
                comm.abort()

        # connect() gives up after `timeout` with the system's reason (refused, unknown host); this
        # outer bound, a little later, only catches a peer that accepts and then says nothing.
        return await asyncio.wait_for(exchange(), timeout * 1.25 + 0.25)

    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, ask()).result()


def _check_scheduler(spec: DaskScheduler) -> None:
    """Raise a one-line error unless ``spec.address`` is a Dask scheduler answering in time."""
    address = spec.address
    try:
        identity = _ask_identity(address, spec.timeout)
    except ValueError as exc:  # malformed: no port, unknown scheme
        hint = (
            "that is a web address (the dashboard's?); the scheduler listens on tcp://HOST:8786"
            if re.match(r"https?://", address)
            else "give tcp://HOST:PORT (the scheduler's port, 8786 by default)"
        )
        raise EngineError(f"--scheduler {address!r} is not a Dask scheduler address ({exc}); {hint}, or {LOCAL_SCHEDULER}", scheduler=address) from None
    except (OSError, TimeoutError) as exc:
        raise _unreachable(address, spec.timeout, _os_reason(exc)) from None
    kind = identity.get("type") if isinstance(identity, dict) else None
    if kind != "Scheduler":
        what = f"a Dask {kind}" if kind else "something else (a Dask worker or nanny?)"
        raise EngineError(
            f"{address} answers, but is {what}, not a Dask scheduler; give the scheduler's address "
            "(`dask scheduler` prints it: tcp://HOST:8786)",
            scheduler=address,
        )


@contextlib.contextmanager
def dask_client(scheduler: DaskScheduler | str | Any, *, workers: int | None = None) -> Iterator[tuple[Any, str]]:
    """A connected ``distributed.Client`` and the scheduler's address, for a ``with`` block.

    Parameters
    ----------
    scheduler : DaskScheduler, str or distributed.Client
        An address, ``"local"`` (a ``LocalCluster`` of ``workers`` single-threaded
        processes, closed with the block), or a client, used as is and left open.
    workers : int, optional
        Worker processes of ``"local"`` [default: all cores]; refused with any other scheduler.

    Raises
    ------
    UsageError
        Dask is not installed, or ``workers`` given for a running cluster.
    EngineError
        The scheduler is malformed, unreachable within the timeout, or not a scheduler.
    """
    distributed = _import_distributed()
    if isinstance(scheduler, distributed.Client):
        if workers is not None:
            raise UsageError("workers: a running Dask cluster has its own workers; scale the cluster instead", workers=workers)
        yield scheduler, scheduler.scheduler.address
        return
    spec = scheduler if isinstance(scheduler, DaskScheduler) else DaskScheduler(scheduler)
    address = spec.address.strip()
    if address == LOCAL_SCHEDULER:
        import logging
        import warnings

        n = default_workers() if workers is None else max(1, int(workers))
        with warnings.catch_warnings():
            # The scheduler's small HTTP server (no dashboard) takes another port when 8787 is busy: nothing to report.
            warnings.filterwarnings("ignore", message=r"Port \d+ is already in use")
            # One thread per process: the readers are pure Python, held by the GIL.
            cluster = distributed.LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR
            )
        try:
            with distributed.Client(cluster, set_as_default=False) as client:
                yield client, cluster.scheduler_address
        finally:
            cluster.close()
        return
    if workers is not None:
        raise UsageError(
            f"--workers {workers} starts that many workers with --scheduler {LOCAL_SCHEDULER} only; the cluster at "
            f"{address} has its own workers (scale the cluster instead, or leave --workers out)",
            workers=workers,
            scheduler=address,
        )
    _check_scheduler(DaskScheduler(address, spec.timeout))
    try:
        client = distributed.Client(address, timeout=spec.timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise _unreachable(address, spec.timeout, _os_reason(exc)) from None
    with client:
        yield client, address


def check_environment(client: Any, func: Callable | None = None, *, address: str = "") -> None:
    """Raise unless the scheduler and every worker of ``client`` import mdprep at this version (and ``func``'s module).

    The scheduler unpickles the tasks and the workers run them: a cluster without
    mdprep would fail every task (a worker that cannot unpickle a task leaves it
    pending for ever), and another version of mdprep could write other bytes.
    Workers that join later are not checked.

    Raises
    ------
    EngineError
        Naming the scheduler or workers that lack the module or run another version.
    """
    import pkgutil

    from . import __version__

    module = getattr(getattr(func, "func", func), "__module__", None) or "mdprep"
    names = ["mdprep:__version__"] + ([f"{module}:__name__"] if module.split(".")[0] != "mdprep" else [])
    where = address or "the Dask scheduler"
    for name in names:
        answers: dict[str, Any] = {}
        try:
            answers["the scheduler"] = client.run_on_scheduler(pkgutil.resolve_name, name)
        except Exception as exc:  # noqa: BLE001 - the scheduler's own error, reported below
            answers["the scheduler"] = exc
        answers.update({f"worker {w}": v for w, v in client.run(pkgutil.resolve_name, name, on_error="return").items()})
        failed = {k: v for k, v in answers.items() if isinstance(v, BaseException)}
        if failed:
            first = next(iter(failed.values()))
            who = ", ".join(list(failed)[:3]) + (f" and {len(failed) - 3} more" if len(failed) > 3 else "")
            missing = name.split(":")[0]
            fix = (
                f"install mdprep {__version__} (pip install 'mdprep[dask]=={__version__}')"
                if missing == "mdprep"
                else f"make the module {missing!r} importable"
            )
            raise EngineError(
                f"{who} of the Dask cluster at {where} cannot import {missing} ({type(first).__name__}: "
                f"{cut_text(str(first))}); {fix} where the scheduler and the workers run",
                scheduler=address,
            )
        if name == "mdprep:__version__":
            other = {k: v for k, v in answers.items() if v != __version__}
            if other:
                k, v = next(iter(other.items()))
                more = f" and {len(other) - 1} more" if len(other) > 1 else ""
                raise EngineError(
                    f"{k}{more} of the Dask cluster at {where} run mdprep {v}, this machine {__version__}; the outputs could "
                    f"differ: install mdprep {__version__} (pip install 'mdprep[dask]=={__version__}') where the scheduler and the workers run",
                    scheduler=address,
                )


def _cluster_threads(client: Any) -> int:
    """Threads of the workers connected now (0 while a cluster waits for its first worker)."""
    return int(sum(client.nthreads().values()))


def run_on_dask(
    func: Callable[[Sequence[T]], R],
    chunks: Iterable[Sequence[T]],
    client: Any,
    *,
    address: str = "",
    on_progress: Callable[[int], None] | None = None,
) -> list[R]:
    """Run ``func`` on each chunk on the cluster of ``client``; return the results in chunk order.

    Each chunk is submitted as soon as ``chunks`` yields it (a walk still going on
    keeps feeding the cluster), with :data:`TASK_RETRIES` retries; a chunk whose
    worker died is run again elsewhere by the scheduler. Results are collected as
    the cluster finishes them (``distributed.as_completed``), ``on_progress`` told
    each chunk's size then, and freed from the cluster at once.

    Raises
    ------
    EngineError
        A chunk killed every worker it was given (``KilledWorker``), or the
        connection to the scheduler was lost (the chunks still running are cancelled).
    Exception
        Whatever ``func`` raised on its last retry: a bug, as chunk functions turn
        per-file failures into data.
    """
    from concurrent.futures import CancelledError

    from distributed import KilledWorker, as_completed

    name = re.sub(r"[^A-Za-z0-9_]+", "", getattr(getattr(func, "func", func), "__name__", "")) or "chunk"
    run = uuid.uuid4().hex[:12]
    finished = as_completed(loop=client.loop)
    waiting: dict[Any, tuple[int, Any]] = {}  # key -> (chunk index, future)
    results: list[Any] = []
    sizes: list[int] = []
    firsts: list[Any] = []
    where = address or "the Dask scheduler"

    def lost(reason: object) -> EngineError:
        return EngineError(
            f"lost the connection to the Dask scheduler at {where} ({cut_text(' '.join(str(reason).split()) or type(reason).__name__)}); "
            "nothing was written: check that the scheduler still runs and run the command again",
            scheduler=address,
        )

    def collect(batch: list) -> None:
        """Fetch the results of a batch of finished futures in one round trip, in any order."""
        done = []
        for future in batch:
            if future.status == "cancelled":
                try:
                    reason: object = future.exception()
                except BaseException as exc:  # noqa: BLE001 - a cancelled future raises its reason
                    reason = exc
                raise lost(reason)
            if future.status == "error":
                exc = future.exception()
                if isinstance(exc, KilledWorker):
                    i = waiting[future.key][0]
                    raise EngineError(
                        f"the chunk of {sizes[i]} file(s) starting at {firsts[i]!r} killed {exc.allowed_failures + 1} Dask "
                        f"workers in turn (the last {exc.last_worker.address}); nothing was written: read those workers' "
                        "logs (out of memory? raise the workers' memory limit) and run the command again",
                        scheduler=address,
                        first_item=firsts[i],
                    ) from None
                raise exc.with_traceback(future.traceback())
            done.append(future)
        try:
            values = client.gather(done)
        except (CancelledError, OSError) as exc:
            raise lost(exc) from None
        for future, value in zip(done, values):
            i, _ = waiting.pop(future.key)
            results[i] = value
            if on_progress:
                on_progress(sizes[i])

    try:
        for i, chunk in enumerate(chunks):
            future = client.submit(func, chunk, key=f"mdprep-{name}-{run}-{i}", retries=TASK_RETRIES, pure=False)
            waiting[future.key] = (i, future)
            results.append(None)
            sizes.append(len(chunk))
            firsts.append(chunk[0])
            finished.add(future)
            ready = finished.next_batch(block=False)
            if ready:
                collect(ready)
        for batch in finished.batches():
            collect(batch)
    except BaseException:
        # Interrupted, failed or lost: leave nothing running on the cluster.
        with contextlib.suppress(Exception):
            client.cancel([f for _, f in waiting.values()])
        raise
    return results

