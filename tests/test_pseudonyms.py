from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import stat
from dataclasses import replace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mdprep.audit import audit, combine_manifests
from mdprep.cli import main
from mdprep.errors import InputError, MdprepWarning, UsageError
from mdprep.manifest import Manifest, read_manifest, write_manifest
from mdprep.pseudonyms import (
    ANNEX_E,
    RETAIN_PATIENT_CHARACTERISTICS,
    MissingKeyError,
    check_same_key,
    date_shift_days,
    dicom_attribute,
    generate_key,
    key_fingerprint,
    load_key,
    load_path_map,
    parse_key,
    pseudonymised_paths,
    pseudonymization_state,
    pseudonymize,
    resolve_paths,
    uid_pseudonym,
)
from mdprep.splitting import split_manifest

# Fixed keys, so that every run draws the same offsets (keygen's own keys are tested separately).
KEY_A = hashlib.sha256(b"mdprep test key A").digest()
KEY_B = hashlib.sha256(b"mdprep test key B").digest()


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
    assert shift.abs().max() <= 365 and shift.nunique() > 1 and (shift != 0).all()
    year = pseudonymize(m, KEY_A, dates="year").manifest.frame
    assert set(pd.to_datetime(year["study_date"].astype(str)).dt.day_of_year) == {1}
    assert "study_date" not in pseudonymize(m, KEY_A, dates="drop").manifest.frame.columns
    assert all(date_shift_days(KEY_A, f"P{i}") != 0 for i in range(3000))


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


# ----------------------------------------------------------------------------- 1. Annex E by attribute


def test_snake_keeps_plural_acronyms_whole_and_preset_names_unchanged():
    from mdprep.dicom_header import PRESET_TAGS, _snake

    def old(k):  # the rule before plural acronyms were kept whole
        return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", k).lower()

    assert _snake("OtherPatientIDs") == "other_patient_ids"
    assert _snake("OtherPatientIDsSequence") == "other_patient_ids_sequence"
    assert all(_snake(k) == old(k) for k in PRESET_TAGS.values())
    assert [_snake(k) for k in ("PatientBirthName", "SOPInstanceUID", "RequestingPhysician")] == ["patient_birth_name", "sop_instance_uid", "requesting_physician"]
    assert dicom_attribute("other_patient_ids") == ("OtherPatientIDs", "LO")


