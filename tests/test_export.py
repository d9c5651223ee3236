"""mdprep export: MONAI datalists, Hugging Face folders and CSV files that keep every row, split, fold and label."""

from __future__ import annotations

import csv
import json
import os
import warnings

import numpy as np
import pandas as pd
import pytest

from mdprep.cli import main
from mdprep.errors import LeakageError, UsageError
from mdprep.export import export_manifest, part_name
from mdprep.manifest import Manifest, read_manifest, write_manifest

LABELS = ("Edema", "Lung Opacity")
#: Manifest split of each patient: parts train, validation, test, two of their own (one a YAML
#: number if left unquoted), and rows with no split.
PATIENT_SPLITS = ["train"] * 6 + ["val"] * 2 + ["test"] * 2 + ["holdout-2", "2021", None]
#: Where each manifest split lands: (Hugging Face split / file stem, MONAI list key).
PARTS = {"train": ("train", "training"), "val": ("validation", "validation"), "test": ("test", "test"),
         "holdout-2": ("holdout_2", "holdout_2"), "2021": ("2021", "2021"), None: ("unassigned", "unassigned")}


def _frame(n_patients: int = 13) -> pd.DataFrame:
    """An NIH/CheXpert look-alike: ids with leading zeros, 1/0/-1/null labels, folds on train and val only."""
    rows = []
    for p in range(n_patients):
        for k in range(1 + p % 3):
            rows.append((f"{len(rows) + 1:03d}", f"{p + 1:03d}", PATIENT_SPLITS[p % len(PATIENT_SPLITS)]))
    f = pd.DataFrame(rows, columns=["image_id", "patient_id", "split"])
    f["path"] = "imgs/" + f["patient_id"] + "/" + f["image_id"] + ".png"
    folded = f["split"].isin(["train", "val"]).to_numpy()
    f["split"] = f["split"].astype("string")
    f["fold"] = pd.array(np.where(folded, f["patient_id"].astype(int) % 3, -1), dtype="Int16")
    f.loc[~folded, "fold"] = pd.NA
    f["view"] = np.where(np.arange(len(f)) % 2, "AP", "PA")
    f["age"] = np.where(np.arange(len(f)) % 5 == 0, np.nan, 40.0 + np.arange(len(f)))
    f["Edema"] = pd.array([[1, 0, -1, None][i % 4] for i in range(len(f))], dtype="Int8")
    f["Lung Opacity"] = pd.array([[0, None, 1, -1, 0][i % 5] for i in range(len(f))], dtype="Int8")
    return f[["image_id", "path", "patient_id", "view", "age", "split", "fold", *LABELS]]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A written manifest (root: a folder holding every image file) and its frame; read-only for tests."""
    d = tmp_path_factory.mktemp("export")
    root = d / "images"
    f = _frame()
    for p in f["path"]:
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_bytes(b"")
    write_manifest(Manifest(f, labels=LABELS, root=str(root)), d / "m.parquet")
    return d / "m.parquet", root, read_manifest(d / "m.parquet").frame


def _label(v):
    return None if pd.isna(v) else int(v)


def _expected(frame: pd.DataFrame) -> dict[str, dict]:
    """image_id -> the part it must land in, its fold and its labels."""
    return {
        r["image_id"]: {"part": PARTS[None if pd.isna(r["split"]) else r["split"]], "fold": _label(r["fold"]),
                        "labels": [_label(r[c]) for c in LABELS], "path": r["path"], "split": None if pd.isna(r["split"]) else r["split"]}
        for _, r in frame.iterrows()
    }


def test_part_names_follow_the_loaders():
    assert [part_name(s) for s in ("train", "Training", "trainval", "val", "valid", "DEV", "validation", "test", "hold out/2")] == [
        "train", "train", "train", "validation", "validation", "validation", "validation", "test", "hold_out_2"]


def test_monai_datalist_round_trips_through_monai(cohort, tmp_path):
    from monai.data import load_decathlon_datalist

    path, root, frame = cohort
    out = tmp_path / "datalist.json"
    r = export_manifest(read_manifest(path), "monai", out)
    assert r.rows == len(frame) and sum(r.counts.values()) == len(frame)
    assert list(r.counts) == ["train", "validation", "test", "2021", "holdout_2", "unassigned"]
    expected = _expected(frame)
    by_path = {os.path.realpath(root / e["path"]): i for i, e in expected.items()}
    doc = json.loads(out.read_text())
    assert doc["mdprep"]["labels"] == list(LABELS) and doc["mdprep"]["export"]["options"]["uncertain"] == "ignore"
    seen = []
    for part, key in set(v["part"] for v in expected.values()):
        # base_dir elsewhere: absolute paths do not depend on it.
        items = load_decathlon_datalist(out, data_list_key=key, base_dir=str(tmp_path))
        for item in items:
            image = os.path.realpath(item["image"])
            assert os.path.isfile(image) and image.startswith(os.path.realpath(root) + os.sep)
            e = expected[by_path[image]]
            assert e["part"] == (part, key)
            assert item.get("fold") == e["fold"] and ("fold" in item) == (e["fold"] is not None)
            # Default coding: 1 and 0 kept and counted, uncertain and missing masked out (as mdprep train).
            assert item["label"] == [1.0 if v == 1 else 0.0 for v in e["labels"]]
            assert item["label_mask"] == [1.0 if v in (0, 1) else 0.0 for v in e["labels"]]
            seen.append(by_path[image])
    assert sorted(seen) == sorted(expected)  # every row exactly once

    # Relative paths resolve under MONAI's base_dir; the other codings of -1 and null.
    rel = tmp_path / "relative.json"
    export_manifest(read_manifest(path), "monai", rel, relative=True, uncertain="ones", missing="negative", columns=["image_id"])
    items = load_decathlon_datalist(rel, data_list_key="training", base_dir=str(root))
    assert len(items) == r.counts["train"]
    for item in items:
        e = expected[item["image_id"]]
        assert os.path.realpath(item["image"]) == os.path.realpath(root / e["path"])
        assert item["label"] == [0.0 if v in (0, None) else 1.0 for v in e["labels"]] and item["label_mask"] == [1.0, 1.0]


def test_hf_folder_loads_with_datasets_both_ways(cohort, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    import datasets

    path, root, frame = cohort
    out = tmp_path / "hf"
    r = export_manifest(read_manifest(path), "hf", out, columns=["view", "age"], inputs=[{"path": "/secret/m.parquet", "sha256": "ab", "size": 1}])
    assert sorted(os.listdir(out)) == ["2021.parquet", "README.md", "holdout_2.parquet", "test.parquet", "train.parquet", "unassigned.parquet", "validation.parquet"]
    card = (out / "README.md").read_text()
    assert card.startswith("---\nconfigs:\n- config_name: default\n") and '  - split: "2021"\n    path: "2021.parquet"\n' in card
    assert "1 positive, 0 negative, -1 uncertain, null not mentioned" in card and "No leakage found" in card
    assert "/secret" not in card  # the manifest's file is fingerprinted, its path (which could name a patient) is not
    by_card = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "c1"))
    files = {p.name: str(out / p.key) for p in r.parts}
    by_files = datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "c2"))
    expected = _expected(frame)
    for ds in (by_card, by_files):
        assert set(ds) == set(r.counts) and {k: len(v) for k, v in ds.items()} == r.counts
        seen = []
        for split, rows in ds.items():
            assert rows.features["image_id"].dtype == "string" and rows.features["Edema"].dtype == "int8"
            for row in rows:
                e = expected[row["image_id"]]
                assert e["part"][0] == split and row["split"] == e["split"] and row["fold"] == e["fold"]
                assert [row[c] for c in LABELS] == e["labels"] and row["image"] == str(root / e["path"])
                seen.append(row["image_id"])
        assert sorted(seen) == sorted(expected)
    assert by_card["train"][0]["image_id"] == "001" and by_card["train"][0]["view"] == "PA"


def test_csv_files_keep_ids_as_text_and_nulls_empty(cohort, tmp_path):
    path, root, frame = cohort
    out = tmp_path / "csv"
    r = export_manifest(read_manifest(path), "csv", out, relative=True)
    expected = _expected(frame)
    seen = []
    for p in r.parts:
        with open(out / p.key, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == p.rows
        for row in rows:
            e = expected[row["image_id"]]
            assert e["part"][0] == p.name and row["image"] == e["path"] and row["split"] == (e["split"] or "")
            assert row["fold"] == ("" if e["fold"] is None else str(e["fold"]))
            assert [row[c] for c in LABELS] == ["" if v is None else str(v) for v in e["labels"]]
            seen.append(row["image_id"])
    assert sorted(seen) == sorted(expected) and "001" in seen
    assert (out / "train.csv").read_text().splitlines()[1].startswith('"001","imgs/001/001.png","001","train",')
    assert not (out / "README.md").read_text().startswith("---")  # a card for people: no splits declared for a CSV reader that would guess types


def test_same_manifest_same_bytes(cohort, tmp_path):
    path = cohort[0]
    for fmt in ("monai", "hf", "csv"):
        a, b = tmp_path / f"{fmt}-a", tmp_path / f"{fmt}-b"
        export_manifest(read_manifest(path), fmt, a)
        export_manifest(read_manifest(path), fmt, b)
        if fmt == "monai":
            assert a.read_bytes() == b.read_bytes()
        else:
            assert sorted(os.listdir(a)) == sorted(os.listdir(b))
            assert all((a / n).read_bytes() == (b / n).read_bytes() for n in os.listdir(a))


def _leaky(tmp_path, split: bool = True):
    f = _frame()
    if split:
        f.loc[f["patient_id"] == "003", "split"] = ["train", "test", "test"][: int((f["patient_id"] == "003").sum())]
    else:
        f = f.drop(columns=["split"]).assign(fold=pd.array(np.arange(len(f)) % 3, dtype="Int16"))  # folds ignore patients
    path = tmp_path / "leaky.parquet"
    write_manifest(Manifest(f, labels=LABELS, root=str(tmp_path)), path)
    return path


def test_leakage_is_refused_like_train_unless_allowed(runner, tmp_path):
    path = _leaky(tmp_path)
    out = tmp_path / "out.json"
    res = runner.invoke(main, ["export", str(path), "--format", "monai", "-o", str(out)])
    assert res.exit_code == 2 and res.stderr.startswith("Error: the manifest leaks between the parts to export: Leakage found by ")
    assert "patient_overlap (splits)" in res.stderr and "found '003' (test, train)" in res.stderr and "--allow-leakage" in res.stderr
    assert not out.exists()
    with pytest.raises(LeakageError):
        export_manifest(read_manifest(path), "hf", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    res = runner.invoke(main, ["export", str(path), "--format", "monai", "-o", str(out), "--allow-leakage"])
    assert res.exit_code == 0 and "Warning: the manifest leaks" in res.stderr
    audit = json.loads(out.read_text())["mdprep"]["leakage_audit"]
    assert audit["leakage_allowed"] is True and "patient_overlap (splits)" in audit["failed"]
    # Folds are audited too; a manifest with folds but no split is one train part.
    (tmp_path / "f").mkdir()
    folds = _leaky(tmp_path / "f", split=False)
    res = runner.invoke(main, ["export", str(folds), "--format", "csv", "-o", str(tmp_path / "csv")])
    assert res.exit_code == 2 and "patient_overlap (folds)" in res.stderr


def test_folds_without_split_are_one_train_part(tmp_path):
    f = _frame().drop(columns=["split"])
    f["fold"] = pd.array(f["patient_id"].astype(int) % 3, dtype="Int16")
    r = export_manifest(Manifest(f, labels=LABELS, root=str(tmp_path)), "monai", tmp_path / "d.json")
    assert r.counts == {"train": len(f)} and r.checks_run == ("image_overlap (folds)", "patient_overlap (folds)")
    items = json.loads((tmp_path / "d.json").read_text())["training"]
    assert [i["fold"] for i in items] == f["fold"].tolist()


def test_cli_summary_and_refusals(runner, cohort, tmp_path):
    path, root, frame = cohort
    res = runner.invoke(main, ["export", str(path), "--format", "hf", "-o", str(tmp_path / "hf")])
    assert res.exit_code == 0, res.stderr
    assert "Leakage audit: No leakage found in 4 of 20 checks" in res.stderr and "holdout_2.parquet" in res.stderr
    assert f"{len(frame)} manifest rows = " in res.stderr
    res = runner.invoke(main, ["export", str(path), "--format", "monai", "-o", "-", "-q"])
    assert res.exit_code == 0 and res.stderr == "" and json.loads(res.stdout)["training"]

    def refused(argv, *words):
        res = runner.invoke(main, ["export", str(path), *argv])
        assert res.exit_code == 2 and res.stderr.startswith("Error: "), res.stderr
        for w in words:
            assert w in res.stderr, res.stderr

    refused(["--format", "monai", "-o", str(path)], "never writes over its inputs")
    refused(["--format", "hf", "-o", str(tmp_path / "x"), "--uncertain", "ones"], "--uncertain applies to --format monai only")
    refused(["--format", "monai", "-o", str(tmp_path / "x.json"), "--relative", "--root", str(tmp_path)], "--root has no effect")
    refused(["--format", "csv", "-o", str(tmp_path / "y"), "--columns", "view,nope"], "'nope' not found")
    refused(["--format", "hf", "-o", str(path)], "is a file; give a folder")
    res = runner.invoke(main, ["export", str(path), "--format", "xlsx", "-o", str(tmp_path / "z")])
    assert res.exit_code == 2 and "Error: Invalid value for '--format': 'xlsx' is not one of 'monai', 'hf', 'csv'" in res.stderr
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "extra.csv").write_text("a\n")
    refused(["--format", "csv", "-o", str(tmp_path / "old")], "already holds 'extra.csv'")
    assert os.listdir(tmp_path / "old") == ["extra.csv"]
    # A manifest to export sits in the folder under an output's name.
    (tmp_path / "inside").mkdir()
    inside = tmp_path / "inside" / "train.parquet"
    inside.write_bytes(path.read_bytes())
    res = runner.invoke(main, ["export", str(inside), "--format", "hf", "-o", str(tmp_path / "inside")])
    assert res.exit_code == 2 and "is the input MANIFEST" in res.stderr and inside.read_bytes() == path.read_bytes()


def test_no_split_no_root_and_clashing_names_are_usage_errors(tmp_path):
    f = _frame()
    with pytest.raises(UsageError, match="no 'split' column .*run `mdprep split` first"):
        export_manifest(Manifest(f.drop(columns=["split", "fold"]), labels=LABELS, root="/r"), "csv", tmp_path / "a")
    with pytest.raises(UsageError, match="records no image root.*--root DIR.*--relative"):
        export_manifest(Manifest(f, labels=LABELS), "hf", tmp_path / "b")
    clash = f.assign(split=f["split"].replace("test", "Testing"))
    clash.loc[0, "split"] = "test"
    with pytest.raises(UsageError, match=r"split 'Testing', split 'test' would both be written as part 'test'"):
        export_manifest(Manifest(clash, labels=LABELS, root="/r"), "csv", tmp_path / "c")
    with pytest.raises(UsageError, match="split named 'ALL' cannot be a Hugging Face split"):
        export_manifest(Manifest(f.assign(split=f["split"].replace("2021", "ALL")), labels=LABELS, root="/r"), "hf", tmp_path / "e")
    with pytest.raises(UsageError, match="'image' would appear twice"):
        export_manifest(Manifest(f.assign(image="x"), labels=LABELS, root="/r"), "hf", tmp_path / "d", columns=["image"])
    assert not any((tmp_path / n).exists() for n in "abcde")


def test_synthetic_rows_are_left_out_and_counted(tmp_path):
    f = _frame()
    f["synthetic"] = pd.array(np.arange(len(f)) < 3, dtype="boolean")
    with pytest.warns(UserWarning, match="3 synthetic row"):
        r = export_manifest(Manifest(f, labels=LABELS, root=str(tmp_path)), "csv", tmp_path / "csv")
    assert r.manifest_rows == len(f) == r.rows + r.synthetic and r.synthetic == 3
    assert r.provenance["rows"] == {"manifest": len(f), "exported": len(f) - 3, "synthetic_left_out": 3}


def test_a_warning_check_warns_and_exports(tmp_path):
    f = _frame().assign(sex="F", birth_date="1950-01-01")  # one birth date and sex for patients in every split
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = export_manifest(Manifest(f, labels=LABELS, root=str(tmp_path)), "hf", tmp_path / "hf")
    said = sorted(str(w.message).split(":")[0] for w in caught)
    assert said == ["same_person (folds)", "same_person (splits)"] and "different patient ids in two splits" in str(caught[0].message)
    assert "same_person (splits)" in r.checks_run and not r.leakage_allowed and r.rows == len(f)


def test_carried_columns_are_valid_json_and_lists_stay_out_of_csv(tmp_path):
    f = _frame()
    f["emb"] = pd.Series([[float(i), np.nan if i % 2 else np.inf] for i in range(len(f))], dtype=object)
    f["study_date"] = pd.to_datetime("2020-01-02").date()
    m = Manifest(f, labels=LABELS, root=str(tmp_path))
    export_manifest(m, "monai", tmp_path / "d.json", columns=["emb", "age", "study_date", "image_id"])
    items = json.loads((tmp_path / "d.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))["training"]
    first = next(i for i in items if i["image_id"] == "001")
    assert first["emb"] == [0.0, None] and first["age"] is None and first["study_date"] == "2020-01-02"
    with pytest.raises(UsageError, match="--columns 'emb' hold lists, which a CSV cell cannot"):
        export_manifest(m, "csv", tmp_path / "csv", columns=["emb"])
    assert not (tmp_path / "csv").exists()
