"""Run every benchmark and print one Markdown report (paste it into docs/benchmarks.md).

    python3 tasks.py bench            # or: python bench/run_all.py [--files N]
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_ingest_dicom  # noqa: E402
import bench_ingest_table  # noqa: E402
from _common import machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=2000, help="DICOM files in the synthetic tree")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"Machine: {machine()}; date {datetime.date.today().isoformat()}\n")
    print("### Tables to validated manifests\n")
    print(bench_ingest_table.markdown(bench_ingest_table.run(args.repeat)))
    print("\n### DICOM headers\n")
    print(bench_ingest_dicom.markdown(bench_ingest_dicom.run(args.files, args.repeat)))


if __name__ == "__main__":
    main()
