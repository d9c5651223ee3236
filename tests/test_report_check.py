from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from mdprep.cli import main
from mdprep.hashing import hash_manifest
from mdprep.manifest import Manifest, write_manifest
from mdprep.report import build_report
from mdprep.synthetic import write_leaky_cohort, write_nih_table

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("Chromium is required in CI for the report test; tasks.py test installs it (apt-get install chromium)")
    pytest.skip("headless Chromium is not installed here (apt-get install chromium); CI installs and runs it")


@pytest.fixture
def split_nih(runner, tmp_path):
    table = tmp_path / "Data_Entry_2017.csv"
    write_nih_table(table, patients=60)
    runner.invoke(main, ["ingest", "table", str(table), "--preset", "nih", "-o", str(tmp_path / "nih.parquet"), "-q"])
    res = runner.invoke(main, ["split", str(tmp_path / "nih.parquet"), "--ratios", "0.7,0.1,0.2", "--folds", "3", "-o", str(tmp_path / "s.parquet"), "-q"])
    assert res.exit_code == 0, res.stderr
    return tmp_path / "s.parquet"


def test_check_passes_clean_and_fails_on_leakage_or_contract(runner, split_nih, tmp_path):
    res = runner.invoke(main, ["check", str(split_nih), "--junit", str(tmp_path / "j.xml")])
    assert res.exit_code == 0, res.stderr
    assert "Contract: 1 manifest(s) valid" in res.stderr and "No leakage found" in res.stderr
    root = tmp_path / "leaky"
    frame, _ = write_leaky_cohort(root)
    m = hash_manifest(Manifest(frame, root=str(root)), workers=1).manifest
    write_manifest(m, tmp_path / "leaky.parquet")
    res = runner.invoke(main, ["check", str(tmp_path / "leaky.parquet"), "-q"])
    assert res.exit_code == 1 and "Leakage found" in res.stderr
    import pyarrow.parquet as pq

    t = pq.read_table(split_nih)
    df = t.to_pandas()
    df.loc[1, "image_id"] = df.loc[0, "image_id"]
    import pyarrow as pa

    pq.write_table(pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(t.schema.metadata), tmp_path / "bad.parquet")
    res = runner.invoke(main, ["check", str(tmp_path / "bad.parquet")])
    assert res.exit_code == 1 and "[duplicate_image_id]" in res.stderr and "Contract failed" in res.stderr
    res = runner.invoke(main, ["check", str(tmp_path / "missing.parquet")])
    assert res.exit_code == 2


def test_report_content(split_nih, tmp_path):
    from mdprep.manifest import read_manifest

    m = read_manifest(split_nih)
    page = build_report(m, title="<script>alert(1)</script>")
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
    assert page.count('class="chart"') == 2 and "Label distribution (LD)" in page and "Folds" in page
    assert "http://" not in page and "https://" not in page  # self-contained


def test_report_renders_in_headless_chromium(runner, split_nih, tmp_path):
    chromium = _chromium()
    audit = tmp_path / "audit.json"
    runner.invoke(main, ["audit-leakage", str(split_nih), "--json", str(audit), "-q"])
    out = tmp_path / "report.html"
    res = runner.invoke(main, ["report", str(split_nih), "--audit", str(audit), "-o", str(out)])
    assert res.exit_code == 0, res.stderr
    profile = tmp_path / "profile"
    url = out.resolve().as_uri()
    dom = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=2000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-rendered="ok"' in dom.stdout
    assert "Uncaught" not in dom.stderr and "SyntaxError" not in dom.stderr
    shot = tmp_path / "report.png"
    subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1200,2000", f"--screenshot={shot}", url],
        capture_output=True, text=True, timeout=120, check=True,
    )
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_report_cli_errors(runner, split_nih, tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"schema": "other"}))
    res = runner.invoke(main, ["report", str(split_nih), "--audit", str(tmp_path / "x.json"), "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 2 and "not an mdprep audit report" in res.stderr


def test_examples_end_to_end_script_runs(tmp_path):
    import sys

    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    script = os.path.join(os.path.dirname(__file__), "..", "examples", "end-to-end.sh")
    res = subprocess.run(["bash", script, str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "out" / "report.html").exists() and (tmp_path / "out" / "check.xml").exists()


def test_pre_commit_hook_and_workflow_call_real_commands():
    import yaml

    root = os.path.join(os.path.dirname(__file__), "..")
    hooks = yaml.safe_load(open(os.path.join(root, ".pre-commit-hooks.yaml")))
    assert hooks[0]["entry"] == "mdprep check"
    workflow = yaml.safe_load(open(os.path.join(root, "examples", "github-actions", "mdprep-check.yml")))
    steps = workflow["jobs"]["gate"]["steps"]
    assert any("mdprep check" in s.get("run", "") and "--junit" in s.get("run", "") for s in steps)


def test_check_says_how_many_checks_ran_and_honours_require(runner, tmp_path):
    import xml.etree.ElementTree as ET

    import pandas as pd

    ids = [f"img{i}.png" for i in range(6)]
    frame = pd.DataFrame({"image_id": ids, "path": ids, "patient_id": ["P1", "P1", "P2", "P2", "P3", "P3"], "split": ["train"] * 4 + ["test"] * 2})
    write_manifest(Manifest(frame), tmp_path / "m.parquet")
    res = runner.invoke(main, ["check", str(tmp_path / "m.parquet"), "-q"])
    assert res.exit_code == 0, res.stderr
    assert res.stderr.strip().splitlines()[-1] == "No leakage found in 2 of 10 checks (8 skipped: no column)"
    junit = tmp_path / "c.xml"
    res = runner.invoke(main, ["check", str(tmp_path / "m.parquet"), "--require", "patient_overlap,near_duplicate", "--junit", str(junit), "-q"])
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines()[-1] == (
        "Gate failed, 1 required check(s) did not fully run: near_duplicate (splits: skipped, no column); "
        "no leakage found in 2 of 10 checks (8 skipped: no column)"
    )
    failure = next(tc for tc in ET.parse(junit).getroot().iter("testcase") if tc.get("name") == "near_duplicate").find("failure")
    assert failure.get("type") == "required-check-not-run"
    res = runner.invoke(main, ["check", str(tmp_path / "m.parquet"), "--require", "patient"])
    assert res.exit_code == 2 and "\nError: --require names unknown checks ['patient']; choose among image_overlap," in res.stderr
    # One image per patient id, the id being the image's: the gate passes, and says it had nothing to compare.
    write_manifest(Manifest(frame.assign(patient_id=ids)), tmp_path / "per-image.parquet")
    res = runner.invoke(main, ["check", str(tmp_path / "per-image.parquet"), "-q"])
    assert res.exit_code == 0 and "Warning: degenerate grouping: patient_id equals image_id on every row (6 rows)" in res.stderr
    assert res.stderr.strip().endswith("note: degenerate grouping (patient_id equals image_id on every row), patient_overlap had nothing to compare")
