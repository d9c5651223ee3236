"""Bad input, options and environment are exit 2 with one ``Error:`` line, refused where the library is entered.

One regression test per defect the property-based test (tests/test_fuzz_cli.py) found,
and per rule of the exit-code contract: seeds, folds, manifest metadata, weights,
allow lists, audit reports, training options, --pretrained files, NaN weights.
"""

from __future__ import annotations

import json
import math
import re
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mdprep.cli import main
from mdprep.errors import InputError, ManifestValidationError, UsageError
from mdprep.manifest import Manifest, from_arrow, inspect_manifest, metadata_violations, read_manifest, to_arrow, write_manifest
from mdprep.params import SEED_MAX, check_number, check_seed
from mdprep.splitting import split_manifest
from mdprep.synthetic import SHAPE_LABELS, write_shapes_dataset
from mdprep.weights import compute_weights, weights_from_document


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """16 images of 16 x 16 pixels, split into train/val/test and 2 folds, root recorded; the manifest path."""
    root = tmp_path_factory.mktemp("cohort")
    frame = write_shapes_dataset(root / "images", images=16, size=16, seed=0)
    frame["sex"] = np.where(np.arange(16) % 4 < 2, "M", "F")
    frame["emb0"] = np.linspace(0, 1, 16)
    with pytest.warns(Warning):
        m = split_manifest(Manifest(frame, labels=SHAPE_LABELS, root=str(root / "images")), ratios=(0.5, 0.25, 0.25), folds=2, seed=0).manifest
    path = root / "m.parquet"
    write_manifest(m, path)
    return path


def one_error(res) -> str:
    """The stderr of an exit-2 result that has exactly one ``Error:`` line and no traceback."""
    assert res.exit_code == 2, (res.exit_code, res.stderr)
    assert sum(line.startswith("Error:") for line in res.stderr.splitlines()) == 1, res.stderr
    assert "Traceback" not in res.output and "internal error" not in res.stderr
    return res.stderr


def with_metadata(path, out, **changes):
    """A copy of the manifest at ``path`` whose mdprep metadata has ``changes`` (None deletes a key)."""
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[b"mdprep"])
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    pq.write_table(table.replace_schema_metadata({b"mdprep": json.dumps(meta).encode()}), out)
    return out


def with_column(path, out, name, array):
    table = pq.read_table(path)
    table = table.set_column(table.column_names.index(name), name, array) if name in table.column_names else table.append_column(name, array)
    pq.write_table(table, out)
    return out


# ----------------------------------------------------------------------------- seeds


@pytest.mark.parametrize("seed", ["-1", str(SEED_MAX + 1), str(2**63), "1.5"])
@pytest.mark.parametrize("command", ["split", "resample", "train"])
def test_seed_outside_32_bits_is_refused_by_every_command(runner, cohort, tmp_path, command, seed):
    args = {
        "split": ["split", str(cohort), "-o", str(tmp_path / "o.parquet")],
        "resample": ["resample", str(cohort), "--strategy", "ml-ros", "-o", str(tmp_path / "o.parquet")],
        "train": ["train", str(cohort), "-o", str(tmp_path / "run"), "--arch", "small"],
    }[command]
    err = one_error(runner.invoke(main, [*args, "--seed", seed]))
    assert "Invalid value for '--seed'" in err and ("0<=x<=4294967295" in err or "'1.5' is not a valid integer." in err)
    assert not (tmp_path / "o.parquet").exists() and not (tmp_path / "run").exists()
    assert runner.invoke(main, [*args[:2], "--help"]).exit_code == 0


def test_seed_is_checked_in_the_library_too(cohort):
    m = read_manifest(cohort)
    assert check_seed(SEED_MAX) == SEED_MAX
    for bad in (-1, SEED_MAX + 1, 1.0, True, "3"):
        with pytest.raises(UsageError, match="give an integer from 0 to 4294967295"):
            check_seed(bad)
    with pytest.raises(UsageError, match="--seed -1"):
        split_manifest(m, ratios=(0.5, 0.5), seed=-1)
    from mdprep.resample import resample_manifest

    with pytest.raises(UsageError, match="--seed 4294967296"):
        resample_manifest(m, strategy="ml-ros", seed=2**32)


