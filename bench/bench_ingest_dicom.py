"""DICOM header ingest: files per second against a plain pydicom loop, and with 2 workers.

The tree: synthetic DX files with realistic headers (about 120 elements, a
sequence, private tags) and 512x512 16-bit pixel data (about 0.5 MB each), in
bench/.cache. All timings run on a warm page cache (a first pass reads every file).

Baselines, measured in the same run on the same tree, single process:
* ``pydicom.dcmread(path, stop_before_pixels=True)`` per file, nothing else;
* the same plus reading the preset's attributes (what an ingest loop must do).
"""

from __future__ import annotations

import os
from pathlib import Path

from _common import dicom_tree, median, timeit

from mdprep.dicom_header import PRESET_TAGS
from mdprep.ingest import ingest_dicom


def tree(files: int) -> Path:
    return dicom_tree(f"dicom-{files}", files, shape=(512, 512), seed=1, private_tags=60)


def run(files: int = 2000, repeat: int = 5) -> dict:
    import pydicom

    root = tree(files)
    paths = sorted(str(p) for p in root.rglob("*.dcm"))
    keywords = [k for k in PRESET_TAGS.values() if k != "TransferSyntaxUID"]

    def bare():
        for p in paths:
            pydicom.dcmread(p, stop_before_pixels=True)

    def with_values():
        for p in paths:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            [ds.get(k) for k in keywords]
            ds.file_meta.get("TransferSyntaxUID")

    def mdprep(workers):
        return lambda: ingest_dicom(root, workers=workers)

    for p in paths:  # warm the page cache
        with open(p, "rb") as fh:
            fh.read()
    result = ingest_dicom(root, workers=1)
    assert result.report.ingested == len(paths), result.report
    t = {
        "pydicom": timeit(bare, repeat),
        "pydicom_values": timeit(with_values, repeat),
        "mdprep_1": timeit(mdprep(1), repeat),
        "mdprep_2": timeit(mdprep(2), repeat),
    }
    size = sum(os.path.getsize(p) for p in paths) / len(paths)
    return {"files": len(paths), "mean_size": size, **{k: len(paths) / median(v) for k, v in t.items()}}


def markdown(r: dict) -> str:
    base = r["pydicom"]
    lines = [
        f"Tree: {r['files']:,} files, {r['mean_size'] / 1e6:.2f} MB each on average; files per second (median of 5), warm cache.",
        "",
        "| reader | files/s | vs plain pydicom loop |",
        "|---|---:|---:|",
        f"| `pydicom.dcmread(stop_before_pixels=True)` loop, 1 process (baseline) | {base:,.0f} | 1.00x |",
        f"| same loop, also reading the preset's attributes | {r['pydicom_values']:,.0f} | {r['pydicom_values'] / base:.2f}x |",
        f"| `mdprep.ingest.ingest_dicom(workers=1)` | {r['mdprep_1']:,.0f} | {r['mdprep_1'] / base:.2f}x |",
        f"| `mdprep.ingest.ingest_dicom(workers=2)` | {r['mdprep_2']:,.0f} | {r['mdprep_2'] / base:.2f}x |",
        "",
        f"2 workers against 1: {r['mdprep_2'] / r['mdprep_1']:.2f}x.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, nargs="+", default=[2000, 8000, 20000])
    args = parser.parse_args()
    for n in args.files:
        print(markdown(run(n)), end="\n\n")
