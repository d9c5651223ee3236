"""Scale-out on Dask: `ingest dicom` with the local engine against a Dask LocalCluster.

The tree: 20,000 small synthetic DICOM files (8x8 pixels, the usual header of about
120 elements with 30 private tags), generated once into bench/.cache. Every timing
runs on a warm page cache, so it measures the per-file CPU cost and the engine's
overhead, not a disk.

Configurations, timed in interleaved rounds (each round runs each configuration
once, in a rotating order) and reported as medians:

* the local engine in this process (``workers=1``, no pool): the baseline;
* the local process pool with 2 workers (today's default on a 2-core machine);
* a running LocalCluster (``processes=True``, 1 thread per worker) with 1 and
  with 2 workers, reached by its address as ``--scheduler tcp://...`` would;
* ``scheduler="local"``: a LocalCluster of 2 workers started and closed by the
  call, as ``mdprep ingest dicom --scheduler local --workers 2`` does.

Also measured, for the worked estimate in docs/benchmarks.md: the walk alone, the
check of a ``--files-from`` list alone, the header reading alone (``_read_chunk`` over
the whole list, one process), the manifest's writing, and the scheduler's time per
task (empty tasks on the running cluster).
"""

from __future__ import annotations

import functools
import io
import itertools
import logging
import warnings
from pathlib import Path

from _common import dicom_tree, median, timed

from mdprep.executor import DASK_STREAM_CHUNK, map_chunks
from mdprep.ingest import ingest_dicom
from mdprep.ingest.files import collect_files, iter_tree
from mdprep.manifest import write_manifest


def tree(files: int) -> Path:
    """``files`` small DICOM files (8x8 pixels), written once."""
    return dicom_tree(f"dicom-small-{files}", files, shape=(8, 8), seed=2, private_tags=30)


def _manifest_bytes(result) -> bytes:
    buf = io.BytesIO()
    write_manifest(result.manifest, buf)
    return buf.getvalue() + result.errors.to_csv(index=False).encode()


def _cluster(n: int):
    import distributed

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Port \d+ is already in use")
        return distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR)


def run(files: int = 20000, repeat: int = 5) -> dict:
    from mdprep.dicom_header import header_columns
    from mdprep.ingest.dicom import RESERVED_COLUMNS, _read_chunk

    root = tree(files)
    for p in root.rglob("*"):  # warm the page cache
        if p.is_file():
            p.read_bytes()
    one, two = _cluster(1), _cluster(2)
    try:
        configs = {
            "local_1": lambda: ingest_dicom(root, workers=1),
            "pool_2": lambda: ingest_dicom(root, workers=2),
            "dask_1": lambda: ingest_dicom(root, scheduler=one.scheduler_address),
            "dask_2": lambda: ingest_dicom(root, scheduler=two.scheduler_address),
            "dask_local_2": lambda: ingest_dicom(root, scheduler="local", workers=2),
        }
        # The engines write the same bytes; checked once before timing.
        reference = _manifest_bytes(configs["local_1"]())
        for name, fn in configs.items():
            assert _manifest_bytes(fn()) == reference, f"{name} wrote other bytes"
        times: dict[str, list[float]] = {k: [] for k in configs}
        names = list(configs)
        for r in range(repeat):
            for name in names[r % len(names):] + names[: r % len(names)]:
                times[name].append(timed(configs[name]))

        paths = list(itertools.islice(iter_tree(str(root), []), None))
        columns = header_columns((), reserved=RESERVED_COLUMNS)
        read = functools.partial(_read_chunk, root=str(root), columns=columns)
        t_walk = median([timed(lambda: list(iter_tree(str(root), []))) for _ in range(repeat)])
        t_list = median([timed(lambda: collect_files(str(root), paths)) for _ in range(repeat)])
        t_read = median([timed(lambda: map_chunks(read, paths, workers=1, chunk_size=256)) for _ in range(repeat)])
        batch_bytes = sum(c.batch.nbytes for c in map_chunks(read, paths, workers=1, chunk_size=256))
        result = configs["local_1"]()
        t_write = median([timed(lambda: write_manifest(result.manifest, io.BytesIO())) for _ in range(repeat)])
        # Scheduler time per task: 500 empty tasks (len of a one-item chunk) on the 2-worker cluster.
        tasks = 500
        t_tasks = median([timed(lambda: map_chunks(len, list(range(tasks)), chunk_size=1, scheduler=two.scheduler_address)) for _ in range(3)])
    finally:
        two.close()  # the reverse of the start: each puts back the log levels it found
        one.close()
    n = len(paths)
    return {
        "files": n,
        "repeat": repeat,
        "seconds": {k: median(v) for k, v in times.items()},
        "walk_us": t_walk / n * 1e6,
        "list_us": t_list / n * 1e6,
        "read_us": t_read / n * 1e6,
        "task_ms": t_tasks / tasks * 1e3,
        "chunks": -(-n // DASK_STREAM_CHUNK),
        "row_bytes": batch_bytes / n,
        "write_us": t_write / n * 1e6,
    }


ROWS = (
    ("local_1", "local engine, 1 process (`--workers 1`, baseline)"),
    ("pool_2", "local process pool, 2 processes (`--workers 2`)"),
    ("dask_1", "Dask LocalCluster already running, 1 worker (`--scheduler tcp://...`)"),
    ("dask_2", "Dask LocalCluster already running, 2 workers (`--scheduler tcp://...`)"),
    ("dask_local_2", "`--scheduler local --workers 2` (cluster started and closed by the run)"),
)


def markdown(r: dict) -> str:
    s = r["seconds"]
    base = s["local_1"]
    lines = [
        f"Tree: {r['files']:,} small DICOM files (8x8 pixels, full header); `ingest_dicom` wall time, median of "
        f"{r['repeat']} interleaved rounds, warm cache. Every configuration wrote the same manifest and error bytes.",
        "",
        "| engine | seconds | files/s | vs baseline |",
        "|---|---:|---:|---:|",
    ]
    for key, label in ROWS:
        lines.append(f"| {label} | {s[key]:.2f} | {r['files'] / s[key]:,.0f} | {base / s[key]:.2f}x |")
    lines += [
        "",
        "Per-file and per-task costs measured in the same run (inputs of the estimate below):",
        "",
        "| cost | value |",
        "|---|---:|",
        f"| header read and row building, per file (`_read_chunk`, 1 process) | {r['read_us']:.0f} µs |",
        f"| walk of the tree, per file (`iter_tree`, client side) | {r['walk_us']:.1f} µs |",
        f"| check of a listed path instead (`--files-from`: `collect_files`, an lstat each, client side) | {r['list_us']:.1f} µs |",
        f"| scheduler time per task, 500 empty tasks in a row on the 2-worker cluster | {r['task_ms']:.2f} ms |",
        f"| writing the manifest, per row (`write_manifest`, client side) | {r['write_us']:.1f} µs |",
        f"| Arrow bytes per row the client gathers (preset columns) | {r['row_bytes']:.0f} B |",
        f"| Dask tasks for this tree (chunks of {DASK_STREAM_CHUNK:,} files while the walk streams) | {r['chunks']:,} |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(markdown(run(args.files, args.repeat)))
