from __future__ import annotations

import os
import stat

import numpy as np
import pandas as pd
import pytest

from mdprep.audit import audit
from mdprep.cli import main
from mdprep.errors import MdprepWarning
from mdprep.manifest import Manifest, read_manifest, write_manifest
from mdprep.pseudonyms import (
    MissingKeyError,
    check_same_key,
    generate_key,
    key_fingerprint,
    load_key,
    parse_key,
    pseudonymize,
    uid_pseudonym,
)
from mdprep.splitting import split_manifest

KEY_A = bytes.fromhex(generate_key())
KEY_B = bytes.fromhex(generate_key())


def cohort(n=200) -> Manifest:
    rng = np.random.default_rng(0)
    pid = [f"PAT{i // 3:04d}" for i in range(n)]
    frame = pd.DataFrame(
        {
            "image_id": [f"img{i}" for i in range(n)],
            "path": [f"img{i}.png" for i in range(n)],
            "patient_id": pid,
            "study_id": [f"{p}/study{i % 2}" for i, p in enumerate(pid)],
            "sop_uid": [f"1.2.840.999.{i}" for i in range(n)],
            "accession": [f"ACC{i // 2}" for i in range(n)],
            "patient_name": [f"Doe^{p}" for p in pid],
            "age": np.where(np.arange(n) % 10 == 0, 95.0, 40.0).astype("float32"),
            "study_date": pd.array([pd.Timestamp("2020-01-01").date() + pd.Timedelta(days=int(i)) for i in range(n)], dtype="date32[pyarrow]"),
            "A": pd.array(rng.integers(0, 2, n), dtype="Int8"),
        }
    )
    return Manifest(frame, labels=("A",))


def test_deterministic_under_one_key_and_different_across_keys():
    a1 = pseudonymize(cohort(), KEY_A).manifest.frame
    a2 = pseudonymize(cohort(), KEY_A).manifest.frame
    b = pseudonymize(cohort(), KEY_B).manifest.frame
    pd.testing.assert_frame_equal(a1, a2)
    assert (a1["patient_id"] != b["patient_id"]).all()
    assert a1["patient_id"].str.fullmatch(r"[0-9a-f]{20}").all()
    assert "patient_name" not in a1.columns
    assert (a1.loc[cohort().frame["age"] > 89, "age"] == 90).all()


def test_columns_never_collide_and_uids_are_valid():
    f = cohort().frame.copy()
    f["accession"] = f["patient_id"]  # same values in two columns
    out = pseudonymize(Manifest(f, labels=("A",)), KEY_A).manifest.frame
    assert (out["accession"] != out["patient_id"]).all()
    for uid in out["sop_uid"]:
        parts = uid.split(".")
        assert len(uid) <= 64 and all(p.isdigit() for p in parts) and all(p == "0" or not p.startswith("0") for p in parts)
        assert uid.startswith("2.25.")
    assert uid_pseudonym(KEY_A, "sop_uid", "1.2.3") == uid_pseudonym(KEY_A, "sop_uid", "1.2.3")


def test_dates_keep_intervals_per_patient():
    m = cohort()
    out = pseudonymize(m, KEY_A, dates="shift").manifest.frame
    before = pd.to_datetime(m.frame["study_date"].astype(str))
    after = pd.to_datetime(out["study_date"].astype(str))
    shift = (after - before).dt.days
    assert shift.groupby(m.frame["patient_id"]).nunique().max() == 1  # one offset per patient
    assert shift.abs().max() <= 365 and shift.nunique() > 1
    year = pseudonymize(m, KEY_A, dates="year").manifest.frame
    assert set(pd.to_datetime(year["study_date"].astype(str)).dt.day_of_year) == {1}
    assert "study_date" not in pseudonymize(m, KEY_A, dates="drop").manifest.frame.columns


def test_splits_and_audit_group_the_same_before_and_after():
    m = cohort()
    s = split_manifest(m, ratios=(0.7, 0.3), seed=0).manifest
    p = pseudonymize(s, KEY_A).manifest
    groups_before = s.frame.groupby("patient_id")["split"].first().sort_index()
    mapping = dict(zip(s.frame["patient_id"], p.frame["patient_id"]))
    groups_after = p.frame.groupby("patient_id")["split"].first()
    assert all(groups_after[mapping[k]] == v for k, v in groups_before.items())
    # Resplitting the pseudonymised manifest groups the same patients together.
    rs = split_manifest(pseudonymize(m, KEY_A).manifest, ratios=(0.7, 0.3), seed=0).manifest
    assert rs.frame.groupby("patient_id")["split"].nunique().max() == 1
    leaky = s.frame.copy()
    leaky.loc[leaky.index[0], "split"] = "test" if leaky.loc[leaky.index[0], "split"] == "train" else "train"
    before = audit(leaky, checks=["patient_overlap", "study_overlap", "accession_overlap"])
    after = audit(pseudonymize(s.with_frame(leaky), KEY_A).manifest.frame, checks=["patient_overlap", "study_overlap", "accession_overlap"])
    assert [len(c.findings) for c in before.checks] == [len(c.findings) for c in after.checks]
    assert before.exit_code == after.exit_code == 1


