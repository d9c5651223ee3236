from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdprep.cli import main
from mdprep.errors import MdprepWarning, UsageError
from mdprep.manifest import Manifest, read_manifest, write_manifest
from mdprep.resample import irlbl, mean_ir, ml_ros, ml_rus, resample_manifest
from mdprep.weights import compute_weights, scheme_weights, weighted_bce


def manifest(n_pos=100, n_neg=900, extra_unc=0, split_rows=None) -> Manifest:
    values = [1] * n_pos + [0] * n_neg + [-1] * extra_unc
    n = len(values)
    frame = pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(n)],
            "path": [f"i{k}.png" for k in range(n)],
            "patient_id": [f"p{k // 3}" for k in range(n)],
            "split": split_rows if split_rows is not None else ["train"] * n,
            "A": pd.array(values, dtype="Int8"),
        }
    )
    return Manifest(frame, labels=("A",))


def test_worked_example_balanced():
    (w,) = compute_weights(manifest()).weights
    assert (round(w.w_neg, 4), round(w.w_pos, 4)) == (0.5556, 5.0)
    assert (w.n_pos, w.n_neg, w.n_ignored) == (100, 900, 0)


def test_each_scheme_against_hand_computation():
    pos, neg = np.array([100.0]), np.array([900.0])
    wp, wn = scheme_weights(pos, neg, "frequency")
    assert (wp[0], wn[0]) == (0.9, 0.1)
    wp, wn = scheme_weights(pos, neg, "pos-weight")
    assert (wp[0], wn[0]) == (9.0, 1.0)
    beta = 0.99
    e_pos, e_neg = (1 - beta**100) / (1 - beta), (1 - beta**900) / (1 - beta)
    wp, wn = scheme_weights(pos, neg, "effective", beta=beta)
    assert wp[0] == pytest.approx(2 * (1 / e_pos) / (1 / e_pos + 1 / e_neg))
    assert wp[0] + wn[0] == pytest.approx(2.0)
    (w,) = compute_weights(manifest(), scheme="balanced", sqrt=True, clip=2.0).weights
    assert w.w_pos == 2.0 and w.w_neg == pytest.approx(np.sqrt(1000 / 1800), rel=1e-5)


def test_uncertain_and_null_are_ignored_and_counted():
    (w,) = compute_weights(manifest(extra_unc=50)).weights
    assert (w.n_pos, w.n_neg, w.n_ignored) == (100, 900, 50)


def test_only_train_by_default_and_all_warns():
    m = manifest(split_rows=["train"] * 700 + ["test"] * 300)
    assert compute_weights(m).rows == 700
    with pytest.warns(MdprepWarning, match="leak into training"):
        assert compute_weights(m, split="all").rows == 1000
    no_split = Manifest(m.frame.drop(columns=["split"]), labels=("A",))
    with pytest.raises(UsageError, match="--split all"):
        compute_weights(no_split)


def degenerate() -> Manifest:
    """Label A is ordinary; B has no positives, C no negatives, D no labelled rows at all."""
    m = manifest()
    f = m.frame.assign(
        B=pd.array([0] * 1000, dtype="Int8"),
        C=pd.array([1] * 600 + [-1] * 400, dtype="Int8"),
        D=pd.array([-1] * 500 + [None] * 500, dtype="Int8"),
    )
    return Manifest(f, labels=("A", "B", "C", "D"))


NEUTRAL = {"balanced": 1.0, "frequency": 0.5, "pos-weight": 1.0, "effective": 1.0}


