"""Run every benchmark and print one Markdown report (paste it into docs/benchmarks.md).

    python3 tasks.py bench            # or: python bench/run_all.py [--files N ...]

Needs the benchmark extras: pip install -e '.[bench]' (tasks.py bench does it).
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_audit  # noqa: E402
import bench_ingest_dicom  # noqa: E402
import bench_ingest_table  # noqa: E402
import bench_split  # noqa: E402
import bench_train  # noqa: E402
from _common import machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, nargs="+", default=[2000, 8000, 20000], help="DICOM tree sizes")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"Machine: {machine()}; date {datetime.date.today().isoformat()}\n")
    print("### Tables to validated manifests\n")
    print(bench_ingest_table.markdown(bench_ingest_table.run(args.repeat)))
    print("\n### Splits\n")
    print(bench_split.markdown(bench_split.run()))
    print("\n### Leakage audit\n")
    print(bench_audit.markdown(bench_audit.run()))
    print("\n### Trainer throughput\n")
    print(bench_train.markdown(bench_train.run()))
    print("\n### DICOM headers\n")
    for files in args.files:
        print(bench_ingest_dicom.markdown(bench_ingest_dicom.run(files, args.repeat)), end="\n\n")


if __name__ == "__main__":
    main()
