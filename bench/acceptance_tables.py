"""Acceptance on real public tables: each one ingests with the one command docs/datasets.md shows.

    python3 tasks.py acceptance        # or: python bench/acceptance_tables.py

The tables come from the torchxrayvision wheel (fetched into bench/.data/, never committed).
For each table the script runs the documented `mdprep ingest table` command in a process of
its own, reads the manifest it wrote, and compares rows, patients and every label's positive
count with the same numbers computed here independently with plain pandas. CheXpert is then
split and given class weights, as a user would. Prints a Markdown table (the one in
docs/datasets.md) and exits 1 when any number disagrees.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import real_table  # noqa: E402

from mdprep.manifest import read_manifest  # noqa: E402


@dataclass(frozen=True)
class Expected:
    rows: int
    patients: int
    positives: dict[str, int]
    #: Optional extra counts, "column=value" -> rows (a label's 0s, a metadata column's values).
    values: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    name: str
    table: str  # key of _common.TABLES
    args: tuple[str, ...]  # after `mdprep ingest table FILE`
    expected: Callable[[Path], Expected]


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _padchest(path: Path) -> Expected:
    df = _read(path)
    # Cells are Python list literals; 'nan' (103 rows) and '' mean no label.
    names = df["Labels"].map(lambda s: {str(x).strip() for x in ast.literal_eval(s) if str(x).strip()} if s.startswith("[") else set())
    counts = pd.Series([n for items in names for n in items]).value_counts()
    return Expected(len(df), df["PatientID"].nunique(), counts.to_dict())


def _vindr(path: Path) -> Expected:
    df = _read(path)
    # Majority of readers: a reader marks a finding on an image if any of their boxes has it.
    votes = df.drop_duplicates(["image_id", "rad_id", "class_name"])
    readers = df.groupby("image_id")["rad_id"].nunique()
    marked = votes.groupby(["image_id", "class_name"]).size()
    share = marked / readers.reindex(marked.index.get_level_values("image_id")).to_numpy()
    positives = share[share > 0.5].groupby(level="class_name").size()
    return Expected(df["image_id"].nunique(), df["image_id"].nunique(), positives.to_dict())


def _siim(path: Path) -> Expected:
    df = _read(path)
    df.columns = [c.strip() for c in df.columns]
    pos = df.loc[df["EncodedPixels"].str.strip() != "-1", "ImageId"].nunique()
    return Expected(df["ImageId"].nunique(), df["ImageId"].nunique(), {"Pneumothorax": pos})


def _rsna_labels(path: Path) -> Expected:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    pos = df.loc[df["Target"] == "1", "patientId"].nunique()
    return Expected(df["patientId"].nunique(), df["patientId"].nunique(), {"Pneumonia": pos})


def _rsna_headers(path: Path) -> Expected:
    df = _read(path)
    values = {f"sex={k}": v for k, v in df["PatientSex"].value_counts().items()}
    values.update({f"view={k}": v for k, v in df["ViewPosition"].value_counts().items()})
    return Expected(df["Filename"].nunique(), df["PatientID"].nunique(), {}, values)


GOOGLE_LABELS = ("Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass")


def _google(path: Path) -> Expected:
    df = _read(path)
    return Expected(len(df), df["Patient ID"].nunique(), {c: int((df[c] == "YES").sum()) for c in GOOGLE_LABELS})


def _chexpert(path: Path) -> Expected:
    df = pd.read_csv(path)
    labels = df.columns[5:]
    patients = df["Path"].str.extract(r"(patient\d+)/")[0].nunique()
    # --blank negative: a blank cell is a negative, unless the whole row is blank (unlabeled).
    unlabeled = df[labels].isna().all(axis=1)
    negatives = {f"{c}=0": int(((df[c] == 0) | (df[c].isna() & ~unlabeled)).sum()) for c in labels}
    return Expected(len(df), patients, {c: int((df[c] == 1).sum()) for c in labels}, negatives)


CASES = (
    Case("PadChest", "padchest", ("--image-col", "ImageID", "--patient-col", "PatientID", "--study-col", "StudyID", "--labels-col", "Labels"), _padchest),
    Case(
        "VinDr-CXR",
        "vindr",
        ("--patient-col", "image_id", "--labels-col", "class_name", "--aggregate", "majority", "--reader-col", "rad_id"),
        _vindr,
    ),
    Case(
        "SIIM-ACR pneumothorax",
        "siim",
        ("--image-col", "ImageId", "--patient-col", "ImageId", "--label-when", "Pneumothorax:EncodedPixels!=-1", "--aggregate", "any"),
        _siim,
    ),
    Case(
        "RSNA pneumonia labels",
        "rsna_labels",
        ("--image-col", "patientId", "--patient-col", "patientId", "--label-when", "Pneumonia:Target==1", "--aggregate", "any"),
        _rsna_labels,
    ),
    Case("RSNA pneumonia DICOM headers", "rsna_headers", ("--image-col", "Filename", "--patient-col", "PatientID"), _rsna_headers),
    Case(
        "NIH Google relabels",
        "nih_google",
        ("--image-col", "Image Index", "--patient-col", "Patient ID", "--label-cols", ",".join(GOOGLE_LABELS)),
        _google,
    ),
    Case("CheXpert", "chexpert", ("--preset", "chexpert", "--blank", "negative"), _chexpert),
)


def mdprep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mdprep", *args], capture_output=True, text=True)


def run() -> tuple[list[dict], list[str]]:
    out = Path(tempfile.mkdtemp())
    rows, failures = [], []
    for case in CASES:
        path = real_table(case.table)
        target = out / f"{case.table}.parquet"
        done = mdprep("ingest", "table", str(path), *case.args, "-o", str(target), "-q")
        if done.returncode != 0:
            failures.append(f"{case.name}: exit {done.returncode}: {done.stderr.strip()[-500:]}")
            continue
        m = read_manifest(target)
        want = case.expected(path)
        got_pos = {name: int((m.frame[name] == 1).sum()) for name in m.labels}
        got = Expected(len(m.frame), int(m.frame["patient_id"].nunique()), got_pos)
        for field in ("rows", "patients"):
            if getattr(got, field) != getattr(want, field):
                failures.append(f"{case.name}: {field} {getattr(got, field)} != {getattr(want, field)} (pandas)")
        wrong = {k: (got_pos.get(k, 0), v) for k, v in want.positives.items() if got_pos.get(k, 0) != v}
        wrong.update({k: (v, 0) for k, v in got_pos.items() if k not in want.positives and v})
        if wrong:
            failures.append(f"{case.name}: positives differ from pandas (mdprep, pandas): {wrong}")
        for key, count in want.values.items():
            column, value = key.split("=", 1)
            got_n = int((m.frame[column].astype("str") == value).sum())
            if got_n != count:
                failures.append(f"{case.name}: {key} in {got_n} rows, pandas {count}")
        top = sorted(got_pos.items(), key=lambda kv: -kv[1])[:3]
        rows.append(
            {
                "dataset": case.name,
                "file": path.name,
                "command": "mdprep ingest table " + path.name + " " + " ".join(_quote(a) for a in case.args) + " -o out.parquet",
                "rows": got.rows,
                "patients": got.patients,
                "labels": len(m.labels),
                "top": ", ".join(f"{k} {v:,}" for k, v in top) or "-",
            }
        )
        if case.table == "chexpert":
            split = out / "chexpert-split.parquet"
            for step in (
                ("split", str(target), "--ratios", "0.8,0.1,0.1", "--seed", "0", "-o", str(split), "-q"),
                ("weights", str(split), "-o", str(out / "weights.json"), "-q"),
            ):
                done = mdprep(*step)
                if done.returncode != 0:
                    failures.append(f"CheXpert: mdprep {step[0]} exit {done.returncode}: {done.stderr.strip()[-500:]}")
    return rows, failures


def _quote(arg: str) -> str:
    return f"'{arg}'" if any(ch in arg for ch in " !=|[]") else arg


def markdown(rows: list[dict]) -> str:
    lines = ["| dataset | rows | patients | labels | most frequent positives |", "|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['rows']:,} | {r['patients']:,} | {r['labels']} | {r['top']} |")
    lines.append("")
    for r in rows:
        lines += [f"{r['dataset']}:", "", "```sh", r["command"], "```", ""]
    return "\n".join(lines)


def main() -> int:
    rows, failures = run()
    print(markdown(rows))
    for f in failures:
        print(f"FAILED {f}", file=sys.stderr)
    bad = {c.name for c in CASES if any(f.startswith(c.name + ":") for f in failures)}
    print(f"{len(CASES) - len(bad)} of {len(CASES)} tables ingest and agree with pandas", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