@pytest.mark.parametrize("scheme", sorted(NEUTRAL))
def test_labels_without_both_classes_get_neutral_weights(scheme):
    with pytest.warns(MdprepWarning, match=r"3 label\(s\) cannot be weighed") as record:
        r = compute_weights(degenerate(), scheme=scheme)
    message = str(record[0].message)
    assert "'B': no positives" in message and "'C': no negatives" in message and "'D': no labelled rows" in message
    assert f"--scheme {scheme}" in message and "--drop-empty" in message
    by = {w.label: w for w in r.weights}
    assert r.labels == ["A", "B", "C", "D"] and r.dropped == ()
    for label in "BCD":
        assert by[label].w_pos == by[label].w_neg == NEUTRAL[scheme]
    assert (by["C"].n_pos, by["C"].n_neg, by["C"].n_ignored) == (600, 0, 400)
    assert by["A"].neutral is None
    (alone,) = compute_weights(manifest(), scheme=scheme).weights
    assert (by["A"].w_pos, by["A"].w_neg) == (alone.w_pos, alone.w_neg)  # other labels untouched
    doc = r.document()
    assert doc["neutral_labels"] == {
        "B": "no positives in the chosen rows (split=train)",
        "C": "no negatives in the chosen rows (split=train)",
        "D": "no labelled rows (every value is uncertain or missing) in the chosen rows (split=train)",
    }
    assert doc["weights"]["C"]["neutral"] == "no negatives in the chosen rows (split=train)" and doc["weights"]["A"]["neutral"] is None
    assert doc["pos_weight"][1:] == [1.0, 1.0, 1.0]
    json.dumps(doc, allow_nan=False)  # every number finite


def test_neutral_weights_follow_sqrt_and_clip():
    with pytest.warns(MdprepWarning, match=r"w_pos = w_neg = 0.707107"):
        r = compute_weights(degenerate(), scheme="frequency", sqrt=True)
    assert {w.label: w.w_pos for w in r.weights if w.neutral} == {"B": 0.707107, "C": 0.707107, "D": 0.707107}
    with pytest.warns(MdprepWarning):
        r = compute_weights(degenerate(), scheme="balanced", clip=0.8)
    assert r.weights[1].w_pos == r.weights[1].w_neg == 0.8


def test_empty_labels_dropped_on_request():
    r = compute_weights(degenerate(), drop_empty=True)
    assert r.labels == ["A"] and r.dropped == ("B", "C", "D") and r.neutral_labels == {}
    assert r.notes[1] == "label 'C' has no negatives in 'train'; left out (--drop-empty)"
    assert r.document()["options"]["drop_empty"] is True


def test_train_reads_a_document_with_neutral_labels(tmp_path):
    from mdprep.training import read_weights

    m = degenerate()
    with pytest.warns(MdprepWarning):
        doc = compute_weights(m, scheme="pos-weight").document()
    (tmp_path / "w.json").write_text(json.dumps(doc))
    names, w_pos, w_neg = read_weights(str(tmp_path / "w.json"), m.labels)
    assert names == ["A", "B", "C", "D"]
    assert w_pos.tolist() == [9.0, 1.0, 1.0, 1.0] and w_neg.tolist() == [1.0] * 4


def test_weighted_bce_reference():
    logits = np.array([[2.0, -1.0], [-0.5, 0.3], [0.0, 1.0]])
    targets = np.array([[1, 0], [0, -1], [np.nan, 1]], dtype=float)
    wp, wn = [2.0, 3.0], [0.5, 1.0]
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    l0 = (-(2.0 * np.log(sig(2.0))) - 0.5 * np.log(1 - sig(-0.5))) / 2
    l1 = (-(1.0 * np.log(1 - sig(-1.0))) - 3.0 * np.log(sig(1.0))) / 2
    assert weighted_bce(logits, targets, wp, wn) == pytest.approx(l0 + l1)


def test_weights_cli_writes_schema(runner, tmp_path):
    path = tmp_path / "m.parquet"
    write_manifest(manifest(), path)
    res = runner.invoke(main, ["weights", str(path), "-o", str(tmp_path / "w.json")])
    assert res.exit_code == 0, res.stderr
    doc = json.loads((tmp_path / "w.json").read_text())
    assert doc["schema"] == "mdprep-weights" and doc["version"] == 1 and doc["labels"] == ["A"]
    assert doc["weights"]["A"]["w_pos"] == 5.0 and doc["pos_weight"] == [pytest.approx(9.0)]
    assert "sha256" in doc["provenance"]["manifest"]
    res = runner.invoke(main, ["weights", str(path), "--split", "val", "-o", str(tmp_path / "w.json")])
    assert res.exit_code == 2 and "no rows have split == 'val'" in res.stderr


