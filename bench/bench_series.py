"""Series-level DICOM ingest (``ingest dicom --level series``) beside the instance-level run on the same tree.

The tree: a synthetic CT cohort of 100 axial series of 200 slices each (20,000 files,
16x16 int16 pixels: small files, so that the run measures header reading and the
series step, not the disk), written once to bench/.cache by
:func:`mdprep.synthetic.write_ct_tree`. Warm page cache (a first pass reads every file).

Runs alternate (instance, series, instance, series, ...) so that a change in the load
of the machine hits both levels alike; the table gives the median of each. The
series level reads six more attributes per file and adds the series step (sort,
group-bys, checks); its cost in the parent process is timed on its own
(``series_rows`` on the instance rows).
"""

from __future__ import annotations

import time
from pathlib import Path

from _common import CACHE, median

from mdprep.ingest import ingest_dicom
from mdprep.ingest.series import SERIES_TAGS, series_rows

SERIES, SLICES, SHAPE = 100, 200, (16, 16)


def tree(series: int = SERIES, slices: int = SLICES) -> Path:
    """The CT tree (one series per patient), written once."""
    from mdprep.synthetic import write_ct_tree

    root = CACHE / f"ct-{series}x{slices}"
    done = CACHE / f"ct-{series}x{slices}.complete"
    if not done.exists():
        write_ct_tree(root, patients=series, slices=slices, shape=SHAPE, seed=3, plant_problems=False)
        done.write_text("ok")
    return root


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(series: int = SERIES, slices: int = SLICES, repeat: int = 5, workers: tuple[int, ...] = (1, 2)) -> dict:
    root = tree(series, slices)
    files = sorted(root.rglob("*.dcm"))
    for p in files:  # warm the page cache
        p.read_bytes()
    check = ingest_dicom(root, level="series", workers=1)
    assert check.report.ingested == series and check.report.series.instances == len(files), check.report
    assert check.report.series.flagged == 0, check.report.series
    times: dict[str, list[float]] = {}
    for _ in range(repeat):
        for w in workers:
            times.setdefault(f"instance_{w}", []).append(_timed(lambda: ingest_dicom(root, workers=w)))
            times.setdefault(f"series_{w}", []).append(_timed(lambda: ingest_dicom(root, workers=w, level="series")))
    # The series step alone, on the rows an instance-level run with the geometry attributes gives.
    rows = ingest_dicom(root, workers=2, tags=list(SERIES_TAGS)).manifest.frame
    times["series_step"] = [_timed(lambda: series_rows(rows)) for _ in range(repeat)]
    return {"files": len(files), "series": series, "slices": slices, "repeat": repeat, "workers": workers, "times": times}


def markdown(r: dict) -> str:
    t = {k: median(v) for k, v in r["times"].items()}
    n = r["files"]
    lines = [
        f"Tree: {n:,} files ({r['series']} axial CT series x {r['slices']} slices, 16x16 pixels); "
        f"files per second, median of {r['repeat']} interleaved runs, warm cache.",
        "",
        "| workers | `--level instance` files/s | `--level series` files/s | series / instance |",
        "|---:|---:|---:|---:|",
    ]
    for w in r["workers"]:
        i, s = n / t[f"instance_{w}"], n / t[f"series_{w}"]
        lines.append(f"| {w} | {i:,.0f} | {s:,.0f} | {s / i:.2f}x |")
    lines += [
        "",
        f"The series step alone (`series_rows` on the {n:,} instance rows, in the parent process): "
        f"{t['series_step'] * 1000:.0f} ms, {n / t['series_step']:,.0f} rows/s.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(run()))