def test_check_number_refuses_nan_infinity_booleans_and_text():
    assert check_number(3, "--x", minimum=1, integer=True) == 3
    for value in (math.nan, math.inf, -math.inf, True, "1", None):
        with pytest.raises(UsageError, match="--x"):
            check_number(value, "--x")
    with pytest.raises(UsageError, match=r"--x 0: give a finite number above 0 up to 1"):
        check_number(0, "--x", above=0, maximum=1)
    with pytest.raises(UsageError, match="give an integer"):
        check_number(1.5, "--x", integer=True)


# ----------------------------------------------------------------------------- folds


@pytest.mark.parametrize("values, words", [([0, -1], "below 0"), ([0, 2], "outside 0..1")])
def test_fold_values_outside_the_recorded_folds_break_the_contract(runner, cohort, tmp_path, values, words):
    bad = with_column(cohort, tmp_path / "bad.parquet", "fold", pa.array((values * 8)[:16], pa.int16()))
    if words == "below 0":  # without a recorded fold count only negative folds are wrong
        bad = with_metadata(bad, tmp_path / "bad.parquet", history=[])
    res = runner.invoke(main, ["validate", str(bad)])
    assert res.exit_code == 1 and "[bad_fold]" in res.stderr and words in res.stderr
    with pytest.raises(ManifestValidationError, match=words):
        read_manifest(bad)
    for args in (["weights", str(bad), "-o", str(tmp_path / "w.json")], ["audit-leakage", str(bad)], ["train", str(bad), "-o", str(tmp_path / "run")]):
        assert "fold" in one_error(runner.invoke(main, args))
    res = runner.invoke(main, ["audit-leakage", str(cohort), "-q"])
    assert res.exit_code == 0, res.stderr


def test_folds_option_below_two_is_refused(runner, cohort, tmp_path):
    err = one_error(runner.invoke(main, ["split", str(cohort), "--folds", "1", "-o", str(tmp_path / "o.parquet")]))
    assert "--folds" in err and "x>=2" in err


# ----------------------------------------------------------------------------- manifest metadata


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("labels", "square", "'labels' must be a list of label column names"),
        ("labels", ["square", 1], "'labels' must be a list of label column names"),
        ("labels", {"a": 1}, "'labels' must be a list of label column names"),
        ("history", {"command": "split"}, "'history' must be a list of provenance steps"),
        ("history", [1, "x"], "2 step(s) are malformed (step 0 is 1, not an object)"),
        ("history", [{"command": "split", "options": [1]}], "step 0 has options [1], not an object"),
        ("format_version", "1", "'format_version' must be an integer from 1 to 2"),
        ("format_version", 1.5, "'format_version' must be an integer from 1 to 2"),
        ("format_version", None, "'format_version' must be an integer from 1 to 2"),
        ("root", 5, "'root' must be the image folder (text) or null"),
        ("root", ["/data"], "'root' must be the image folder (text) or null"),
    ],
)
def test_metadata_of_the_wrong_shape_is_refused_and_validate_reports_it(runner, cohort, tmp_path, key, value, words):
    bad = with_metadata(cohort, tmp_path / "bad.parquet", **{key: value}) if value is not None else with_metadata(cohort, tmp_path / "bad.parquet", **{key: None})
    with pytest.raises(InputError, match="broken mdprep metadata") as err:
        read_manifest(bad)
    assert words in err.value.message and err.value.fields["violations"][0].check == "metadata"
    res = runner.invoke(main, ["validate", str(bad)])
    assert res.exit_code == 1, res.stderr
    assert "[metadata]" in res.stderr and words in res.stderr and "Traceback" not in res.stderr
    assert "[metadata]" in runner.invoke(main, ["check", str(bad)]).stderr
    for args in (["weights", str(bad), "-o", str(tmp_path / "w.json")], ["report", str(bad), "-o", str(tmp_path / "r.html")], ["split", str(bad), "-o", str(tmp_path / "s.parquet")]):
        assert words in one_error(runner.invoke(main, args))


def test_metadata_that_is_not_json_or_not_an_object_is_a_violation(runner, cohort, tmp_path):
    table = pq.read_table(cohort)
    for raw, words in ((b"{", "not valid JSON"), (b"\xff\xfe", "not valid JSON"), (b"[1]", "must be a JSON object")):
        pq.write_table(table.replace_schema_metadata({b"mdprep": raw}), tmp_path / "bad.parquet")
        res = runner.invoke(main, ["validate", str(tmp_path / "bad.parquet")])
        assert res.exit_code == 1 and words in res.stderr, res.stderr
    # Not a manifest at all, or a newer format: the file cannot be judged, exit 2.
    pq.write_table(table.replace_schema_metadata({}), tmp_path / "plain.parquet")
    assert "not an mdprep manifest" in one_error(runner.invoke(main, ["validate", str(tmp_path / "plain.parquet")]))
    newer = with_metadata(cohort, tmp_path / "newer.parquet", format_version=99)
    assert "upgrade mdprep" in one_error(runner.invoke(main, ["validate", str(newer)]))