def test_weights_cli_warns_and_writes_neutral_labels(runner, tmp_path):
    path = tmp_path / "m.parquet"
    write_manifest(degenerate(), path)
    res = runner.invoke(main, ["weights", str(path), "--scheme", "frequency", "-o", str(tmp_path / "w.json")])
    assert res.exit_code == 0, res.stderr
    assert "Warning: 3 label(s) cannot be weighed from the 'train' rows" in res.stderr
    assert "C (neutral)" in res.stderr
    doc = json.loads((tmp_path / "w.json").read_text())
    assert set(doc["neutral_labels"]) == {"B", "C", "D"} and doc["weights"]["B"]["w_pos"] == 0.5
    res = runner.invoke(main, ["weights", str(path), "--drop-empty", "-o", str(tmp_path / "w.json")])
    assert res.exit_code == 0 and "Warning" not in res.stderr
    assert "Note: label 'D' has no labelled rows" in res.stderr
    assert json.loads((tmp_path / "w.json").read_text())["labels"] == ["A"]


def multilabel(n=400, seed=0) -> Manifest:
    rng = np.random.default_rng(seed)
    prev = [0.5, 0.2, 0.05, 0.02]
    frame = pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(n)],
            "path": [f"i{k}.png" for k in range(n)],
            "patient_id": [f"p{k // 4}" for k in range(n)],
            "split": np.where(np.arange(n) < n * 0.8, "train", "test"),
            "emb0": rng.normal(size=n),
            "emb1": rng.normal(size=n),
        }
    )
    for j, p in enumerate(prev):
        frame[f"L{j}"] = pd.array((rng.random(n) < p).astype(int), dtype="Int8")
    return Manifest(frame, labels=tuple(f"L{j}" for j in range(4)))


def _check_traceable(before: Manifest, after: Manifest, removed: pd.DataFrame | None = None):
    f = after.frame
    assert f["image_id"].is_unique
    src = set(before.frame["image_id"])
    real = f[~f.get("synthetic", pd.Series(False, index=f.index)).astype(bool)]
    assert set(real["source_image_id"]) <= src
    test_before = before.frame[before.frame["split"] == "test"].reset_index(drop=True)
    test_after = f[f["split"] == "test"][test_before.columns].reset_index(drop=True)
    pd.testing.assert_frame_equal(test_before, test_after)
    if removed is not None:
        kept = set(f["source_image_id"]) | set(removed["image_id"])
        assert kept == src


def test_ml_ros_and_ml_rus_move_meanir_the_right_way():
    m = multilabel()
    pos = m.frame[m.frame.split == "train"][list(m.labels)].to_numpy() == 1
    before = mean_ir(pos)
    r = resample_manifest(m, strategy="ml-ros", percent=30, seed=1)
    assert r.after.mean_ir < before and r.after.rows > r.before.rows
    _check_traceable(m, r.manifest)
    u = resample_manifest(m, strategy="ml-rus", percent=20, seed=1)
    assert u.after.rows < u.before.rows
    # ML-RUS never removes a row that carries a minority label.
    ir = irlbl(pos)
    minority = [l for l, v in zip(m.labels, ir) if v > before]
    assert not (u.removed[minority] == 1).any().any()
    _check_traceable(m, u.manifest, u.removed)


def test_over_under_via_imbalanced_learn_and_multilabel_error():
    m = multilabel()
    r = resample_manifest(m, strategy="over", target="L3", seed=0)
    train = r.manifest.frame[r.manifest.frame.split == "train"]
    assert (train["L3"] == 1).sum() == (train["L3"] != 1).sum()
    clones = train[train["copy_index"] > 0]
    assert (clones["image_id"] == clones["source_image_id"] + "#copy" + clones["copy_index"].astype(str)).all()
    _check_traceable(m, r.manifest)
    u = resample_manifest(m, strategy="under", target="L1", ratio="1.0", seed=0)
    t2 = u.manifest.frame[u.manifest.frame.split == "train"]
    assert (t2["L1"] == 1).sum() == (t2["L1"] != 1).sum()
    _check_traceable(m, u.manifest, u.removed)
    with pytest.raises(UsageError, match="ml-ros / ml-rus"):
        resample_manifest(m, strategy="over")