def test_refuses_without_key_and_weak_keys(monkeypatch, tmp_path):
    monkeypatch.delenv("MDPREP_PSEUDONYM_KEY", raising=False)
    with pytest.raises(MissingKeyError, match="never falls back"):
        load_key(None)
    with pytest.raises(MissingKeyError, match="too short"):
        parse_key("abcd", source="test")
    with pytest.raises(MissingKeyError, match="too short or too regular"):
        parse_key("a" * 64, source="test")
    monkeypatch.setenv("MDPREP_PSEUDONYM_KEY", KEY_A.hex())
    assert load_key(None) == KEY_A


def test_key_never_appears_in_any_output(runner, tmp_path, monkeypatch):
    key_file = tmp_path / "secret.key"
    res = runner.invoke(main, ["keygen", str(key_file)])
    assert res.exit_code == 0
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert runner.invoke(main, ["keygen", str(key_file)]).exit_code == 2  # never overwritten
    key_text = key_file.read_text().strip()
    key_bytes = bytes.fromhex(key_text)
    src = tmp_path / "m.parquet"
    write_manifest(cohort(), src)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    res = runner.invoke(main, ["pseudonymize", str(src), "-o", str(out_dir / "p.parquet"), "--key-file", str(key_file), "--mapping", str(out_dir / "map.csv")])
    assert res.exit_code == 0, res.stderr
    assert stat.S_IMODE(os.stat(out_dir / "map.csv").st_mode) == 0o600
    assert "never commit" in res.stderr
    res2 = runner.invoke(main, ["audit-leakage", str(out_dir / "p.parquet"), str(src), "--json", str(out_dir / "a.json")])
    logs = (res.stdout + res.stderr + res2.stdout + res2.stderr).encode()
    fingerprint = key_fingerprint(key_bytes)
    for path in out_dir.iterdir():
        data = path.read_bytes()
        assert key_text.encode() not in data and key_bytes not in data, path
    assert key_text.encode() not in logs and key_bytes not in logs
    meta = read_manifest(out_dir / "p.parquet").history[-1]["options"]
    assert meta["key_fingerprint"] == fingerprint and meta["algorithm"] == "HMAC-SHA256"
    # Bad key file: the error names the file, never the content.
    bad = tmp_path / "bad.key"
    bad.write_text("short")
    res = runner.invoke(main, ["pseudonymize", str(src), "-o", str(out_dir / "x.parquet"), "--key-file", str(bad)])
    assert res.exit_code == 2 and "short" not in res.stderr.replace("too short", "")


def test_mixed_key_audit_is_refused(runner, tmp_path):
    a = split_manifest(cohort(), ratios=(0.5, 0.5), seed=0).manifest
    pa_, pb = pseudonymize(a, KEY_A).manifest, pseudonymize(a, KEY_B).manifest
    with pytest.raises(Exception, match="different keys"):
        check_same_key([pa_, pb], ["a", "b"])
    write_manifest(pa_, tmp_path / "a.parquet")
    write_manifest(pb, tmp_path / "b.parquet")
    res = runner.invoke(main, ["audit-leakage", str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")])
    assert res.exit_code == 2 and "different keys" in res.stderr
    check_same_key([pa_, pa_], ["a", "b"])  # one key: fine


def test_ingest_pseudonymize_keeps_raw_ids_off_disk(runner, tmp_path, monkeypatch):
    from mdprep.synthetic import write_nih_table

    table = tmp_path / "d.csv"
    write_nih_table(table, patients=5)
    monkeypatch.setenv("MDPREP_PSEUDONYM_KEY", KEY_A.hex())
    res = runner.invoke(main, ["ingest", "table", str(table), "--preset", "nih", "--pseudonymize", "-o", str(tmp_path / "m.parquet")])
    assert res.exit_code == 0, res.stderr
    f = read_manifest(tmp_path / "m.parquet").frame
    assert f["patient_id"].str.fullmatch(r"[0-9a-f]{20}").all()
    monkeypatch.delenv("MDPREP_PSEUDONYM_KEY")
    res = runner.invoke(main, ["ingest", "table", str(table), "--preset", "nih", "--pseudonymize", "-o", str(tmp_path / "n.parquet")])
    assert res.exit_code == 2 and "no pseudonymisation key" in res.stderr and not (tmp_path / "n.parquet").exists()


def test_warns_when_paths_spell_out_patient_ids():
    f = cohort().frame.copy()
    f["path"] = f["patient_id"] + "/" + f["image_id"] + ".png"
    with pytest.warns(MdprepWarning, match="path value"):
        pseudonymize(Manifest(f, labels=("A",)), KEY_A)