def test_metadata_violations_and_inspect_manifest(cohort, tmp_path):
    good = json.loads(pq.read_table(cohort).schema.metadata[b"mdprep"])
    assert metadata_violations(good) == []
    assert metadata_violations({**good, "labels": ["square", True], "root": 3}) != []
    bad = with_metadata(cohort, tmp_path / "bad.parquet", labels=["square", 7])
    manifest, violations = inspect_manifest(bad)
    # The well-formed part of the metadata is kept, so the rows are judged too.
    assert manifest.labels == ["square"] and [v.check for v in violations] == ["metadata"]
    with pytest.raises(InputError):
        from_arrow(pq.read_table(bad))


def test_label_columns_of_types_that_are_not_numbers_are_violations(runner, cohort, tmp_path):
    for array in (pa.array([{"a": 1}] * 16), pa.array([b"\xff"] * 16), pa.nulls(16, pa.date32()), pa.array([["1"]] * 16)):
        bad = with_column(cohort, tmp_path / "bad.parquet", "square", array)
        res = runner.invoke(main, ["validate", str(bad)])
        assert res.exit_code == 1 and "[bad_label_value]" in res.stderr and "label column 'square' holds" in res.stderr, res.stderr


def test_image_ids_of_another_type_are_a_type_violation_not_a_crash(runner, cohort, tmp_path):
    bad = with_column(cohort, tmp_path / "bad.parquet", "image_id", pa.array([["a"]] * 16))
    res = runner.invoke(main, ["validate", str(bad)])
    assert res.exit_code == 1 and "[bad_type] column 'image_id' cannot be stored as string" in res.stderr


def test_text_that_is_not_utf8_inside_a_damaged_parquet_file_is_bad_input(runner, cohort, tmp_path):
    table = pq.read_table(cohort)
    pq.write_table(table, tmp_path / "plain.parquet", compression="none", use_dictionary=False)
    data = (tmp_path / "plain.parquet").read_bytes()
    at = data.index(b"img00003.png")
    (tmp_path / "bad.parquet").write_bytes(data[:at] + b"\xff" + data[at + 1 :])
    err = one_error(runner.invoke(main, ["validate", str(tmp_path / "bad.parquet")]))
    assert "is not a readable Parquet file" in err and "UTF8" in err
    # A damaged column name: pyarrow fails while quoting it.
    pq.write_table(table, tmp_path / "plain.parquet", store_schema=False)
    data = bytearray((tmp_path / "plain.parquet").read_bytes())
    for at in [m.start() for m in re.finditer(b"patient_id", bytes(data))]:
        data[at + 1] = 0x9D
    (tmp_path / "bad.parquet").write_bytes(bytes(data))
    err = one_error(runner.invoke(main, ["weights", str(tmp_path / "bad.parquet"), "-o", str(tmp_path / "w.json")]))
    assert "is not a readable Parquet file ('utf-8' codec can't decode byte 0x9d" in err


# ----------------------------------------------------------------------------- weights


