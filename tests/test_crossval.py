"""Run planning, AUCs with patient-bootstrap intervals, and the predictions table (no torch needed)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from mdprep.cli import main
from mdprep.crossval import auc_summary, plan_runs, predictions_table, roc_auc_per_label
from mdprep.errors import UsageError
from mdprep.manifest import Manifest, write_manifest
from mdprep.weights import compute_weights


def _frame(splits, folds=None):
    f = pd.DataFrame({"split": pd.array(splits, dtype="string")})
    if folds is not None:
        f["fold"] = pd.array(folds, dtype="Int16")
    return f


@pytest.mark.parametrize("name", ["val", "valid", "validation", "dev"])
def test_usual_validation_names_are_recognised(name):
    plan = plan_runs(_frame(["train", name, "test", "train"]))
    assert plan.val_split == name and plan.runs[0].val.tolist() == [False, True, False, False]
    assert plan.runs[0].train.tolist() == [True, False, False, True] and plan.runs[0].test.tolist() == [False, False, True, False]


def test_no_validation_rows_is_an_error_unless_no_val():
    with pytest.raises(UsageError, match="no validation rows.*--val-split NAME.*--no-val"):
        plan_runs(_frame(["train", "test"]))
    plan = plan_runs(_frame(["train", "test", "extra"]), no_val=True)
    assert not plan.runs[0].val.any() and plan.unused == {"extra": 1}


def test_named_splits_and_their_errors():
    f = _frame(["a", "b", "test", "c"])
    plan = plan_runs(f, train_split="a", val_split="b")
    assert plan.runs[0].train.tolist() == [True, False, False, False] and plan.unused == {"c": 1}
    with pytest.raises(UsageError, match="several splits could be the validation rows \\('dev', 'val'\\)"):
        plan_runs(_frame(["train", "val", "dev"]))
    with pytest.raises(UsageError, match="--val-split 'x': no rows have that split; the splits present are 'a', 'b', 'c', 'test'"):
        plan_runs(f, train_split="a", val_split="x")
    with pytest.raises(UsageError, match="no rows have split == 'train'"):
        plan_runs(f)
    with pytest.raises(UsageError, match="must be different splits"):
        plan_runs(f, train_split="a", val_split="a")


def test_split_names_are_recognised_in_any_case_and_test_rows_never_train_in_folds():
    # 'Test' rows that carry fold values are still the test rows: before, they trained in cross-validation.
    f = _frame(["train", "Train ", "VAL", "Test", "testing", "train"], [0, 1, 0, 1, 0, 1])
    plan = plan_runs(f)
    assert plan.train_split == "Train , train" and plan.val_split == "VAL" and plan.test_split == "Test, testing"
    assert plan.runs[0].test.tolist() == [False, False, False, True, True, False]
    folds = plan_runs(f, fold="all")
    for run in folds.runs:
        assert not (run.train | run.val)[3:5].any() and run.test[3:5].all()
    plan = plan_runs(_frame(["a", "b", "holdout", "test"]), train_split="a", val_split="b", test_split="holdout")
    assert plan.runs[0].test.tolist() == [False, False, True, False] and plan.unused == {"test": 1}
    with pytest.raises(UsageError, match="--test-split 'x': no rows have that split"):
        plan_runs(_frame(["a", "b"]), train_split="a", val_split="b", test_split="x")
    with pytest.raises(UsageError, match="pass --train-split NAME, or --fold K\\|all"):
        plan_runs(_frame(["trainval", "test"], [0, None]))


def test_folds_validate_in_turn_and_test_rows_never_train():
    f = _frame(["train", "train", "val", "train", "test", "train"], [0, 1, 2, 0, None, None])
    plan = plan_runs(f, fold="all")
    assert [r.fold for r in plan.runs] == [0, 1, 2]
    for run in plan.runs:
        assert not (run.train & run.val).any() and not (run.train & run.test).any()
        assert run.test.tolist() == [False, False, False, False, True, False]
    assert sum(r.val for r in plan.runs).tolist() == [1, 1, 1, 1, 0, 0]  # every folded row validates once
    assert plan.unused == {"fold missing": 1}
    assert plan_runs(f, fold=1).runs[0].val.tolist() == [False, True, False, False, False, False]
    with pytest.raises(UsageError, match="--fold 7: no non-test row is in that fold; the folds are 0, 1, 2"):
        plan_runs(f, fold=7)
    with pytest.raises(UsageError, match="drop --train-split"):
        plan_runs(f, fold=0, val_split="val")
    with pytest.raises(UsageError, match="make folds with `mdprep split --folds K`"):
        plan_runs(_frame(["train", "val"]), fold=0)


def test_auc_equals_scikit_learn_with_ties_and_masks():
    rng = np.random.default_rng(0)
    probs = rng.integers(0, 5, size=(200, 3)) / 4  # many ties
    targets = rng.integers(0, 2, size=(200, 3)).astype(float)
    masks = rng.random((200, 3)) > 0.2
    got = roc_auc_per_label(probs, targets, masks, ["a", "b", "c"])
    for j, name in enumerate("abc"):
        assert got[name] == pytest.approx(roc_auc_score(targets[masks[:, j], j], probs[masks[:, j], j]), abs=1e-12)
    assert roc_auc_per_label(probs, np.ones_like(targets), masks, ["a", "b", "c"]) == {"a": None, "b": None, "c": None}


def test_bootstrap_interval_is_drawn_over_patients():
    rng = np.random.default_rng(1)
    # 20 patients with 50 images each: a patient's images share its label and score, so
    # there are 20 independent units, not 1000, and the interval must be wide.
    patient = np.repeat(np.arange(20).astype(str), 50)
    y = np.repeat(rng.integers(0, 2, 20), 50).astype(float)[:, None]
    score = np.repeat(rng.random(20), 50)[:, None] + 0.3 * y
    s = auc_summary(score, y, ["A"], patient, replicates=500, seed=0)
    assert s["patients"] == 20 and s["rows"] == 1000 and s["bootstrap"]["unit"] == "patient"
    low, high = s["ci"]["A"]
    assert low < s["auc"]["A"] < high and high - low > 0.1
    assert s["mean_auc"] == s["auc"]["A"] and s["mean_auc_ci"] == s["ci"]["A"]
    # Uncertain (-1) and missing rows do not count; a one-class label is undefined.
    values = np.c_[y, np.where(np.arange(1000) % 2, -1.0, np.nan)]
    s = auc_summary(np.c_[score, score], values, ["A", "B"], patient, replicates=50)
    assert s["auc"]["B"] is None and s["ci"]["B"] is None and s["mean_auc"] == s["auc"]["A"]


def test_predictions_table_holds_every_part_once_with_text_ids(tmp_path):
    f = pd.DataFrame({"image_id": ["001", "002", "003", "004"], "split": ["train", "train", "train", "test"], "fold": pd.array([0, 1, 0, None], dtype="Int16")})
    plan = plan_runs(f, fold="all")
    probs = [{"val": np.array([[0.1], [0.2]]), "test": np.array([[0.9]])}, {"val": np.array([[0.3]]), "test": np.array([[0.8]])}]
    t = predictions_table(f, plan, probs, ["A"], metadata={"seed": 1})
    got = t.to_pandas()
    assert got["image_id"].tolist() == ["001", "003", "002", "004", "004"]
    assert got["part"].tolist() == ["val", "val", "val", "test", "test"] and got["fold"].tolist() == [0, 0, 1, 0, 1]
    assert json.loads(t.schema.metadata[b"mdprep"])["seed"] == 1
    with pytest.raises(UsageError, match="'part'"):
        predictions_table(f, plan, probs, ["part"])


def test_weights_fold_counts_only_the_training_part(tmp_path, runner):
    f = pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(6)], "path": [f"i{k}.png" for k in range(6)], "patient_id": ["a", "b", "c", "d", "e", "f"],
            "split": ["train"] * 5 + ["test"], "fold": pd.array([0, 0, 1, 1, 1, None], dtype="Int16"),
            "A": pd.array([1, 1, 0, 0, 1, 1], dtype="Int8"),
        }
    )
    m = Manifest(f, labels=("A",))
    w = compute_weights(m, fold=0)
    assert (w.weights[0].n_pos, w.weights[0].n_neg, w.rows, w.fold) == (1, 2, 3, 0)  # rows 2-4: fold 1, no test row
    assert w.document()["fold"] == 0 and w.document()["split"] is None
    write_manifest(m, tmp_path / "m.parquet")
    r = runner.invoke(main, ["weights", str(tmp_path / "m.parquet"), "--fold", "1", "-o", str(tmp_path / "w.json")])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "w.json").read_text())
    assert doc["fold"] == 1 and doc["weights"]["A"]["n_pos"] == 2 and doc["weights"]["A"]["n_neg"] == 0
    r = runner.invoke(main, ["weights", str(tmp_path / "m.parquet"), "--fold", "1", "--split", "train", "-o", str(tmp_path / "w2.json")])
    assert r.exit_code == 2 and "Error: --split and --fold" in r.output
    r = runner.invoke(main, ["weights", str(tmp_path / "m.parquet"), "--fold", "5", "-o", str(tmp_path / "w3.json")])
    assert r.exit_code == 2 and "Error: --fold 5: no non-test row is in that fold; the folds are 0, 1" in r.output
