from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdprep.cli import main
from mdprep.errors import ManifestValidationError, MdprepWarning, UsageError
from mdprep.manifest import Manifest, read_manifest, write_manifest
from mdprep.splitting import (
    MultilabelStratifiedGroupKFold,
    MultilabelStratifiedGroupSplit,
    Stratum,
    bin_values,
    check_ratios,
    iterative_group_assignment,
    parse_stratum,
    split_manifest,
    stratify_by_items,
)


def cohort(patients=60, labels=("A", "B", "C"), seed=0, max_images=4, prevalence=(0.3, 0.1, 0.03)) -> Manifest:
    rng = np.random.default_rng(seed)
    per = rng.integers(1, max_images + 1, patients)
    pid = np.repeat([f"p{i:04d}" for i in range(patients)], per)
    n = len(pid)
    frame = pd.DataFrame({"image_id": [f"img{i}" for i in range(n)], "path": [f"img{i}.png" for i in range(n)], "patient_id": pid})
    frame["sex"] = np.repeat(rng.choice(["M", "F"], patients), per)
    for name, p in zip(labels, prevalence):
        values = np.where(rng.random(n) < p, 1, 0).astype(float)
        values[rng.random(n) < 0.05] = -1
        values[rng.random(n) < 0.05] = np.nan
        frame[name] = pd.array(pd.Series(values).astype("Int8"))
    return Manifest(frame, labels=tuple(labels))


def _groups_cross(frame, col):
    return int((frame.dropna(subset=[col]).groupby("patient_id")[col].nunique() > 1).sum())


def test_ratio_split_keeps_patients_whole_and_sizes_near_ratios():
    m = cohort(patients=400)
    r = split_manifest(m, ratios=(0.7, 0.1, 0.2), seed=3)
    f = r.manifest.frame
    assert _groups_cross(f, "split") == 0
    assert f["split"].notna().all() and set(f["split"]) == {"train", "val", "test"}
    sizes = f["split"].value_counts(normalize=True)
    assert abs(sizes["train"] - 0.7) < 0.02 and abs(sizes["val"] - 0.1) < 0.02 and abs(sizes["test"] - 0.2) < 0.02
    q = r.split_quality
    assert q.group_overlap == 0 and q.max_prevalence_deviation < 0.03


def test_uncertain_and_missing_labels_are_not_positives():
    m = cohort(patients=50)
    r = split_manifest(m, folds=3, seed=0)
    q = r.fold_quality
    f = m.frame
    for label in m.labels:
        assert sum(p.positives[label] for p in q.parts) == int((f[label] == 1).sum())


def test_folds_with_held_out_test():
    m = cohort(patients=200)
    r = split_manifest(m, ratios=(0.8, 0.2), names=("trainval", "test"), folds=4, seed=1)
    f = r.manifest.frame
    assert f.loc[f["split"] == "test", "fold"].isna().all()
    assert set(f.loc[f["split"] == "trainval", "fold"].astype(int)) == {0, 1, 2, 3}
    assert _groups_cross(f, "fold") == 0
    assert any("held out" in n for n in r.notes)