def _weights_doc(cohort):
    return json.loads(json.dumps(compute_weights(read_manifest(cohort), labels=["square"]).document()))


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda d: [d], "not a JSON object"),
        (lambda d: {**d, "schema": "x"}, "schema 'x' version 1"),
        (lambda d: {**d, "version": True}, "version True"),
        (lambda d: {**d, "labels": "square"}, "'labels' is 'square', not a list of label names"),
        (lambda d: {**d, "labels": ["square", "square"]}, "lists 'square' more than once"),
        (lambda d: {**d, "weights": []}, "'weights' is [], not an object"),
        (lambda d: {**d, "weights": {}}, "'square' has no weights entry"),
        (lambda d: {**d, "weights": {"square": {"w_pos": "2", "w_neg": 1}}}, "'square' has w_pos '2'"),
        (lambda d: {**d, "weights": {"square": {"w_pos": float("nan"), "w_neg": 1}}}, "'square' has w_pos nan"),
        (lambda d: {**d, "weights": {"square": {"w_pos": 1, "w_neg": float("inf")}}}, "'square' has w_neg inf"),
        (lambda d: {**d, "weights": {"square": {"w_pos": -1, "w_neg": 1}}}, "'square' has w_pos -1"),
        (lambda d: {**d, "weights": {"square": {"w_pos": 1e300, "w_neg": 1}}}, "'square' has w_pos 1e+300"),
    ],
)
def test_weights_of_the_wrong_shape_or_not_finite_stop_train_before_it_starts(runner, cohort, tmp_path, change, words):
    (tmp_path / "w.json").write_text(json.dumps(change(_weights_doc(cohort))))
    with pytest.raises(InputError, match="is not a usable mdprep-weights version 1 document"):
        from mdprep.training import read_weights

        read_weights(str(tmp_path / "w.json"), SHAPE_LABELS)
    res = runner.invoke(main, ["train", str(cohort), "--weights", str(tmp_path / "w.json"), "-o", str(tmp_path / "run"), "--arch", "small", "--epochs", "1", "--image-size", "16", "--device", "cpu"])
    assert words in one_error(res)
    assert not (tmp_path / "run").exists()  # refused before a single image was read


def test_weights_document_checks_every_label(cohort):
    doc = _weights_doc(cohort)
    names, w_pos, w_neg = weights_from_document(doc, SHAPE_LABELS, source="w.json")
    assert names == ["square"] and w_pos.dtype == np.float32 and np.isfinite(w_pos).all()
    with pytest.raises(UsageError, match="not label columns of the manifest"):
        weights_from_document(doc, ["circle"], source="w.json")


def test_weights_that_round_to_zero_are_refused(cohort, tmp_path, runner):
    with pytest.raises(UsageError, match="gives weights of 0 or not finite"):
        compute_weights(read_manifest(cohort), labels=["square"], clip=1e-9)
    for clip in ("0", "-1", "nan", "inf"):
        assert "--clip" in one_error(runner.invoke(main, ["weights", str(cohort), "--clip", clip, "-o", str(tmp_path / "w.json")]))
    for beta in ("0", "1", "nan"):
        assert "--beta" in one_error(runner.invoke(main, ["weights", str(cohort), "--scheme", "effective", "--beta", beta, "-o", str(tmp_path / "w.json")]))


# ----------------------------------------------------------------------------- allow lists and audit reports


@pytest.mark.parametrize(
    "entries, words",
    [
        ({"check": "patient_overlap"}, "not a JSON list of entries"),
        (["x"], "entry 0 is 'x', not an object"),
        ([{"check": "patient_overlap"}], "entry 0 lacks 'key'"),
        ([{"check": {"a": 1}, "key": "p"}], "entry 0 has check {'a': 1}, not text"),
        ([{"check": "patient_overlap", "key": ["p"]}], "entry 0 has key ['p'], not text or a number"),
        ([{"check": "patient_overlap", "key": "p", "partition": 1}], "entry 0 has partition 1, not text"),
    ],
)
def test_allow_lists_of_the_wrong_shape_are_bad_input(runner, cohort, tmp_path, entries, words):
    (tmp_path / "allow.json").write_text(json.dumps(entries))
    for command in ("audit-leakage", "check"):
        assert words in one_error(runner.invoke(main, [command, str(cohort), "--allow", str(tmp_path / "allow.json"), "-q"]))


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda d: 3, "it is 3, not a JSON object"),
        (lambda d: {**d, "checks": {}}, "checks {}, not a list"),
        (lambda d: {**d, "checks": [None]}, "checks[0] is None, not an object"),
        (lambda d: {**d, "checks": [{**d["checks"][0], "findings": [{"key": "p", "splits": None}]}]}, "checks[0].findings[0]"),
        (lambda d: {**d, "checks": [{**d["checks"][0], "unchecked_rows": "x"}]}, "unchecked_rows 'x', not a count"),
    ],
)
def test_audit_reports_of_the_wrong_shape_are_bad_input_for_report(runner, cohort, tmp_path, change, words):
    res = runner.invoke(main, ["audit-leakage", str(cohort), "--json", str(tmp_path / "a.json"), "-q"])
    assert res.exit_code == 0, res.stderr
    doc = json.loads((tmp_path / "a.json").read_text())
    (tmp_path / "a.json").write_text(json.dumps(change(doc)))
    err = one_error(runner.invoke(main, ["report", str(cohort), "--audit", str(tmp_path / "a.json"), "-o", str(tmp_path / "r.html")]))
    assert "not an mdprep audit report" in err and words in err