def _annex_frame(n=4):
    """One column per Annex E attribute with a readable VR, named as `ingest dicom --tags` names it."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    from mdprep.dicom_header import _snake

    values, vrs, raw = {}, {}, set()
    for i, kw in enumerate(sorted(ANNEX_E)):
        vr = dictionary_VR(tag_for_keyword(kw)).split(" or ")[0]
        if vr in ("SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN", "AT"):
            continue
        col = _snake(kw)
        if col in ("patient_id", "study_id"):  # the manifest's own identifiers: always pseudonymised
            continue
        if vr in ("DS", "IS", "FL", "FD", "US", "SS", "UL", "SL", "SV", "UV"):
            values[col] = pd.array([float(i) + 0.5] * n, dtype="float64")
        elif vr == "DA":
            values[col] = [f"2019{1 + i % 12:02d}{1 + i % 28:02d}"] * n
        elif vr == "DT":
            values[col] = [f"2019{1 + i % 12:02d}{1 + i % 28:02d}101112.5"] * n
        elif vr == "TM":
            values[col] = ["101112"] * n
        elif vr == "UI":
            values[col] = [f"1.2.826.0.1.3680043.{i}.{r}" for r in range(n)]
            raw.update(values[col])
        else:
            values[col] = [f"secret-{kw}-{r}" for r in range(n)]
            if kw not in RETAIN_PATIENT_CHARACTERISTICS:  # kept under that option (sex, age, ethnic group...)
                raw.update(values[col])
        vrs[col] = (kw, vr)
    frame = pd.DataFrame({"image_id": [f"i{r}" for r in range(n)], "path": [f"i{r}.dcm" for r in range(n)], "patient_id": [f"P{r % 2}" for r in range(n)], **values})
    return Manifest(frame), vrs, raw


def test_every_annex_e_attribute_gets_its_action_and_no_raw_value_survives():
    m, vrs, raw = _annex_frame()
    result = pseudonymize(m, KEY_A)
    t = result.treatments.set_index("column")
    assert list(result.treatments["column"]) == list(m.frame.columns)  # every column is listed
    for col, (kw, vr) in vrs.items():
        treatment = t.loc[col, "treatment"]
        if vr in ("DA", "DT"):
            assert treatment == "shifted", col
        elif vr == "TM" or kw in RETAIN_PATIENT_CHARACTERISTICS:
            assert treatment == "kept", col
        elif "U" in ANNEX_E[kw] and vr == "UI":
            assert treatment == "pseudonymised", col
        else:
            assert treatment == "dropped" and t.loc[col, "reason"] == f"PS3.15 Annex E action {ANNEX_E[kw]}: removed", col
        assert t.loc[col, "attribute"] == kw
    for kw in ("OtherPatientIDs", "PatientBirthName", "PatientMotherBirthName", "PatientTelephoneNumbers", "PatientAddress",
               "RequestingPhysician", "OperatorsName", "InstitutionName", "DeviceSerialNumber"):
        assert kw in ANNEX_E
    out = result.manifest.frame
    text = set(out.astype("str").to_numpy().ravel())
    assert not raw & text
    kept = {c for c, (kw, _) in vrs.items() if kw in RETAIN_PATIENT_CHARACTERISTICS}
    assert not any(v.startswith("secret-") for v in set(out.drop(columns=list(kept)).astype("str").to_numpy().ravel()))
    # --dates drop removes every date and time too; year keeps the year only.
    dropped = pseudonymize(m, KEY_A, dates="drop").treatments.set_index("column")
    assert all(dropped.loc[c, "treatment"] == "dropped" for c, (_, vr) in vrs.items() if vr in ("DA", "DT", "TM"))


# ----------------------------------------------------------------------------- 2. dates


def date_cohort() -> Manifest:
    rows = []
    for p in range(6):
        for j in range(3):
            day = pd.Timestamp(2015 + p, 1 + j, 10 + p)
            rows.append(
                {
                    "image_id": f"im{p}-{j}",
                    "path": f"x{p}{j}.dcm",
                    "patient_id": f"PAT{p:03d}",
                    "study_date": day.date(),
                    "birth_date": pd.Timestamp(1950 + p, 3, 4).date(),
                    "series_date": (day + pd.Timedelta(days=1)).date(),
                    "acquisition_date_time": (day + pd.Timedelta(days=2)).strftime("%Y%m%d") + "101112.250000",
                    "content_date": (day + pd.Timedelta(days=3)).strftime("%Y%m%d"),  # text with VR DA
                    "exam_timestamp": day + pd.Timedelta(hours=7),
                    "scan_date": (day - pd.Timedelta(days=40)).strftime("%Y-%m-%d"),  # a table column, found by name and content
                    "study_time": "101010",
                }
            )
    f = pd.DataFrame(rows)
    for c in ("study_date", "birth_date", "series_date"):
        f[c] = pd.array(f[c], dtype="date32[pyarrow]")
    f["exam_timestamp"] = f["exam_timestamp"].astype("timestamp[us][pyarrow]")
    return Manifest(f)


def _as_days(s: pd.Series) -> pd.Series:
    text = s.astype("str")
    return pd.to_datetime(text.str[:8].where(text.str.fullmatch(r"\d{8}.*"), text), format="ISO8601").dt.normalize()


def test_every_date_of_a_patient_moves_by_one_offset():
    m = date_cohort()
    result = pseudonymize(m, KEY_A)
    out = result.manifest.frame
    date_cols = ["study_date", "birth_date", "series_date", "acquisition_date_time", "content_date", "exam_timestamp", "scan_date"]
    t = result.treatments.set_index("column")
    assert (t.loc[date_cols, "treatment"] == "shifted").all()
    assert t.loc["study_time", "treatment"] == "kept"
    shifts = pd.DataFrame({c: (_as_days(out[c]) - _as_days(m.frame[c])).dt.days for c in date_cols})
    assert (shifts.nunique(axis=1) == 1).all()  # every date of a row moves alike
    per_patient = shifts["study_date"].groupby(m.frame["patient_id"]).nunique()
    assert (per_patient == 1).all() and shifts["study_date"].nunique() > 1
    assert (shifts != 0).all().all()  # no date keeps its raw value
    for c in date_cols:
        # Row by row: a moved date may equal another patient's raw date by chance, never its own.
        assert (m.frame[c].astype("str") != out[c].astype("str")).all(), c
    # Differences between dates of a patient are preserved.
    gap = (_as_days(out["series_date"]) - _as_days(out["study_date"])).dt.days
    assert (gap == 1).all()
    # The DT keeps its time and fraction; the timestamp keeps its type and time of day.
    assert out["acquisition_date_time"].str.endswith("101112.250000").all()
    assert out["exam_timestamp"].dtype == m.frame["exam_timestamp"].dtype
    assert (pd.to_datetime(out["exam_timestamp"]).dt.hour == 7).all()
    year = pseudonymize(m, KEY_A, dates="year").manifest.frame
    assert set(year["acquisition_date_time"].str.len()) == {4}
    assert (pd.to_datetime(year["scan_date"].astype(str)).dt.day_of_year == 1).all()
    drop = pseudonymize(m, KEY_A, dates="drop").manifest.frame
    assert not set(date_cols + ["study_time"]) & set(drop.columns)


def test_unreadable_dates_are_removed_with_a_warning_that_quotes_no_value():
    f = date_cohort().frame.copy()
    f["content_date"] = f["content_date"].where(f.index > 0, "PAT000-garbled")
    with pytest.warns(MdprepWarning, match="1 value") as caught:
        out = pseudonymize(Manifest(f), KEY_A).manifest.frame
    assert pd.isna(out["content_date"].iloc[0]) and "PAT000" not in str(caught[0].message)


# ----------------------------------------------------------------------------- 3. table columns


def table_manifest(n=12) -> Manifest:
    frame = pd.DataFrame(
        {
            "image_id": [f"{i:08d}_000.png" for i in range(n)],
            "path": [f"images/{i:08d}_000.png" for i in range(n)],
            "patient_id": [f"{i // 2:08d}" for i in range(n)],
            "Patient Name": [f"Jane Roe {i}" for i in range(n)],
            "MRN": [f"M{i:07d}" for i in range(n)],
            "Home Address": [f"{i} Main Street" for i in range(n)],
            "phone_number": [f"+1 555 01{i:02d}" for i in range(n)],
            "E-mail": [f"jane{i}@example.org" for i in range(n)],
            "contact": [f"someone{i}@example.org" if i % 3 == 0 else "" for i in range(n)],  # e-mail found by content
            "referrer": [f"Smith^Ann{i}" for i in range(n)],  # DICOM person names found by content
            "subject": [f"{i // 2:08d}" for i in range(n)],  # repeats the patient ids
            "Report": ["normal" for i in range(n)],
            "reading": [f"Heart size is normal and lungs are clear, seen by reader {i}" for i in range(n)],  # free text by content
            "view": ["PA"] * n,
            "grade": ["low", "high"] * (n // 2),
            "Effusion": pd.array([0, 1] * (n // 2), dtype="Int8"),
        }
    )
    return Manifest(frame, labels=("Effusion",))


def test_table_identifiers_are_dropped_and_free_text_refused():
    m = table_manifest()
    with pytest.raises(UsageError) as err:
        pseudonymize(m, KEY_A)
    assert "'Report'" in err.value.message and "'reading'" in err.value.message and err.value.fields["columns"] == ["Report", "reading"]
    assert "Jane" not in err.value.message and "Heart" not in err.value.message
    result = pseudonymize(m, KEY_A, drop_columns=["reading"], keep_columns=["Report"])
    t = result.treatments.set_index("column")["treatment"]
    assert list(t.index) == list(m.frame.columns)
    for col in ("Patient Name", "MRN", "Home Address", "phone_number", "E-mail", "contact", "referrer", "subject", "reading"):
        assert t[col] == "dropped", col
    assert t["Report"] == t["view"] == t["grade"] == t["Effusion"] == "kept"
    assert t["image_id"] == t["patient_id"] == t["path"] == "pseudonymised"
    out = result.manifest.frame
    assert set(out.columns) == {"image_id", "path", "patient_id", "Report", "view", "grade", "Effusion"}
    reasons = result.treatments.set_index("column")["reason"]
    assert "e-mail" in reasons["contact"] and "person names" in reasons["referrer"] and "record number" in reasons["MRN"]
    with pytest.raises(UsageError, match="cannot be kept raw"):
        pseudonymize(m, KEY_A, keep_columns=["patient_id"], drop_columns=["reading", "Report"])
    with pytest.raises(UsageError, match="both"):
        pseudonymize(m, KEY_A, keep_columns=["Report"], drop_columns=["Report", "reading"])
    with pytest.raises(UsageError, match="cannot be dropped"):
        pseudonymize(m, KEY_A, drop_columns=["patient_id", "Report", "reading"])


def test_dicom_dump_columns_map_back_by_attribute_name_and_other_ids_group():
    n = 300
    pid = [f"{10_000_000 + i // 3}" for i in range(n)]
    frame = pd.DataFrame(
        {
            "image_id": [f"CXR{i}_IM-1" for i in range(n)],
            "path": [f"img{i:05d}.dcm" for i in range(n)],
            "patient_id": pid,
            "Patient's Name": [f"ROE^JANE{i}" for i in range(n)],  # as DICOM dumps print attribute names
            "Patient's Birth Date": ["19500304"] * n,
            "Patient Age": pd.array([95 if i % 7 == 0 else 40 for i in range(n)], dtype="Int64"),
            "SOP Instance UID": [f"1.2.826.0.1.{i}" for i in range(n)],
            "Manufacturer": ["ACME"] * n,  # a DICOM attribute PS3.15 Annex E does not list
            "Window Center": [str(2048 + i % 3) for i in range(n)],
            "ReportID": [f"R{i // 2}" for i in range(n)],  # an identifier of another table: pseudonymised, grouping kept
            "filename": [f"CXR{i}_IM-1.dcm" for i in range(n)],  # spells out the image id
            "method": ["Manual review of the DICOM fields by a radiologist"] * n,  # a vocabulary, not notes
        }
    )
    result = pseudonymize(Manifest(frame), KEY_A)
    t = result.treatments.set_index("column")["treatment"]
    assert t["Patient's Name"] == "dropped" and t["Patient's Birth Date"] == "shifted" and t["SOP Instance UID"] == "pseudonymised"
    assert t["Manufacturer"] == t["Window Center"] == t["method"] == t["Patient Age"] == "kept"
    assert t["ReportID"] == t["filename"] == "pseudonymised"
    out = result.manifest.frame
    assert out["Patient Age"].max() == 90 and out["Patient Age"].dtype == frame["Patient Age"].dtype
    assert out["filename"].str.fullmatch(r"[0-9a-f]{20}\.dcm").all()
    assert out.groupby("ReportID").size().tolist() == [2] * (n // 2)
    assert out["Patient's Birth Date"].astype(str).ne("1950-03-04").all()


def test_cli_refuses_free_text_then_lists_every_column(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("MDPREP_PSEUDONYM_KEY", KEY_A.hex())
    write_manifest(table_manifest(), tmp_path / "t.parquet")
    res = runner.invoke(main, ["pseudonymize", str(tmp_path / "t.parquet"), "-o", str(tmp_path / "p.parquet")])
    assert res.exit_code == 2 and res.stderr.startswith("Error: ") and "--drop-columns Report,reading" in res.stderr
    assert not (tmp_path / "p.parquet").exists()
    res = runner.invoke(main, ["pseudonymize", str(tmp_path / "t.parquet"), "-o", str(tmp_path / "p.parquet"), "--drop-columns", "reading", "--keep-columns", "Report"])
    assert res.exit_code == 0, res.stderr
    for col in table_manifest().frame.columns:
        assert col in res.stderr
    assert re.search(r"dropped\s+.*MRN", res.stderr) and re.search(r"kept\s+.*Report: --keep-columns", res.stderr)
    assert "Jane" not in res.stderr and "M0000001" not in res.stderr
    options = read_manifest(tmp_path / "p.parquet").history[-1]["options"]
    assert options["keep_columns"] == ["Report"] and options["drop_columns"] == ["reading"] and "MRN" in options["dropped"]


# ----------------------------------------------------------------------------- 4. image ids and paths


def path_manifest() -> Manifest:
    f = cohort(30).frame.copy()
    f["path"] = f["patient_id"] + "/" + f["image_id"] + ".png"
    return Manifest(f, labels=("A",))


def test_image_ids_and_paths_are_pseudonymised_with_a_private_path_map(tmp_path):
    from mdprep.pseudonyms import write_path_map

    m = path_manifest()
    result = pseudonymize(m, KEY_A)
    out = result.manifest.frame
    assert out["image_id"].str.fullmatch(r"[0-9a-f]{20}").all() and out["image_id"].is_unique
    assert out["path"].str.fullmatch(r"[0-9a-f]{20}\.png").all()
    assert not any(p in " ".join(out["path"]) for p in m.frame["patient_id"])
    write_path_map(result.path_map, tmp_path / "paths.csv")
    assert stat.S_IMODE(os.stat(tmp_path / "paths.csv").st_mode) == 0o600
    resolved = resolve_paths(result.manifest, load_path_map(tmp_path / "paths.csv"))
    assert resolved.frame["path"].tolist() == m.frame["path"].tolist()
    hidden = pseudonymised_paths(pd.Series([m.frame["path"].iloc[3], "elsewhere/PAT9999.png"]), load_path_map(tmp_path / "paths.csv"))
    assert hidden.tolist() == [out["path"].iloc[3], "<unknown path>"]
    other = pseudonymize(m, KEY_B).manifest
    with pytest.raises(InputError, match="not in the path map") as err:
        resolve_paths(other, load_path_map(tmp_path / "paths.csv"))
    assert "PAT" not in err.value.message
    # Paths that spell out nothing are kept; --paths pseudonymize and drop are explicit.
    plain_frame = cohort(30).frame.assign(path=[f"files/{i:05d}.png" for i in range(30)])
    plain = pseudonymize(cohort(30).with_frame(plain_frame), KEY_A)
    assert plain.manifest.frame["path"].tolist() == plain_frame["path"].tolist() and plain.path_map.empty
    assert "img0.png" in pseudonymize(cohort(30), KEY_A).path_map["original_path"].tolist()  # a path spelling out its image id
    forced = pseudonymize(cohort(30).with_frame(plain_frame), KEY_A, paths="pseudonymize").manifest.frame["path"]
    assert forced.str.fullmatch(r"[0-9a-f]{20}\.png").all()
    assert (pseudonymize(m, KEY_A, paths="drop").manifest.frame["path"] == "").all()


def test_kept_paths_warn_without_quoting_them():
    m = path_manifest()
    with pytest.warns(MdprepWarning, match="30 path value") as caught:
        out = pseudonymize(m, KEY_A, paths="keep").manifest.frame
    assert out["path"].tolist() == m.frame["path"].tolist()
    assert not any(p in str(w.message) for w in caught for p in m.frame["patient_id"])


def test_cli_path_map(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("MDPREP_PSEUDONYM_KEY", KEY_A.hex())
    write_manifest(path_manifest(), tmp_path / "m.parquet")
    res = runner.invoke(main, ["pseudonymize", str(tmp_path / "m.parquet"), "-o", str(tmp_path / "p.parquet"), "--path-map", str(tmp_path / "map.csv")])
    assert res.exit_code == 0, res.stderr
    assert stat.S_IMODE(os.stat(tmp_path / "map.csv").st_mode) == 0o600 and "never commit" in res.stderr
    p = read_manifest(tmp_path / "p.parquet")
    assert set(resolve_paths(p, load_path_map(tmp_path / "map.csv")).frame["path"]) == set(path_manifest().frame["path"])
    res = runner.invoke(main, ["pseudonymize", str(tmp_path / "m.parquet"), "-o", str(tmp_path / "q.parquet")])
    assert res.exit_code == 0 and "no path map was written" in res.stderr
    res = runner.invoke(main, ["pseudonymize", str(tmp_path / "m.parquet"), "-o", str(tmp_path / "r.parquet"), "--paths", "keep", "--path-map", str(tmp_path / "x.csv")])
    assert res.exit_code == 2 and "Error: --path-map needs pseudonymised paths" in res.stderr
    assert "PAT" not in res.stderr


# ----------------------------------------------------------------------------- 5. passes and the audit


def test_second_pass_is_refused_and_audits_compare_like_with_like(runner, tmp_path):
    s = split_manifest(cohort(), ratios=(0.5, 0.5), seed=0).manifest
    once = pseudonymize(s, KEY_A).manifest
    assert pseudonymization_state(once).passes == 1 and pseudonymization_state(s).passes == 0
    with pytest.raises(UsageError, match="already pseudonymised once"):
        pseudonymize(once, KEY_A)
    # A manifest pseudonymised twice with one key (as older versions allowed).
    twice = pseudonymize(replace(once, history=()), KEY_A).manifest
    twice = replace(twice, history=once.history + twice.history)
    assert pseudonymization_state(twice).describe().startswith("pseudonymised twice")
    with pytest.raises(UsageError, match="different number of passes"):
        combine_manifests([once, twice], ["a", "b"])
    with pytest.raises(UsageError, match="not pseudonymised"):
        combine_manifests([s, once], ["a", "b"])
    combine_manifests([once, once], ["a", "b"])  # same key, same passes: fine
    halves = {n: once.with_frame(once.frame[once.frame["split"] == n]) for n in ("train", "test")}
    write_manifest(halves["train"], tmp_path / "train.parquet")
    write_manifest(twice.with_frame(twice.frame[twice.frame["split"] == "test"]), tmp_path / "test.parquet")
    res = runner.invoke(main, ["audit-leakage", str(tmp_path / "train.parquet"), str(tmp_path / "test.parquet")])
    assert res.exit_code == 2 and "different number of passes" in res.stderr and "No leakage" not in res.stdout + res.stderr


def test_mixed_key_audit_is_refused(runner, tmp_path):
    a = split_manifest(cohort(), ratios=(0.5, 0.5), seed=0).manifest
    pa_, pb = pseudonymize(a, KEY_A).manifest, pseudonymize(a, KEY_B).manifest
    with pytest.raises(UsageError, match="different keys"):
        check_same_key([pa_, pb], ["a", "b"])
    write_manifest(pa_, tmp_path / "a.parquet")
    write_manifest(pb, tmp_path / "b.parquet")
    res = runner.invoke(main, ["audit-leakage", str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")])
    assert res.exit_code == 2 and "different keys" in res.stderr
    check_same_key([pa_, pa_], ["a", "b"])  # one key: fine


# ----------------------------------------------------------------------------- 6. keys


def test_refuses_without_key_and_weak_keys(monkeypatch):
    monkeypatch.delenv("MDPREP_PSEUDONYM_KEY", raising=False)
    with pytest.raises(MissingKeyError, match="never falls back"):
        load_key(None)
    with pytest.raises(MissingKeyError, match="at least 32"):
        parse_key("abcd", source="test")
    rng = np.random.default_rng(1)
    weak = {
        "one letter": "a" * 64,
        "two letters as text": "ab" * 40,
        "hex with few values": "0123456789abcdef" * 4,
        "hex of a repeated block": "00112233445566778899aabbccddeeff" * 2,
        "repeated random block": (bytes(rng.integers(0, 256, 8, dtype=np.uint8)) * 4).hex(),
        "repeated random bytes": bytes(rng.integers(0, 256, 16, dtype=np.uint8)) * 2,
        "a byte sequence": bytes(range(32)),
        "an alphabet": "abcdefghijklmnopqrstuvwxyz012345",
        "a passphrase": "correct horse battery staple is my key",
        "a pangram": "The quick brown fox jumps over the lazy dog!",
        "hyphenated words": "abacus-zebra-lumber-quartz-violin-tundra",
        "few symbols": "".join(rng.choice(list("abcd"), 64)),
    }
    for what, material in weak.items():
        with pytest.raises(MissingKeyError, match="the (hex )?key from test.key is too short or too regular") as err:
            parse_key(material, source="test.key")
        shown = material if isinstance(material, str) else material.hex()
        assert shown not in err.value.message and shown[:12] not in err.value.message, what
    strong = [generate_key() for _ in range(300)]
    strong += [secrets.token_bytes(32) for _ in range(300)]
    strong += [base64.b64encode(secrets.token_bytes(32)).decode() for _ in range(300)]
    strong += [secrets.token_urlsafe(32) for _ in range(300)]
    for material in strong:
        parse_key(material, source="test")
    monkeypatch.setenv("MDPREP_PSEUDONYM_KEY", KEY_A.hex())
    assert load_key(None) == KEY_A


def test_key_never_appears_in_any_output(runner, tmp_path):
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
    res2 = runner.invoke(main, ["audit-leakage", str(out_dir / "p.parquet"), "--json", str(out_dir / "a.json")])
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


# ----------------------------------------------------------------------------- 7. the leak test

LEAK_TAGS = [
    "OtherPatientIDs", "PatientBirthName", "PatientMotherBirthName", "PatientTelephoneNumbers", "PatientAddress",
    "RequestingPhysician", "OperatorsName", "InstitutionName", "DeviceSerialNumber", "AcquisitionDateTime",
    "ContentDate", "SeriesDate", "StudyTime",
]


def _identifying_tree(root):
    """A synthetic DICOM tree whose files carry every identifying attribute of LEAK_TAGS; returns what must never leak."""
    import pydicom

    from mdprep.synthetic import write_dicom_tree

    planted = write_dicom_tree(root, patients=4, images_per_patient=2, shape=(8, 8), private_tags=0)
    secrets_: set[str] = set()
    for rel in sorted(planted.outcomes):
        path = os.path.join(root, rel)
        ds = pydicom.dcmread(path)
        p = int(ds.PatientID[3:])
        # Dates of patient p lie in year 2000 + 4p, so a date moved by up to a year never lands on another patient's.
        day = f"{2000 + 4 * p}0615"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = day
        ds.AcquisitionDateTime = day + "101112"
        ds.PatientBirthDate = f"{1930 + 4 * p}0310"
        ds.OtherPatientIDs = [f"MRN77{p}31", f"HOSP{p}9"]
        ds.PatientBirthName = f"Birthname^Pat{p}"
        ds.PatientMotherBirthName = f"Mothername^Of{p}"
        ds.PatientTelephoneNumbers = f"+44 20 7946 0{p}58"
        ds.PatientAddress = f"{p} Leakage Lane, Springfield"
        ds.RequestingPhysician = f"Requester^Rita{p}"
        ds.OperatorsName = f"Operator^Otto{p}"
        ds.InstitutionName = f"Saint Elsewhere {p}"
        ds.DeviceSerialNumber = f"SN-{p}-4242"
        ds.save_as(path, enforce_file_format=True)
        values = [ds.PatientID, str(ds.PatientName), ds.AccessionNumber, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                  *ds.OtherPatientIDs, str(ds.PatientBirthName), str(ds.PatientMotherBirthName), ds.PatientTelephoneNumbers,
                  ds.PatientAddress, str(ds.RequestingPhysician), str(ds.OperatorsName), ds.InstitutionName, ds.DeviceSerialNumber, rel]
        secrets_.update(values)
        for d in (day, ds.PatientBirthDate):
            secrets_.update({d, f"{d[:4]}-{d[4:6]}-{d[6:]}"})
    return planted, secrets_


def _all_text(path) -> bytes:
    """The bytes of a file, and for Parquet its decoded cells and metadata too (the data pages are compressed)."""
    data = path.read_bytes()
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        cells = table.to_pandas().astype("str").to_csv(index=False)
        meta = json.dumps({k.decode(): v.decode("utf-8", "replace") for k, v in (table.schema.metadata or {}).items()})
        data += cells.encode() + meta.encode()
    return data


def test_no_raw_identifier_or_date_reaches_any_output(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("MDPREP_PSEUDONYM_KEY", KEY_A.hex())
    tree, public, private = tmp_path / "tree", tmp_path / "public", tmp_path / "private"
    public.mkdir()
    private.mkdir()
    _, raw = _identifying_tree(tree)
    tags = ["--tags", ",".join(LEAK_TAGS), "--workers", "1"]
    logs = []

    def run(*args):
        res = runner.invoke(main, [str(a) for a in args])
        assert res.exit_code in (0, 1), res.stderr
        logs.append(res.stdout + res.stderr)
        return res

    res = run("ingest", "dicom", tree, *tags, "--pseudonymize", "-o", public / "ingested.parquet")
    assert "other_patient_ids" in res.stderr and "institution_name" in res.stderr
    run("split", public / "ingested.parquet", "--ratios", "0.5,0.5", "--seed", "0", "-o", public / "split.parquet")
    run("audit-leakage", public / "split.parquet", "--json", public / "audit.json", "--markdown", public / "audit.md", "--junit", public / "audit.xml")
    run("report", public / "split.parquet", "--audit", public / "audit.json", "-o", public / "report.html")
    # The other route: a raw manifest in a private folder, pseudonymised with a mapping and a path map.
    run("ingest", "dicom", tree, *tags, "-o", private / "raw.parquet")
    run("pseudonymize", private / "raw.parquet", "-o", public / "pseudo.parquet", "--mapping", private / "map.csv", "--path-map", private / "paths.csv")
    for secret_file in ("map.csv", "paths.csv"):
        assert stat.S_IMODE(os.stat(private / secret_file).st_mode) == 0o600
    assert "PAT00001" in (private / "map.csv").read_text()  # the secrets hold raw ids, as they must
    # The search finds what is there: the raw manifest holds every planted value but the (never ingested) patient
    # names and the YYYYMMDD form of birth dates (a date column, decoded as YYYY-MM-DD).
    in_raw = _all_text(private / "raw.parquet")
    assert sorted(s for s in raw if s.encode() not in in_raw) == sorted(s for s in raw if s.startswith("Doe^") or re.fullmatch(r"19\d{6}", s))
    written = {p.name: _all_text(p) for p in public.iterdir()}
    assert {"ingested.parquet", "split.parquet", "audit.json", "audit.md", "audit.xml", "report.html", "pseudo.parquet"} <= set(written)
    written["logs"] = "\n".join(logs).encode()
    leaks = [(name, s) for name, data in written.items() for s in raw if s.encode() in data]
    assert leaks == []
    # The pseudonymised manifest still finds its files through the path map.
    pseudo = read_manifest(public / "pseudo.parquet")
    resolved = resolve_paths(pseudo, load_path_map(private / "paths.csv"))
    assert all((tree / p).is_file() for p in resolved.frame["path"])
    f = read_manifest(public / "ingested.parquet").frame
    dates = pd.to_datetime(f["study_date"].astype(str))
    moved = pd.to_datetime(f["acquisition_date_time"].str[:8], format="%Y%m%d")
    assert (dates == moved).all() and (pd.to_datetime(f["series_date"].astype(str)) == dates).all()


def test_column_names_are_read_word_by_word_for_names_record_numbers_accession_and_contact():
    n = 6
    pid = [f"PT{i // 2:05d}" for i in range(n)]
    frame = pd.DataFrame(
        {
            "image_id": [f"im{i}" for i in range(n)],
            "path": [f"im{i}.png" for i in range(n)],
            "patient_id": pid,
            "pt_name": ["Ann Smith", "Ann Smith", "Bob Jones", "Bob Jones", "Cy Lee", "Cy Lee"],
            "PatientFirstName": ["Ann", "Ann", "Bob", "Bob", "Cy", "Cy"],
            "Given": ["Ann", "Ann", "Bob", "Bob", "Cy", "Cy"],
            "UR": [f"UR{i // 2}" for i in range(n)],
            "hosp_no": [f"H{i // 2}" for i in range(n)],
            "Chart #": [f"C{i // 2}" for i in range(n)],
            "Accession No": [f"AC{i}" for i in range(n)],
            "Mobile": ["0400 000 000"] * n,
            "City": ["Springfield"] * n,
            "class_name": ["Nodule", "Mass"] * 3,
            "Urgency": ["routine", "urgent"] * 3,
            "rurality": ["rural", "urban"] * 3,
            "Finding Labels": ["Mass", "No Finding"] * 3,
        }
    )
    with pytest.raises(UsageError) as err:  # free text by its name, as before: no word of it names a person or a record
        pseudonymize(Manifest(frame, labels=()), KEY_A)
    assert err.value.fields["columns"] == ["Finding Labels"]
    frame = frame.drop(columns="Finding Labels")
    result = pseudonymize(Manifest(frame, labels=()), KEY_A)
    t = result.treatments.set_index("column")
    for col in ("pt_name", "PatientFirstName", "Given"):
        assert (t.loc[col, "treatment"], "a person's name" in t.loc[col, "reason"]) == ("dropped", True), col
    for col in ("UR", "hosp_no", "Chart #"):
        assert (t.loc[col, "treatment"], "record number" in t.loc[col, "reason"]) == ("dropped", True), col
    assert t.loc["Mobile", "treatment"] == t.loc["City", "treatment"] == "dropped"
    for col in ("class_name", "Urgency", "rurality"):
        assert t.loc[col, "treatment"] == "kept", col
    assert t.loc["Accession No", "treatment"] == "pseudonymised" and "accession" in t.loc["Accession No", "reason"]
    acc = result.manifest.frame["Accession No"]
    assert acc.nunique() == n and not acc.isin(frame["Accession No"]).any()
    again = pseudonymize(Manifest(frame, labels=()), KEY_A).manifest.frame["Accession No"]
    assert acc.tolist() == again.tolist()
    flat = result.manifest.frame.astype("str").to_numpy().ravel().tolist()
    assert not {"Ann", "Ann Smith", "UR0", "H0", "C0", "Springfield"} & set(flat)


def test_dates_in_common_formats_are_shifted_whatever_the_column_is_called():
    pid = ["P0001", "P0001", "P0002", "P0002"]
    frame = pd.DataFrame(
        {
            "image_id": ["a", "b", "c", "d"],
            "path": ["a.png", "b.png", "c.png", "d.png"],
            "patient_id": pid,
            "exam_dt": ["03/01/2019", "03/05/2019", "03/04/2019", "03/06/2019"],  # ambiguous: month first
            "DateOfBirth": ["11/22/1951", "11/22/1951", "01/02/1960", "01/02/1960"],  # second field > 12: month first
            "Birthdate": ["22.11.1951", "22.11.1951", "02.01.1960", "02.01.1960"],
            "seen": ["25/12/2019 10:30", "26/12/2019", "01/02/2020", "02/02/2020"],  # no date word; first field > 12: day first
            "scan": ["01-Mar-2019", "05-Mar-2019", "04-Mar-2019", "06-Mar-2019"],
            "dob": ["unknown", "n/a", "unknown", "n/a"],  # named like a date, not dates: dropped, never kept raw
            "grade": ["1", "2", "3", "1"],
        }
    )
    result = pseudonymize(Manifest(frame, labels=()), KEY_A)
    t = result.treatments.set_index("column")
    for col in ("exam_dt", "DateOfBirth", "Birthdate", "seen", "scan"):
        assert t.loc[col, "treatment"] == "shifted", col
    assert "month first" in t.loc["exam_dt", "reason"] and "either way" not in t.loc["DateOfBirth", "reason"]
    assert t.loc["dob", "treatment"] == "dropped" and t.loc["grade", "treatment"] == "kept"
    out = result.manifest.frame
    offsets = pd.to_timedelta([date_shift_days(KEY_A, p) for p in pid], unit="D")
    expected = {
        "exam_dt": ["2019-03-01", "2019-03-05", "2019-03-04", "2019-03-06"],
        "DateOfBirth": ["1951-11-22", "1951-11-22", "1960-01-02", "1960-01-02"],
        "Birthdate": ["1951-11-22", "1951-11-22", "1960-01-02", "1960-01-02"],
        "seen": ["2019-12-25", "2019-12-26", "2020-02-01", "2020-02-02"],
        "scan": ["2019-03-01", "2019-03-05", "2019-03-04", "2019-03-06"],
    }
    for col, days in expected.items():
        shifted = (pd.to_datetime(days) + offsets).strftime("%Y-%m-%d").tolist()
        assert out[col].astype("str").tolist() == shifted, col
    assert "dob" not in out.columns