def test_patient_cap_and_refusals():
    m = multilabel()
    r = resample_manifest(m, strategy="patient-cap", cap=2, seed=0)
    train = r.manifest.frame[r.manifest.frame.split == "train"]
    assert train.groupby("patient_id").size().max() == 2
    _check_traceable(m, r.manifest, r.removed)
    with pytest.raises(UsageError, match="refusing to resample the 'test' split"):
        resample_manifest(m, strategy="ml-ros", split="test")
    with pytest.raises(UsageError, match="--cap"):
        resample_manifest(m, strategy="patient-cap")


def test_smote_marks_synthetic_rows_and_cites_sources():
    m = multilabel()
    with pytest.raises(UsageError, match="--features"):
        resample_manifest(m, strategy="smote", target="L2")
    r = resample_manifest(m, strategy="smote", target="L2", features=["emb0", "emb1"], seed=0)
    f = r.manifest.frame
    syn = f[f["synthetic"]]
    assert len(syn) > 0 and (syn["L2"] == 1).all()
    ids = set(m.frame["image_id"])
    assert all(set(s.split("|")) <= ids for s in syn["source_image_id"])
    assert syn["image_id"].str.startswith("synthetic-smote-").all()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 1000), percent=st.floats(1, 60), strategy=st.sampled_from(["ml-ros", "ml-rus", "patient-cap", "over"]))
def test_resample_properties(seed, percent, strategy):
    m = multilabel(n=120, seed=seed)
    kwargs = {"percent": percent} if strategy.startswith("ml") else ({"cap": 2} if strategy == "patient-cap" else {"target": "L1"})
    if strategy == "over" and m.frame.loc[m.frame.split == "train", "L1"].nunique() < 2:
        return
    a = resample_manifest(m, strategy=strategy, seed=seed, **kwargs)
    b = resample_manifest(m, strategy=strategy, seed=seed, **kwargs)
    pd.testing.assert_frame_equal(a.manifest.frame, b.manifest.frame)  # seeded determinism
    _check_traceable(m, a.manifest, a.removed if strategy != "over" else None)
    if strategy == "ml-ros":
        assert a.after.rows - a.before.rows <= round(a.before.rows * percent / 100)
    if strategy == "ml-rus":
        assert a.before.rows - a.after.rows <= round(a.before.rows * percent / 100)


def test_ml_ros_and_ml_rus_follow_charte_stopping_rules():
    pos = np.zeros((1000, 2), dtype=bool)
    pos[:, 0] = True
    pos[:10, 1] = True
    # IRLbl = [1, 100], MeanIR = 50.5: clone minority rows until 1000+k / (10+k) <= 50.5, i.e. k = 10.
    clones = ml_ros(pos, 5, np.random.default_rng(0))
    assert len(clones) == 10 and pos[clones, 1].all()
    removed = ml_rus(pos, 5, np.random.default_rng(0))
    assert len(removed) == 50 and not pos[removed, 1].any()


def test_resample_cli(runner, tmp_path):
    path = tmp_path / "m.parquet"
    write_manifest(multilabel(), path)
    res = runner.invoke(main, ["resample", str(path), "--strategy", "patient-cap", "--cap", "1", "-o", str(tmp_path / "o.parquet"), "--removed", str(tmp_path / "removed.csv")])
    assert res.exit_code == 0, res.stderr
    assert "MeanIR" in res.stderr and res.stdout == ""
    out = read_manifest(tmp_path / "o.parquet")
    assert len(out.frame) + len(pd.read_csv(tmp_path / "removed.csv")) == 400
    res = runner.invoke(main, ["resample", str(path), "--strategy", "over", "-o", str(tmp_path / "o.parquet")])
    assert res.exit_code == 2 and "imbalanced-learn rejects multi-label" in res.stderr
    res = runner.invoke(main, ["resample", str(path), "--strategy", "ml-ros", "--split", "test", "-o", str(tmp_path / "o.parquet")])
    assert res.exit_code == 2 and "refusing to resample" in res.stderr
