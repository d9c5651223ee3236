from __future__ import annotations

import io
import re
from pathlib import Path

import click
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mdprep.cli import main
from mdprep.manifest import read_manifest
from mdprep.synthetic import write_nih_table

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_help_and_version(runner):
    res = runner.invoke(main, ["--help"])
    assert res.exit_code == 0 and "Example:" in res.output and "Exit codes" in res.output
    res = runner.invoke(main, ["--version"])
    assert res.exit_code == 0 and "mdprep" in res.output


def test_ingest_table_writes_file_and_keeps_streams_apart(runner, tmp_path):
    table = tmp_path / "Data_Entry_2017.csv"
    n = write_nih_table(table, patients=10)
    out = tmp_path / "m.parquet"
    res = runner.invoke(main, ["ingest", "table", str(table), "--preset", "nih", "-o", str(out)])
    assert res.exit_code == 0, res.stderr
    assert res.stdout == ""
    assert "patients" in res.stderr and "Hernia" in res.stderr and f"{n} found = {n} ingested" in res.stderr
    assert len(read_manifest(out).frame) == n


def test_quiet_prints_nothing_when_nothing_is_lost(runner, tmp_path):
    table = tmp_path / "d.csv"
    write_nih_table(table, patients=3)
    res = runner.invoke(main, ["ingest", "table", str(table), "--preset", "nih", "-o", str(tmp_path / "m.parquet"), "-q"])
    assert res.exit_code == 0 and res.stderr == "" and res.stdout == ""


def test_output_to_stdout_is_parquet(runner, tmp_path):
    table = tmp_path / "d.csv"
    write_nih_table(table, patients=3)
    res = runner.invoke(main, ["ingest", "table", str(table), "--preset", "nih", "-o", "-", "-q"])
    assert res.exit_code == 0
    assert res.stdout_bytes[:4] == b"PAR1"
    assert pq.read_table(io.BytesIO(res.stdout_bytes)).num_rows > 0


