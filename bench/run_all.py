"""Run every benchmark and print one Markdown report (paste it into docs/benchmarks.md).

    python3 tasks.py bench            # or: python bench/run_all.py [--files N ...]

Each benchmark runs in a process of its own, so that memory or threads left by
one (a million-row frame, torch) cannot slow another. Needs the benchmark extras:
pip install -e '.[bench]' (tasks.py bench does it).
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import machine  # noqa: E402

SECTIONS = (
    ("Tables to validated manifests", "bench_ingest_table", "print(m.markdown(m.run()))"),
    ("Table ingest, whole process", "bench_ingest_speed", "print(m.markdown(m.run()))"),
    ("Splits", "bench_split", "print(m.markdown(m.run()))"),
    ("Start-up and whole-process split", "bench_startup", "print(m.markdown(m.run()))"),
    ("Link-aware splits", "bench_link", "print(m.markdown(m.run()))"),
    ("Leakage audit", "bench_audit", "print(m.markdown(m.run()))"),
    ("Audit and split at scale", "bench_scale", "print(m.main([]))"),
    ("Trainer throughput", "bench_train", "print(m.markdown(m.run()))"),
    ("Trainer throughput, PyTorch and Keras on the same data", "bench_train_frameworks", "print(m.markdown(m.run()))"),
    ("Incremental updates", "bench_update", "print(m.markdown(m.run()))"),
    ("Hashing throughput", "bench_hash", "print(m.markdown(m.run()))"),
    ("Series-level DICOM ingest", "bench_series", "print(m.markdown(m.run()))"),
    ("Scale-out on Dask", "bench_dask", "print(m.markdown(m.run()))"),
    ("DICOM headers from object storage (S3)", "bench_s3", "print(m.report())"),
)


def section(module: str, code: str) -> str:
    script = f"import sys; sys.path.insert(0, {str(HERE)!r}); import {module} as m; {code}"
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, nargs="+", default=[2000, 8000, 20000], help="DICOM tree sizes")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"Machine: {machine()}; date {datetime.date.today().isoformat()}\n")
    for title, module, code in SECTIONS:
        print(f"### {title}\n")
        print(section(module, code) + "\n")
    print("### DICOM headers\n")
    for files in args.files:
        print(section("bench_ingest_dicom", f"print(m.markdown(m.run({files}, {args.repeat})))") + "\n")


if __name__ == "__main__":
    main()
