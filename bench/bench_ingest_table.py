"""NIH ChestX-ray14 (112,120 rows) and CheXpert (223,414 rows) tables to validated Parquet manifests.

Baseline, measured in the same run: what one writes by hand with pandas
(read_csv, str.get_dummies on 'Finding Labels', to_parquet), with no validation.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from _common import median, real_table, timeit

from mdprep.ingest import ingest_table
from mdprep.manifest import read_manifest, write_manifest


def run(repeat: int = 5) -> list[dict]:
    out = Path(tempfile.mkdtemp())
    rows = []
    for name, preset in (("nih", "nih"), ("chexpert", "chexpert")):
        path = real_table(name)
        target = out / f"{name}.parquet"

        def mdprep_lib():
            write_manifest(ingest_table(path, preset=preset).manifest, target)

        def pandas_baseline():
            df = pd.read_csv(path)
            if preset == "nih":
                df = pd.concat([df, df["Finding Labels"].str.get_dummies(sep="|")], axis=1)
            df.to_parquet(out / f"{name}-baseline.parquet")

        def mdprep_cli():
            subprocess.run(
                [sys.executable, "-m", "mdprep", "ingest", "table", str(path), "--preset", preset, "-o", str(target), "-q"],
                check=True,
            )

        mdprep_lib()  # warm the page cache and imports
        pandas_baseline()
        lib = timeit(mdprep_lib, repeat)
        base = timeit(pandas_baseline, repeat)
        cli = timeit(mdprep_cli, max(3, repeat // 2))
        m = read_manifest(target)
        rows.append(
            {
                "table": path.name,
                "rows": len(m.frame),
                "patients": int(m.frame["patient_id"].nunique()),
                "labels": len(m.labels),
                "mdprep_s": median(lib),
                "cli_s": median(cli),
                "baseline_s": median(base),
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| table | rows | patients | labels | mdprep library, s | `mdprep ingest table` (whole process), s | pandas baseline, s | baseline / mdprep |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['table']} | {r['rows']:,} | {r['patients']:,} | {r['labels']} | {r['mdprep_s']:.3f} | {r['cli_s']:.3f} | "
            f"{r['baseline_s']:.3f} | {r['baseline_s'] / r['mdprep_s']:.2f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(run()))