def test_report_ignores_split_options_of_an_unexpected_shape(runner, cohort, tmp_path):
    history = read_manifest(cohort).history
    odd = [{**history[-1], "options": {**history[-1]["options"], "folds": "x", "ratios": [0.5, None, "a"]}}]
    res = runner.invoke(main, ["report", str(with_metadata(cohort, tmp_path / "odd.parquet", history=odd)), "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.stderr
    assert "n/a (intended ratios unknown)" in (tmp_path / "r.html").read_text()


def test_audit_options_that_name_the_wrong_columns(runner, cohort):
    assert "both name 'split'" in one_error(runner.invoke(main, ["audit-leakage", str(cohort), "--group", "split"]))
    assert "--person-cols is empty" in one_error(runner.invoke(main, ["audit-leakage", str(cohort), "--person-cols", ","]))
    assert "x<=16" in one_error(runner.invoke(main, ["audit-leakage", str(cohort), "--threshold", "17"]))
    # A group column that is absent is a typo to fix (exit 2), not a check to skip: the gate would pass over nothing.
    err = one_error(runner.invoke(main, ["audit-leakage", str(cohort), "--group", "absent", "--checks", "same_person", "--person-cols", "sex"]))
    assert "--group names 'absent'" in err
    # A --time-col of text that is no date: rows unchecked, and no pandas warning with a source line on stderr.
    res = runner.invoke(main, ["audit-leakage", str(cohort), "--time-col", "sex", "--checks", "temporal"])
    assert res.exit_code == 0 and "Warning" not in res.stderr and "no dated train rows" in res.stderr, res.stderr


def test_patient_overlap_leaves_out_rows_in_no_split():
    from mdprep.audit import value_overlap

    f = pd.DataFrame({"image_id": list("abc"), "patient_id": ["p", "p", "q"], "split": pd.array([None, None, None], dtype="string")})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's divide-by-zero warning was the symptom
        r = value_overlap(f, "patient_id", check="patient_overlap")
        assert r.status == "skipped" and r.reason == "no row has a split"
        r = value_overlap(f.assign(split=["train", None, "test"]), "patient_id", check="patient_overlap")
    assert r.findings.empty and r.checked_rows == 2


def test_train_on_a_manifest_without_split_values_is_exit_2_without_warnings(runner, cohort, tmp_path):
    bad = with_column(cohort, tmp_path / "bad.parquet", "split", pa.nulls(16, pa.string()))
    err = one_error(runner.invoke(main, ["train", str(bad), "-o", str(tmp_path / "run"), "--arch", "small", "--image-size", "16", "--device", "cpu"]))
    assert "no rows have split == 'train'" in err and "RuntimeWarning" not in err


# ----------------------------------------------------------------------------- resample and ingest


def test_resample_refuses_features_that_are_not_numbers(runner, cohort, tmp_path):
    err = one_error(runner.invoke(main, ["resample", str(cohort), "--strategy", "smote", "--target", "square", "--features", "sex", "-o", str(tmp_path / "o.parquet")]))
    assert "--features 'sex'" in err and "not numeric" in err
    for option, value in (("--percent", "0"), ("--percent", "nan"), ("--percent", "101"), ("--cap", "0")):
        assert option in one_error(runner.invoke(main, ["resample", str(cohort), "--strategy", "ml-ros", option, value, "-o", str(tmp_path / "o.parquet")]))


def test_ingest_table_refuses_a_delimiter_that_is_not_ascii(runner, tmp_path):
    (tmp_path / "t.csv").write_text("image_id,patient_id\na,p\n")
    err = one_error(runner.invoke(main, ["ingest", "table", str(tmp_path / "t.csv"), "--sep", "¥", "-o", str(tmp_path / "o.parquet")]))
    assert "one ASCII character" in err


# ----------------------------------------------------------------------------- train


@pytest.mark.parametrize(
    "option, value",
    [("--lr", "0"), ("--lr", "-1"), ("--lr", "nan"), ("--lr", "inf"), ("--lr", "1e277"), ("--epochs", "0"), ("--batch-size", "0"),
     ("--batch-size", "99999999999999999999"), ("--image-size", "8"), ("--image-size", "5000"), ("--workers", "-1")],
)
def test_train_options_out_of_range_are_refused(runner, cohort, tmp_path, option, value):
    err = one_error(runner.invoke(main, ["train", str(cohort), "-o", str(tmp_path / "run"), "--arch", "small", option, value]))
    assert option in err


def test_train_options_are_checked_in_the_library_too(cohort, tmp_path):
    from mdprep.training import train

    m = read_manifest(cohort)
    for kwargs, words in (({"lr": math.nan}, "--lr nan"), ({"lr": 2.0}, "--lr 2.0"), ({"epochs": 0}, "--epochs 0"), ({"image_size": 8}, "--image-size 8"),
                          ({"batch_size": 10**6}, "--batch-size 1000000"), ({"workers": -1}, "--workers -1"), ({"seed": -1}, "--seed -1")):
        with pytest.raises(UsageError, match=words):
            train(m, root=None, out_dir=str(tmp_path / "run"), arch="small", **kwargs)
    assert not (tmp_path / "run").exists()


def _train(runner, cohort, tmp_path, *extra):
    return runner.invoke(main, ["train", str(cohort), "-o", str(tmp_path / "run"), "--epochs", "1", "--image-size", "16", "--batch-size", "4", "--device", "cpu", "-q", *extra])


class Pickled:
    """Any Python object: torch.load(weights_only=True) refuses to build it."""


def test_pretrained_files_that_are_not_checkpoints_of_the_architecture(runner, cohort, tmp_path):
    import torch

    from mdprep.training import build_model

    (tmp_path / "text.pt").write_text("not a checkpoint\n")
    (tmp_path / "noise.pt").write_bytes(bytes(range(256)) * 4)
    torch.save([1, 2], tmp_path / "list.pt")
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "other.pt")
    torch.save({"model": build_model("small", 2).state_dict(), "arch": "small"}, tmp_path / "best-small.pt")
    torch.save({"config": Pickled()}, tmp_path / "object.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "best-small.pt").read_bytes()[:200])
    cases = {
        "text.pt": "is not a PyTorch checkpoint (it begins with b'not ', not as a file torch.save writes)",
        "noise.pt": "is not a PyTorch checkpoint",
        "object.pt": "holds Python objects besides tensors, which mdprep never loads",
        "cut.pt": "is not a readable PyTorch checkpoint",
        "list.pt": "holds list, not a state dict",
        "other.pt": "does not fit resnet18",
        "best-small.pt": "is a best.pt of --arch small, not resnet18",
        "absent.pt": "does not exist",
    }
    for name, words in cases.items():
        err = one_error(_train(runner, cohort, tmp_path, "--arch", "resnet18", "--pretrained", str(tmp_path / name)))
        assert words in err and name in err and "expected a state dict of resnet18" in err
    assert not (tmp_path / "run").exists()
    # A state dict of the right architecture with another head loads (the head is skipped).
    torch.save(build_model("small", 7).state_dict(), tmp_path / "small-7.pt")
    res = _train(runner, cohort, tmp_path, "--arch", "small", "--pretrained", str(tmp_path / "small-7.pt"), "--allow-leakage")
    assert res.exit_code == 0, res.stderr


def test_pretrained_weights_that_are_not_finite_are_refused_before_training(runner, cohort, tmp_path):
    import torch

    from mdprep.training import build_model

    state = build_model("small", 3).state_dict()
    state = {k: (torch.full_like(v, float("nan")) if v.is_floating_point() else v) for k, v in state.items()}
    torch.save(state, tmp_path / "nan.pt")
    err = one_error(_train(runner, cohort, tmp_path, "--arch", "small", "--pretrained", str(tmp_path / "nan.pt")))
    assert "holds NaN or infinite values in" in err and not (tmp_path / "run").exists()


def test_a_run_that_diverges_stops_with_exit_2_not_a_crash(runner, cohort, tmp_path, monkeypatch):
    from mdprep.training import DivergedError, loop

    real = loop.masked_weighted_bce
    calls = {"n": 0}

    def blows_up_at_step_2(*args):
        calls["n"] += 1
        loss = real(*args)
        return loss * float("inf") if calls["n"] == 2 else loss

    monkeypatch.setattr(loop, "masked_weighted_bce", blows_up_at_step_2)
    err = one_error(_train(runner, cohort, tmp_path, "--arch", "small"))
    assert "the training loss became inf at epoch 1, step 2" in err and "lower --lr (now 0.001)" in err
    calls["n"] = 0
    with pytest.raises(DivergedError):
        loop.train(read_manifest(cohort), root=None, out_dir=str(tmp_path / "run2"), arch="small", epochs=1, batch_size=4, image_size=16, device="cpu")