def test_same_seed_same_bytes_other_seed_other_split(tmp_path):
    m = cohort(patients=100)
    for name in ("a", "b"):
        write_manifest(split_manifest(m, ratios=(0.7, 0.1, 0.2), folds=3, seed=7).manifest, tmp_path / f"{name}.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    other = split_manifest(m, ratios=(0.7, 0.1, 0.2), seed=8).manifest.frame["split"]
    assert not other.equals(read_manifest(tmp_path / "a.parquet").frame["split"])


def test_stratify_by_balances_a_metadata_column():
    m = cohort(patients=300)
    r = split_manifest(m, ratios=(0.5, 0.5), stratify_by=["sex"], seed=0)
    assert "sex=M" in r.split_quality.labels
    share = r.manifest.frame.groupby("split")["sex"].apply(lambda s: (s == "M").mean())
    assert abs(share.iloc[0] - share.iloc[1]) < 0.05


def test_keep_existing_pins_rows_and_pulls_their_groups():
    m = cohort(patients=80)
    f = m.frame.copy()
    f["split"] = pd.Series([None] * len(f), dtype="str")
    first_rows = f.groupby("patient_id").head(1).index[:10]
    f.loc[first_rows, "split"] = "test"
    pinned = set(f.loc[first_rows, "patient_id"])
    with pytest.warns(MdprepWarning, match="straddle a fixed split"):
        r = split_manifest(m.with_frame(f), ratios=(0.7, 0.1, 0.2), keep_existing=True, seed=0)
    out = r.manifest.frame
    assert (out.loc[out["patient_id"].isin(pinned), "split"] == "test").all()
    assert _groups_cross(out, "split") == 0
    # A patient already in two fixed splits goes whole to the one holding most of its rows
    # (a tie to the later part: the test list stays whole), moving the fewest rows.
    torn = f.copy()
    pid = torn["patient_id"].value_counts()
    three, two = pid[pid >= 3].index[0], pid[pid == 2].index[0]
    rows3 = torn.index[torn["patient_id"] == three]
    torn.loc[rows3, "split"] = ["train"] * (len(rows3) - 1) + ["val"]
    rows2 = torn.index[torn["patient_id"] == two]
    torn.loc[rows2, "split"] = ["test", "train"]
    with pytest.warns(MdprepWarning, match="2 group\\(s\\) had rows in two or more existing splits.*moving 2 row"):
        r = split_manifest(m.with_frame(torn), ratios=(0.7, 0.1, 0.2), keep_existing=True)
    out = r.manifest.frame
    assert set(out.loc[rows3, "split"]) == {"train"} and set(out.loc[rows2, "split"]) == {"test"}
    assert r.moved["split"] == 2 and r.report()["moved_rows"] == {"split": 2}
    assert _groups_cross(out, "split") == 0
    bad = f.copy()
    bad.loc[first_rows[0], "split"] = "holdout"
    with pytest.raises(UsageError, match="'holdout'"):
        split_manifest(m.with_frame(bad), ratios=(0.7, 0.1, 0.2), keep_existing=True)


def test_bad_parameters():
    m = cohort(patients=3)
    with pytest.raises(UsageError, match="3 group\\(s\\) cannot fill 5 parts|cannot fill 5 folds"):
        split_manifest(m, folds=5)
    with pytest.raises(UsageError, match="must each be above 0"):
        check_ratios([1.2, -0.2])
    with pytest.raises(UsageError, match="must each be above 0 \\(a part of 0 gets no rows\\)"):
        check_ratios([0.7, 0.3, 0])
    with pytest.raises(UsageError, match="must be finite numbers"):
        check_ratios([float("nan"), 0.5])
    with pytest.raises(UsageError, match="sum to 0.9"):
        check_ratios([0.5, 0.4])
    with pytest.raises(UsageError, match="not label columns"):
        split_manifest(m, ratios=(0.5, 0.5), stratify=["sex"])
    with pytest.raises(UsageError, match="2 distinct names"):
        split_manifest(m, ratios=(0.5, 0.5), names=("a", "a"))


def test_missing_groups_error_or_become_their_own():
    m = cohort(patients=30)
    f = m.frame.copy()
    f["site"] = pd.Series(["s1"] * len(f), dtype="str")
    f.loc[f.index[:3], "site"] = None
    g = m.with_frame(f)
    with pytest.raises(UsageError, match="3 row\\(s\\) have no site.*--missing-group own"):
        split_manifest(g, group="site", ratios=(0.5, 0.5))
    f["site"] = pd.Series([f"s{i % 7}" for i in range(len(f))], dtype="str")
    f.loc[f.index[:3], "site"] = None
    r = split_manifest(m.with_frame(f), group="site", ratios=(0.5, 0.5), missing_group="own")
    assert any("groups of their own" in n for n in r.notes)


def test_rare_label_warns():
    m = cohort(patients=40, prevalence=(0.3, 0.1, 0.0))
    f = m.frame.copy()
    f["C"] = pd.array([0] * len(f), dtype="Int8")
    f.loc[f.index[0], "C"] = 1
    with pytest.warns(MdprepWarning, match="label 'C' has positives in only 1 group"):
        split_manifest(m.with_frame(f), folds=5)


def test_invalid_manifest_reports_all_violations():
    m = cohort(patients=5)
    f = m.frame.copy()
    f.loc[0, "image_id"] = f.loc[1, "image_id"]
    f.loc[2, "patient_id"] = None
    with pytest.raises(ManifestValidationError) as err:
        split_manifest(m.with_frame(f), ratios=(0.5, 0.5))
    assert len(err.value.violations) == 2


def test_sklearn_protocol_and_cross_validate():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_validate

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 3))
    y = (X[:, 0] > 0).astype(int)
    groups = np.repeat(np.arange(40), 3)
    cv = MultilabelStratifiedGroupKFold(n_splits=4, random_state=0)
    assert repr(cv) == "MultilabelStratifiedGroupKFold(n_splits=4, random_state=0)"
    for train, test in cv.split(X, y, groups):
        assert np.intersect1d(groups[train], groups[test]).size == 0
        assert len(train) + len(test) == len(X)
    scores = cross_validate(LogisticRegression(), X, y, groups=groups, cv=cv)
    assert len(scores["test_score"]) == 4
    s = MultilabelStratifiedGroupSplit(ratios=(0.6, 0.2, 0.2), random_state=0)
    pairs = list(s.split(X, y, groups))
    assert len(pairs) == s.get_n_splits() == 2
    with pytest.raises(UsageError, match="groups are required"):
        list(cv.split(X, y))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(1, 6), min_size=6, max_size=60),
    n_labels=st.integers(0, 4),
    k=st.integers(2, 5),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_assignment_properties(sizes, n_labels, k, seed, data):
    sizes = np.array(sizes)
    counts = np.array([[data.draw(st.integers(0, s)) for _ in range(n_labels)] for s in sizes], dtype=np.int64).reshape(len(sizes), n_labels)
    ratios = np.full(k, 1 / k)
    a = iterative_group_assignment(sizes, counts, ratios, np.random.RandomState(seed))
    b = iterative_group_assignment(sizes, counts, ratios, np.random.RandomState(seed))
    assert (a == b).all()  # determinism
    assert ((a >= 0) & (a < k)).all()  # every group assigned exactly once
    if len(sizes) >= k:
        # Greedy filling by room keeps every part within one largest group of its target.
        got = np.bincount(a, weights=sizes, minlength=k)
        if n_labels == 0:
            assert np.abs(got - sizes.sum() / k).max() <= sizes.max()