def test_missing_column_is_one_error_line_with_exit_2(runner, tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("img,pid\na,1\n")
    res = runner.invoke(main, ["ingest", "table", str(table), "--image-col", "img", "--patient-col", "patient", "-o", str(tmp_path / "m.parquet")])
    assert res.exit_code == 2
    assert res.stderr.strip() == f"Error: column 'patient' not found in {table}; the columns present are: 'img', 'pid'. choose columns with --image-col, --patient-col, --path-col, --labels-col or --label-cols"
    assert not (tmp_path / "m.parquet").exists()


def test_contract_violations_are_listed_together(runner, tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("image_id,patient_id,A\na,1,3\na,,1\n")
    res = runner.invoke(main, ["ingest", "table", str(table), "--label-cols", "A", "-o", str(tmp_path / "m.parquet")])
    assert res.exit_code == 2
    assert "outside {1, 0, -1, null}" in res.stderr
    table.write_text("image_id,patient_id\na,1\na,\n")
    res = runner.invoke(main, ["ingest", "table", str(table), "-o", str(tmp_path / "m.parquet")])
    lines = res.stderr.strip().splitlines()
    assert lines[0].startswith("Error: ") and "breaks 2 rules" in lines[0]
    assert len(lines) == 3 and all(line.startswith("  - ") for line in lines[1:])


def test_usage_errors_exit_2(runner, tmp_path):
    res = runner.invoke(main, ["ingest", "table", "x.csv", "--preset", "nope", "-o", "m.parquet"])
    assert res.exit_code == 2 and "Invalid value for '--preset'" in res.stderr
    res = runner.invoke(main, ["ingest", "dicom", str(tmp_path / "nope"), "-o", "m.parquet"])
    assert res.exit_code == 2 and res.stderr.startswith("Error: ") and "is not a folder" in res.stderr
    res = runner.invoke(main, ["ingest", "images", str(tmp_path), "--patient-regex", "(x)", "-o", "m.parquet"])
    assert res.exit_code == 2 and "no named group 'patient'" in res.stderr


def test_ingest_dicom_reconciles_and_lists_errors(runner, dicom_tree, tmp_path):
    out, errors = tmp_path / "m.parquet", tmp_path / "errors.csv"
    res = runner.invoke(main, ["ingest", "dicom", dicom_tree.root, "-o", str(out), "--errors", str(errors), "--workers", "2", "--tags", "Manufacturer"])
    assert res.exit_code == 0, res.stderr
    line = f"{dicom_tree.found} found = {dicom_tree.ingested} ingested + {dicom_tree.skipped} skipped + {dicom_tree.failed} failed"
    assert line in res.stderr and f"listed in {errors}" in res.stderr
    assert len(pd.read_csv(errors)) == dicom_tree.skipped + dicom_tree.failed
    assert "manufacturer" in read_manifest(out).frame.columns
    # --quiet still reports that files were not ingested, and nothing else.
    res = runner.invoke(main, ["ingest", "dicom", dicom_tree.root, "-o", str(out), "-q"])
    assert res.exit_code == 0 and line in res.stderr and "patients" not in res.stderr


def test_ingest_dicom_files_from_stdin(runner, dicom_tree, tmp_path):
    out = tmp_path / "m.parquet"
    res = runner.invoke(main, ["ingest", "dicom", dicom_tree.root, "--files-from", "-", "-o", str(out), "-q"], input="PAT00000/study0/img000.dcm\n")
    assert res.exit_code == 0, res.stderr
    assert read_manifest(out).frame["path"].tolist() == ["PAT00000/study0/img000.dcm"]


def test_ingest_images(runner, image_tree, tmp_path):
    out = tmp_path / "m.parquet"
    res = runner.invoke(main, ["ingest", "images", image_tree.root, "--patient-regex", r"(?P<patient>patient\d+)/(?P<study>study\d+)/", "-o", str(out)])
    assert res.exit_code == 0, res.stderr
    assert f"{image_tree.found} found = {image_tree.ingested} ingested" in res.stderr


def test_validate_exit_codes(runner, tmp_path):
    table = tmp_path / "d.csv"
    write_nih_table(table, patients=3)
    good = tmp_path / "good.parquet"
    runner.invoke(main, ["ingest", "table", str(table), "--preset", "nih", "-o", str(good), "-q"])
    res = runner.invoke(main, ["validate", str(good)])
    assert res.exit_code == 0 and "valid" in res.stderr
    # A manifest whose rows were edited by hand: duplicate id and a bad label.
    t = pq.read_table(good)
    frame = t.to_pandas()
    frame.loc[1, "image_id"] = frame.loc[0, "image_id"]
    frame.loc[2, "Hernia"] = 5
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(t.schema.metadata), bad)
    res = runner.invoke(main, ["validate", str(good), str(bad)])
    assert res.exit_code == 1
    assert "[duplicate_image_id]" in res.stderr and "[bad_label_value]" in res.stderr
    res = runner.invoke(main, ["validate", str(table)])
    assert res.exit_code == 2 and res.stderr.startswith("Error: ")


def test_demo_runs_end_to_end(runner, tmp_path):
    res = runner.invoke(main, ["demo", "-o", str(tmp_path / "demo"), "--patients", "6"])
    assert res.exit_code == 0, res.stderr
    assert "$ mdprep ingest dicom" in res.stderr and "$ mdprep split" in res.stderr and "$ mdprep validate" in res.stderr
    assert read_manifest(tmp_path / "demo" / "manifests" / "nih-split.parquet").frame["split"].notna().all()
    assert "Leakage found" in res.stderr and "The fix" in res.stderr and "No leakage found" in res.stderr
    assert (tmp_path / "demo" / "manifests" / "report.html").exists() and (tmp_path / "demo" / "manifests" / "run" / "best.pt").exists()
    for name in ("dicom", "images", "nih"):
        assert read_manifest(tmp_path / "demo" / "manifests" / f"{name}.parquet").frame.shape[0] > 0


def _commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, prefix + (name,))
        else:
            yield prefix + (name,), cmd


def test_every_command_and_option_is_documented():
    docs = "\n".join(p.read_text() for p in DOCS.glob("*.md"))
    missing = []
    for path, cmd in _commands(main):
        name = "mdprep " + " ".join(path)
        if name not in docs:
            missing.append(name)
        for param in cmd.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--") and opt not in ("--help",) and not re.search(re.escape(opt) + r"\b", docs):
                    missing.append(f"{name} {opt}")
    assert missing == []


def test_every_command_help_shows_an_example(runner):
    for path, cmd in _commands(main):
        res = runner.invoke(main, [*path, "--help"])
        assert res.exit_code == 0, path
        assert "Example" in res.output, f"mdprep {' '.join(path)} --help shows no example"