@pytest.mark.filterwarnings("ignore::mdprep.errors.MdprepWarning")  # rare labels in tiny cohorts, expected
@settings(max_examples=25, deadline=None)
@given(patients=st.integers(6, 80), seed=st.integers(0, 1000), folds=st.integers(2, 5))
def test_manifest_split_properties(patients, seed, folds):
    m = cohort(patients=patients, seed=seed)
    r = split_manifest(m, ratios=(0.6, 0.2, 0.2), folds=folds if patients >= 20 else None, seed=seed)
    f = r.manifest.frame
    assert len(f) == len(m.frame) and f["split"].notna().all()
    assert _groups_cross(f, "split") == 0
    assert (f["image_id"].to_numpy() == m.frame["image_id"].to_numpy()).all()
    if "fold" in f:
        assert _groups_cross(f, "fold") == 0
        assert f.loc[f["split"] != "test", "fold"].notna().all()


def test_cli_split_writes_report_and_exit_codes(runner, tmp_path):
    src = tmp_path / "m.parquet"
    write_manifest(cohort(patients=100), src)
    out, report = tmp_path / "s.parquet", tmp_path / "r.json"
    res = runner.invoke(main, ["split", str(src), "--ratios", "0.7,0.1,0.2", "--folds", "3", "--seed", "1", "-o", str(out), "--json", str(report)])
    assert res.exit_code == 0, res.stderr
    assert res.stdout == ""
    assert "LD " in res.stderr and "group overlap 0" in res.stderr
    doc = json.loads(report.read_text())
    assert doc["schema"] == "mdprep-split-report" and doc["version"] == 1
    assert [p["name"] for p in doc["split"]["parts"]] == ["train", "val", "test"]
    assert doc["split"]["summary"]["group_overlap"] == 0 and doc["folds"]["summary"]["group_overlap"] == 0
    assert read_manifest(out).history[-1]["seed"] == 1
    res = runner.invoke(main, ["split", str(src), "--ratios", "0.7,0.2", "-o", str(out)])
    assert res.exit_code == 2 and res.stderr.startswith("Error: ratios [0.7, 0.2] sum to 0.9")
    res = runner.invoke(main, ["split", str(src), "--ratios", "a,b", "-o", str(out)])
    assert res.exit_code == 2 and "not a comma-separated list of numbers" in res.stderr
    res = runner.invoke(main, ["split", str(src), "--group", "site", "-o", str(out)])
    assert res.exit_code == 2 and "column 'site' not found" in res.stderr
    res = runner.invoke(main, ["split", str(src), "--folds", "500", "-o", str(out)])
    assert res.exit_code == 2 and "cannot fill 500" in res.stderr


def test_resplitting_drops_stale_folds():
    m = split_manifest(cohort(patients=60), folds=3, seed=0).manifest
    with pytest.warns(MdprepWarning, match="fold column belonged to an earlier split"):
        r = split_manifest(m, ratios=(0.5, 0.5), seed=0)
    assert "fold" not in r.manifest.frame.columns


def aged(patients=400, seed=0) -> Manifest:
    """The cohort with an age per patient, 0..99 evenly, and a few unknown ages."""
    m = cohort(patients=patients, seed=seed)
    f = m.frame.copy()
    codes = f["patient_id"].str[1:].astype(int).to_numpy()
    age = (codes % 100).astype("float32") + 0.5 * (codes % 2)
    f["age"] = pd.Series(np.where(codes % 97 == 5, np.nan, age), dtype="float32")
    f["visits"] = codes % 40  # numeric, 40 distinct values
    return m.with_frame(f)


def test_age_is_binned_in_decades_and_each_part_keeps_the_decade_shares():
    m = aged()
    r = split_manifest(m, ratios=(0.7, 0.1, 0.2), stratify_by=["age"], seed=0)
    q = r.split_quality
    decades = [f"age=[{a}, {a + 10})" for a in range(0, 100, 10)]
    assert [l for l in q.labels if l.startswith("age=")] == [*decades, "age=missing"]
    for p in q.parts:
        for d in [*decades, "age=missing"]:
            assert abs(p.deviation[d]) < 0.02, (p.name, d, p.deviation[d])
    step = r.manifest.history[-1]["options"]
    assert step["stratify_by"] == ["age"] and step["stratify_bins"] == {"age": {"width": 10.0}}
    report = r.report()
    rows = report["stratify_bins"]["age"]["rows"]
    assert list(rows)[:2] == ["[0, 10)", "[10, 20)"] and sum(rows.values()) == len(m.frame)
    assert rows["missing"] == int(m.frame["age"].isna().sum()) > 0
    assert set(r.manifest.frame.columns) - set(m.frame.columns) == {"split"}  # no bin column is added
    # Without --stratify-by the decades drift much further from their overall share.
    f = split_manifest(m, ratios=(0.7, 0.1, 0.2), seed=0).manifest.frame
    decade = (f["age"] // 10).fillna(-1)
    drift = (pd.crosstab(f["split"], decade, normalize="index") - decade.value_counts(normalize=True)).abs().to_numpy().max()
    assert drift > 0.04


def test_stratify_by_specs_parse():
    assert stratify_by_items(["sex,age:0,18,65", "view", "bmi:2.5,site"]) == ["sex", "age:0,18,65", "view", "bmi:2.5", "site"]
    assert stratify_by_items(["age:0,18", "65"]) == ["age:0,18", "65"]  # edges never span two option values
    assert parse_stratum("age:5", ["age"]) == Stratum("age:5", "age", width=5.0)
    assert parse_stratum("age:0,18,65", ["age"]).edges == (0.0, 18.0, 65.0)
    assert parse_stratum("a:b", ["a:b"]) == Stratum("a:b", "a:b")  # a whole column name wins
    assert list(bin_values(pd.Series([-3.0, 0, 17.9, 18, 64, 65, None]), edges=[0, 18, 65])) == [
        "<0", "[0, 18)", "[0, 18)", "[18, 65)", "[18, 65)", ">=65", np.nan,
    ]
    assert list(bin_values(pd.Series([0.0, 0.24, 0.25, 1.1]), width=0.25)) == ["[0, 0.25)", "[0, 0.25)", "[0.25, 0.5)", "[1, 1.25)"]


def test_edges_record_outliers_and_other_numeric_columns_warn():
    m = aged(patients=120)
    r = split_manifest(m, ratios=(0.5, 0.5), stratify_by=["sex", "age:18,65"], seed=0)
    assert r.manifest.history[-1]["options"]["stratify_bins"] == {"age": {"edges": [18.0, 65.0]}}
    assert set(r.report()["stratify_bins"]["age"]["rows"]) == {"<18", "[18, 65)", ">=65", "missing"}
    assert any("outside [18, 65) and form the strata <18 and >=65" in n for n in r.notes)
    with pytest.warns(MdprepWarning, match=r"'visits': this numeric column has 40 distinct values.*visits:WIDTH"):
        r = split_manifest(m, ratios=(0.5, 0.5), stratify_by=["visits"], seed=0)
    assert "visits=39" in r.split_quality.labels
    assert "visits=[0, 10)" in split_manifest(m, ratios=(0.5, 0.5), stratify_by=["visits:10"], seed=0).split_quality.labels
    # 40 strata of 3 patients each cannot fill 5 folds: one warning with examples, not 40.
    with pytest.warns(MdprepWarning) as record:
        split_manifest(m, folds=5, stratify_by=["visits"], seed=0)
    rare = [str(w.message) for w in record if "fewer groups than the 5 folds" in str(w.message)]
    assert len(rare) == 1 and rare[0].startswith("40 labels or strata") and "'visits=0' in 3" in rare[0]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("age:abc", "'age:abc': 'abc' is not a bin width or a list of bin edges"),
        ("age:0", "'age:0': a bin width must be positive"),
        ("age:-5", "'age:-5': a bin width must be positive"),
        ("age:65,18", "'age:65,18': bin edges must increase"),
        ("age:0,inf", "'age:0,inf': bins need finite numbers"),
        ("sex:10", "'sex:10': column 'sex' holds str values, not numbers"),
    ],
)
def test_bad_bin_specs(spec, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        split_manifest(aged(patients=20), ratios=(0.5, 0.5), stratify_by=stratify_by_items([spec]))


def test_cli_bins_and_bad_spec(runner, tmp_path):
    src, out, report = tmp_path / "m.parquet", tmp_path / "s.parquet", tmp_path / "r.json"
    write_manifest(aged(patients=100), src)
    res = runner.invoke(main, ["split", str(src), "--stratify-by", "sex,age:0,18,65,120", "-o", str(out), "--json", str(report)])
    assert res.exit_code == 0, res.stderr
    assert "age=[18, 65)" in res.stderr
    doc = json.loads(report.read_text())
    assert doc["options"]["stratify_by"] == ["sex", "age:0,18,65,120"]
    assert list(doc["stratify_bins"]["age"]["rows"]) == ["[0, 18)", "[18, 65)", "[65, 120)", "missing"]
    res = runner.invoke(main, ["split", str(src), "--stratify-by", "age:abc,sex:5", "-o", str(out)])
    assert res.exit_code == 2 and res.stderr.startswith("Error: --stratify-by 'age:abc'")
    assert "'sex:5': column 'sex' holds str values" in res.stderr  # every bad spec at once


def test_degenerate_grouping_warns():
    import warnings

    m = cohort(patients=30, max_images=1, prevalence=(0.3, 0.3, 0.3))
    per_image = m.with_frame(m.frame.assign(patient_id=m.frame["image_id"]))
    with pytest.warns(MdprepWarning, match=r"degenerate grouping: patient_id equals image_id on every row \(30 rows\).*does not prevent patient leakage"):
        split_manifest(per_image, ratios=(0.8, 0.2))
    # Every patient holds one image while studies hold two: the patient ids are per image.
    studies = m.with_frame(m.frame.assign(study_id=[f"S{i // 2}" for i in range(len(m.frame))]))
    with pytest.warns(MdprepWarning, match=r"every patient_id holds exactly one image \(30 rows\) while study_id puts 30 of them together.*--group study_id"):
        split_manifest(studies, ratios=(0.8, 0.2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MdprepWarning)  # rare labels in so small a cohort
        warnings.filterwarnings("error", message="degenerate grouping", category=MdprepWarning)
        split_manifest(studies, ratios=(0.8, 0.2), group="study_id")  # a study groups two images: sound
        split_manifest(m, ratios=(0.8, 0.2))  # one image per patient and nothing that groups them: nothing to say
        split_manifest(cohort(patients=30), ratios=(0.8, 0.2))


def test_cli_split_degenerate_grouping_warning(runner, tmp_path):
    m = cohort(patients=12, max_images=1, prevalence=(0.4, 0.4, 0.4))
    write_manifest(m.with_frame(m.frame.assign(patient_id=m.frame["image_id"])), tmp_path / "m.parquet")
    res = runner.invoke(main, ["split", str(tmp_path / "m.parquet"), "--ratios", "0.5,0.5", "-o", str(tmp_path / "s.parquet"), "-q"])
    assert res.exit_code == 0, res.stderr
    assert res.stderr.startswith("Warning: degenerate grouping: patient_id equals image_id on every row (12 rows)")


# --------------------------------------------------------------------------- at scale: the same results from leaner paths


def _with_text_extras(m: Manifest, seed=0) -> Manifest:
    """``m`` with a study column (nulls included), a view column and an existing split, as a read manifest has."""
    rng = np.random.default_rng(seed)
    f = m.frame.copy()
    f["study_id"] = [f"s{p}-{i % 2}" if i % 7 else None for i, p in enumerate(f["patient_id"])]
    f["view"] = rng.choice(["PA", "AP"], len(f))
    f["split"] = rng.choice(["train", "val", "test"], len(f))
    return m.with_frame(f)


@pytest.mark.filterwarnings("ignore::mdprep.errors.MdprepWarning")
@pytest.mark.parametrize(
    "options",
    [
        dict(ratios=(0.7, 0.1, 0.2)),
        dict(folds=3, stratify_by=["sex", "view"]),
        dict(ratios=(0.7, 0.1, 0.2), folds=3, keep_existing=True),
        dict(group="study_id", missing_group="own", ratios=(0.5, 0.5)),
        dict(links=["study_id"], ratios=(0.7, 0.3), max_component="50%"),
    ],
)
def test_text_kept_in_arrow_splits_and_writes_the_same_bytes(tmp_path, options):
    src = tmp_path / "m.parquet"
    write_manifest(_with_text_extras(cohort(patients=300)), src)
    plain, arrow = read_manifest(src), read_manifest(src, arrow_text=True)
    assert isinstance(arrow.frame["patient_id"].dtype, pd.ArrowDtype) and not isinstance(plain.frame["patient_id"].dtype, pd.ArrowDtype)
    a, b = split_manifest(plain, seed=1, **options), split_manifest(arrow, seed=1, **options)
    assert json.dumps(a.report(), sort_keys=True) == json.dumps(b.report(), sort_keys=True) and a.notes == b.notes
    assert b.manifest.frame["split" if "ratios" in options else "fold"].dtype == a.manifest.frame["split" if "ratios" in options else "fold"].dtype
    write_manifest(a.manifest, tmp_path / "a.parquet")
    write_manifest(b.manifest, tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_cli_split_equals_the_library_on_the_plain_read(runner, tmp_path):
    from mdprep.fileio import file_fingerprint

    src, out, report = tmp_path / "m.parquet", tmp_path / "s.parquet", tmp_path / "r.json"
    write_manifest(_with_text_extras(cohort(patients=200)), src)
    res = runner.invoke(main, ["split", str(src), "--folds", "3", "--stratify-by", "view", "-o", str(out), "--json", str(report), "-q"])
    assert res.exit_code == 0, res.stderr
    with pytest.warns(MdprepWarning):
        lib = split_manifest(read_manifest(src), folds=3, stratify_by=["view"], inputs=[file_fingerprint(src)])
    write_manifest(lib.manifest, tmp_path / "lib.parquet")
    assert out.read_bytes() == (tmp_path / "lib.parquet").read_bytes()
    assert json.loads(report.read_text()) == json.loads(json.dumps(lib.report()))


@pytest.mark.filterwarnings("ignore::mdprep.errors.MdprepWarning")  # the existing split is replaced, as asked
def test_manifest_written_in_row_groups_from_arrow_text_as_in_one_piece(tmp_path, monkeypatch):
    import mdprep.manifest as manifest_mod

    src = tmp_path / "m.parquet"
    write_manifest(_with_text_extras(cohort(patients=900)), src)
    whole = tmp_path / "whole.parquet"
    write_manifest(split_manifest(read_manifest(src), ratios=(0.8, 0.2), seed=2).manifest, whole)
    monkeypatch.setattr(manifest_mod, "ROW_GROUP_ROWS", 512)
    result = split_manifest(read_manifest(src, arrow_text=True), ratios=(0.8, 0.2), seed=2).manifest
    assert len(result.frame) > 4 * 512
    pieces = tmp_path / "pieces.parquet"
    write_manifest(result, pieces)
    import pyarrow.parquet as pq

    assert pq.ParquetFile(pieces).num_row_groups == -(-len(result.frame) // 512)
    assert pq.read_table(pieces).equals(pq.read_table(whole))
    monkeypatch.setattr(manifest_mod, "ROW_GROUP_ROWS", 1 << 20)
    again = tmp_path / "again.parquet"
    write_manifest(read_manifest(pieces, arrow_text=True), again)
    assert again.read_bytes() == whole.read_bytes()


def test_integer_group_codes_are_ranked_as_the_general_way_ranks_them():
    from mdprep.splitting import _group_codes

    rng = np.random.default_rng(0)
    dense = rng.permutation(np.repeat(np.arange(50), 3))
    codes, n = _group_codes(dense)
    assert n == 50 and codes.tolist() == dense.tolist()
    others = (dense.astype(np.int32), dense + 7, np.delete(dense, np.flatnonzero(dense == 4)), np.array([2, 0, 2, 9]), np.array([10**9, 3, 3]), np.array([-1, 2, 2]))
    for groups in others:  # a subset of codes, gaps, large or negative values
        fast, n_fast = _group_codes(groups)
        general, n_general = _group_codes(pd.Series(groups))  # the general way: factorise, then sort the distinct ids
        assert n_fast == n_general and fast.tolist() == general.tolist()


@settings(max_examples=30, deadline=None)
@given(data=st.data(), k=st.integers(1, 4))
def test_group_spread_counts_like_distinct_pairs(data, k):
    from mdprep.splitting import _group_spread

    groups = np.array(data.draw(st.lists(st.integers(0, 12), min_size=1, max_size=40)))
    part = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=len(groups), max_size=len(groups))))
    overlap, per_part = _group_spread(groups, part, k)
    pairs = set(zip(groups.tolist(), part.tolist()))
    assert overlap == sum(1 for g in set(groups.tolist()) if len({p for gg, p in pairs if gg == g}) > 1)
    assert per_part.tolist() == [sum(1 for _, p in pairs if p == j) for j in range(k)]
    named = _group_spread(np.array([f"g{g}" for g in groups], dtype=object), part, k)
    assert named[0] == overlap and named[1].tolist() == per_part.tolist()


def test_group_counts_take_the_smallest_type_and_assign_the_same():
    from mdprep.splitting import group_counts

    rng = np.random.default_rng(1)
    codes = np.concatenate([np.zeros(300, dtype=np.int64), rng.integers(1, 40, 500)])  # group 0 holds 300 images
    positives = rng.random((len(codes), 3)) < 0.3
    sizes, counts = group_counts(positives, codes, 40)
    assert counts.dtype == np.int16 and sizes.tolist() == np.bincount(codes, minlength=40).tolist()
    reference = np.stack([np.bincount(codes, weights=positives[:, j], minlength=40) for j in range(3)], axis=1)
    assert counts.tolist() == reference.astype(np.int64).tolist()
    assert group_counts(positives[300:], codes[300:], 40)[1].dtype == np.int8
    for seed in range(5):
        wide = iterative_group_assignment(sizes, counts.astype(np.int64), (0.6, 0.2, 0.2), np.random.RandomState(seed))
        narrow = iterative_group_assignment(sizes, counts, (0.6, 0.2, 0.2), np.random.RandomState(seed))
        assert wide.tolist() == narrow.tolist()


def test_positives_of_every_label_type():
    import pyarrow as pa

    from mdprep.splitting import _stratification_matrix

    values = [1, 0, None, -1, 1]
    frame = pd.DataFrame(
        {
            "masked": pd.array(values, dtype="Int8"),
            "arrow": pd.array(values, dtype=pd.ArrowDtype(pa.int8())),
            "floats": pd.Series([1.0, 0.0, np.nan, -1.0, 1.0]),
            "flags": [True, False, False, False, True],
            "empty": pd.Series([None] * 5, dtype=object),
            "sex": ["M", "F", None, "F", "M"],
        }
    )
    labels = ["masked", "arrow", "floats", "flags", "empty"]
    matrix, names = _stratification_matrix(frame, labels, [("sex", frame["sex"])])
    assert names == [*labels, "sex=F", "sex=M", "sex=missing"]
    for j, label in enumerate(labels):  # as before: the value as a float, compared with 1
        assert matrix[:, j].tolist() == (frame[label].to_numpy(dtype="float64", na_value=np.nan) == 1).tolist()
    assert matrix[:, 5:].tolist() == [[False, True, False], [True, False, False], [False, False, True], [True, False, False], [False, True, False]]
