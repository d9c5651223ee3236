"""``ingest dicom --level series``: one row per series, volume checks, multi-frame files, drops, pseudonyms."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pydicom
import pytest

from mdprep.cli import main
from mdprep.errors import MissingColumnError, UsageError
from mdprep.ingest import ingest_dicom
from mdprep.ingest.series import PROBLEMS, series_rows
from mdprep.manifest import read_manifest, write_manifest
from mdprep.pseudonyms import KEY_ENV, load_path_map, resolve_paths
from mdprep.synthetic import write_ct_tree

SLICES = 6
KEY = hashlib.sha256(b"mdprep series test").hexdigest()


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    """Two patients' clean axial series, one series per planted problem and an Enhanced CT file; read-only."""
    return write_ct_tree(tmp_path_factory.mktemp("ct"), patients=2, slices=SLICES, shape=(4, 4))


@pytest.fixture(scope="module")
def series(ct):
    return ingest_dicom(ct.root, level="series", workers=1)


def test_one_row_per_series_flagged_with_exactly_the_planted_problems(ct, series):
    frame = series.manifest.frame.set_index("image_id")
    assert sorted(frame.index) == sorted(ct.series)
    for uid, planted in ct.series.items():
        row = frame.loc[uid]
        assert sorted(row["series_problems"]) == planted["problems"], planted["folder"]
        assert [p for p in PROBLEMS if row[p]] == [p for p in PROBLEMS if p in planted["problems"]]
        assert (row["n_instances"], row["n_frames"], row["path"]) == (planted["instances"], planted["frames"], planted["folder"])
        assert row["patient_id"] == planted["patient"] and row["series_uid"] == uid
        assert row["orientation"] == "axial" and row["spacing_between_slices"] == pytest.approx(2.5)
        assert len(row["instance_paths"]) == planted["instances"] and not row["multi_folder"]
    assert frame["study_id"].notna().all() and set(frame["modality"]) == {"CT"}
    rep = series.report
    assert rep.reconciles and (rep.found, rep.ingested, rep.skipped, rep.failed, rep.dropped) == (ct.files, len(ct.series), 0, 0, 0)
    assert rep.aggregated == ct.files - len(ct.series)
    assert rep.series.problems == {
        "missing_slices": 1, "duplicate_positions": 1, "irregular_spacing": 1, "mixed_orientation": 2,
        "mixed_size": 1, "mixed_sop_class": 1, "localizer": 1,
    }
    assert rep.series.flagged == 6 and rep.series.instances == ct.files
    assert series.manifest.history[-1]["options"]["level"] == "series"


def test_instance_paths_are_in_slice_order(ct, series):
    frame = series.manifest.frame
    for row in frame.itertuples():
        if row.localizer or row.n_instances == 1:
            continue
        z = [float(pydicom.dcmread(f"{ct.root}/{p}", stop_before_pixels=True).ImagePositionPatient[2]) for p in row.instance_paths]
        assert z == sorted(z), row.path


def test_multi_frame_file_is_one_series_measured_from_its_functional_groups(series):
    row = series.manifest.frame.set_index("path").loc["CT0000/study0/enhanced"]
    assert (row["n_instances"], row["n_frames"]) == (1, SLICES)
    assert row["spacing_between_slices"] == pytest.approx(2.5) and row["slice_thickness"] == pytest.approx(2.5)
    assert list(row["pixel_spacing"]) == [0.7, 0.7] and list(row["series_problems"]) == []
    assert "1 multi-frame file(s): frame positions read from their functional groups" in series.report.notes


def test_drop_bad_series_counts_and_lists_every_dropped_file(ct, series):
    result = ingest_dicom(ct.root, level="series", workers=1, drop_bad_series=True)
    bad = [uid for uid, s in ct.series.items() if s["problems"]]
    rep = result.report
    assert set(result.manifest.frame["image_id"]) == set(ct.series) - set(bad)
    assert not result.manifest.frame[list(PROBLEMS)].any().any()
    assert rep.series.dropped_series == len(bad) == 6
    assert rep.dropped == sum(ct.series[u]["instances"] for u in bad)
    assert rep.found == rep.series.instances + rep.dropped + rep.skipped + rep.failed and rep.reconciles
    dropped = result.errors[result.errors["outcome"] == "dropped"]
    assert len(dropped) == rep.dropped and set(dropped["error_type"]) == {"BadSeries"}
    assert dropped["message"].str.contains(r"dropped by --drop-bad-series \(missing_slices\)").sum() == SLICES - 1
    assert rep.series.problems == series.report.series.problems  # counted before dropping


def test_same_bytes_for_two_runs_and_for_one_or_two_workers(ct, tmp_path):
    outs = []
    for i, workers in enumerate((1, 1, 2)):
        result = ingest_dicom(ct.root, level="series", workers=workers)
        write_manifest(result.manifest, tmp_path / f"{i}.parquet")
        outs.append((tmp_path / f"{i}.parquet").read_bytes())
    assert outs[0] == outs[1] == outs[2]


def test_instance_level_is_unchanged(ct):
    result = ingest_dicom(ct.root, workers=1)
    assert len(result.manifest.frame) == ct.files and "instance_paths" not in result.manifest.frame
    assert set(result.manifest.history[-1]["options"]) == {"tags", "file_list", "missing_patient", "allow_outside_root"}
    assert result.report.series is None and result.report.dropped == 0


def _copy(ct, tmp_path):
    root = tmp_path / "ct"
    shutil.copytree(ct.root, root)
    return root


def test_file_without_series_uid_fails_at_series_level_only(ct, tmp_path):
    root = _copy(ct, tmp_path)
    target = root / "CT0001/study0/series1/im0000.dcm"
    ds = pydicom.dcmread(target)
    del ds.SeriesInstanceUID
    ds.save_as(target)
    result = ingest_dicom(root, level="series", workers=1)
    errors = result.errors.set_index("path")
    assert errors.loc["CT0001/study0/series1/im0000.dcm", "error_type"] == "MissingSeriesUID"
    assert "--level instance" in errors.loc["CT0001/study0/series1/im0000.dcm", "message"]
    assert result.report.failed == 1 == result.report.series.without_series_uid and result.report.reconciles
    row = result.manifest.frame.set_index("path").loc["CT0001/study0/series1"]
    assert row["n_instances"] == SLICES - 1 and list(row["series_problems"]) == []  # the first slice: no gap inside
    assert ingest_dicom(root, workers=1).report.failed == 0


def test_mixed_patient_and_a_series_over_two_folders(ct, tmp_path):
    root = _copy(ct, tmp_path)
    target = root / "CT0001/study0/series1/im0003.dcm"
    ds = pydicom.dcmread(target)
    ds.PatientID = "CT9999"
    ds.save_as(target)
    (root / "CT0000/study0/series1/more").mkdir()
    for name in ("im0000.dcm", "im0001.dcm"):
        shutil.move(root / "CT0000/study0/series1" / name, root / "CT0000/study0/series1/more" / name)
    (root / "CT0000/elsewhere").mkdir()
    shutil.move(root / "CT0000/study0/series1/im0002.dcm", root / "CT0000/elsewhere/im0002.dcm")
    frame = ingest_dicom(root, level="series", workers=1).manifest.frame.set_index("image_id")
    mixed = frame.loc[frame["mixed_patient"]]
    assert len(mixed) == 1 and list(mixed.iloc[0]["series_problems"]) == ["mixed_patient"]
    spread = frame.loc[frame["multi_folder"]]
    assert list(spread["path"]) == ["CT0000"] and list(spread["series_problems"].iloc[0]) == []
    assert "CT0000/elsewhere/im0002.dcm" in list(spread["instance_paths"].iloc[0])


def test_tags_keep_the_value_a_series_shares(ct):
    result = ingest_dicom(ct.root, level="series", workers=1, tags=["SeriesNumber", "InstanceNumber"])
    frame = result.manifest.frame
    assert set(frame["series_number"]) == {2}
    multi = frame["n_instances"] > 1
    assert frame.loc[multi, "instance_number"].isna().all() and frame.loc[~multi, "instance_number"].tolist() == [1]
    assert f"'instance_number' differs between the images of {int(multi.sum())} series" in " ".join(result.report.notes)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"drop_bad_series": True}, "--drop-bad-series only applies with --level series"),
        ({"spacing_tolerance": 0.2}, "--spacing-tolerance only applies with --level series"),
        ({"level": "series", "spacing_tolerance": 0.5}, "--spacing-tolerance 0.5 is not a fraction"),
        ({"level": "series", "record_signatures": True}, "--update and --record-signatures work at --level instance only"),
        ({"level": "volume"}, "level 'volume' is not one of instance, series"),
        ({"level": "series", "tags": ["SpacingBetweenSlices"]}, "would create column 'spacing_between_slices', which the manifest reserves"),
    ],
)
def test_options_that_do_not_go_with_the_level_are_refused(ct, kwargs, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        ingest_dicom(ct.root, workers=1, **kwargs)


# ----------------------------------------------------------------------------- the checks, on instance rows made here


def _rows(z, *, orientation=(1.0, 0, 0, 0, 1.0, 0), numbers=None, image_type=None, shape=(4, 4), uid="1.2.3", patient="P1"):
    """Instance-level rows of one series with slices at positions ``z`` (None: no position)."""
    n = len(z)
    orientations = orientation if isinstance(orientation[0], (list, tuple)) else [orientation] * n
    first = np.array(orientations[0], dtype=float)
    normal = np.cross(first[:3], first[3:])  # positions move along the first image's normal
    floats = pd.ArrowDtype(pa.list_(pa.float64()))
    return pd.DataFrame(
        {
            "image_id": [f"{uid}/{k}.dcm" for k in range(n)],
            "path": [f"{uid}/{k}.dcm" for k in range(n)],
            "patient_id": patient,
            "study_id": "9.9",
            "series_uid": uid,
            "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
            "rows": pd.array([shape[0]] * n, dtype="Int64"),
            "columns": pd.array([shape[1]] * n, dtype="Int64"),
            "image_position_patient": pd.Series([None if v is None else (v * normal).tolist() for v in z], dtype=floats),
            "image_orientation_patient": pd.Series([list(map(float, o)) for o in orientations], dtype=floats),
            "slice_thickness": 1.0,
            "instance_number": pd.array(numbers if numbers is not None else range(1, n + 1), dtype="Int64"),
            "number_of_frames": pd.array([None] * n, dtype="Int64"),
            "image_type": pd.Series(image_type or [["ORIGINAL", "PRIMARY", "AXIAL"]] * n, dtype=pd.ArrowDtype(pa.list_(pa.string()))),
            "lenient_read": pd.array([False] * n, dtype="boolean"),
            "has_pixels": pd.array([True] * n, dtype="boolean"),
        }
    )


def _problems(rows, **kwargs):
    result = series_rows(rows, **kwargs)
    return list(result.frame["series_problems"].iloc[0]), result


def test_spacing_tolerance_decides_what_is_irregular():
    z = [0, 1, 2, 3.15, 4.15, 5.15]
    assert _problems(_rows(z))[0] == ["irregular_spacing"]
    assert _problems(_rows(z), spacing_tolerance=0.2)[0] == []
    assert _problems(_rows([0, 1, 2, 4, 5, 6], numbers=[1, 2, 3, 4, 5, 6]))[0] == ["missing_slices"]  # a position gap alone
    assert _problems(_rows([0, 1, 2, 3.5, 4.5]))[0] == ["irregular_spacing"]  # 1.5 steps: no whole slice fits
    assert _problems(_rows([0, 1, 2, 3, 4], numbers=[1, 2, 3, 5, 6]))[0] == ["missing_slices"]  # an InstanceNumber gap alone
    assert _problems(_rows([5, 4, 3, 2, 1, 0]))[0] == []  # positions falling along the normal


@pytest.mark.parametrize(
    "orientation, name",
    [((1, 0, 0, 0, 1, 0), "axial"), ((1, 0, 0, 0, 0, -1), "coronal"), ((0, 1, 0, 0, 0, -1), "sagittal"), ((1, 0, 0, 0, 0.7071, 0.7071), "oblique")],
)
def test_orientation_names_the_axis_of_the_slice_normal(orientation, name):
    problems, result = _problems(_rows([0, 1, 2], orientation=orientation))
    assert result.frame["orientation"].iloc[0] == name and problems == []


def test_a_single_out_of_plane_image_in_an_axial_series_is_a_localizer_left_out_of_the_spacing():
    axial, coronal = (1, 0, 0, 0, 1, 0), (1, 0, 0, 0, 0, -1)
    rows = _rows([0, 1, 2, 3, 40], orientation=[axial] * 4 + [coronal], image_type=[["ORIGINAL"]] * 5)
    problems, result = _problems(rows)
    assert problems == ["mixed_orientation", "localizer"]
    row = result.frame.iloc[0]
    assert row["spacing_between_slices"] == 1.0 and list(row["instance_paths"])[-1] == "1.2.3/4.dcm"
    typed = _rows([0, 1, 2, 3, 40], image_type=[["ORIGINAL"]] * 4 + [["ORIGINAL", "PRIMARY", "LOCALIZER"]])
    assert _problems(typed)[0] == ["localizer"]


def test_series_without_positions_are_ordered_by_instance_number_and_not_measured():
    problems, result = _problems(_rows([None, None, None], numbers=[3, 1, 2]))
    row = result.frame.iloc[0]
    assert problems == [] and pd.isna(row["spacing_between_slices"])
    assert list(row["instance_paths"]) == ["1.2.3/1.dcm", "1.2.3/2.dcm", "1.2.3/0.dcm"]
    assert any("do not all carry ImagePositionPatient" in n for n in result.summary.notes)


def test_duplicates_and_mixed_sizes_and_studies():
    rows = _rows([0, 1, 1, 2, 3])
    assert _problems(rows)[0] == ["duplicate_positions"]
    rows.loc[4, "columns"] = 8
    rows.loc[3, "study_id"] = "9.8"
    assert _problems(rows)[0] == ["duplicate_positions", "mixed_size", "mixed_study"]
    empty = series_rows(rows.iloc[:0])
    assert len(empty.frame) == 0 and empty.summary.series == 0
    with pytest.raises(MissingColumnError, match="column 'image_type' not found"):
        series_rows(rows.drop(columns="image_type"))


# ----------------------------------------------------------------------------- command line


def test_cli_series_summary_and_exit_codes(runner, ct, tmp_path):
    out, errors = tmp_path / "s.parquet", tmp_path / "e.csv"
    res = runner.invoke(main, ["ingest", "dicom", ct.root, "-o", str(out), "--level", "series", "-q"])
    assert res.exit_code == 0, res.stderr
    assert "Warning: 6 of 9 series have volume problems: missing_slices 1, duplicate_positions 1" in res.stderr
    assert len(read_manifest(out).frame) == len(ct.series)
    res = runner.invoke(main, ["ingest", "dicom", ct.root, "-o", str(out), "--level", "series", "--drop-bad-series", "--errors", str(errors)])
    assert res.exit_code == 0, res.stderr
    bad = sum(s["instances"] for s in ct.series.values() if s["problems"])
    assert f"{ct.files} files found = {ct.files - bad} in 3 series rows + {bad} in 6 dropped series + 0 skipped + 0 failed" in res.stderr
    assert f"Dropped 6 series ({bad} files) with volume problems" in res.stderr and "series per patient" in res.stderr
    assert (pd.read_csv(errors)["outcome"] == "dropped").sum() == bad
    for args, message in [
        (["--drop-bad-series"], "Error: --drop-bad-series only applies with --level series; add it, or leave them out"),
        (["--level", "series", "--spacing-tolerance", "0"], "Error: --spacing-tolerance 0.0 is not a fraction of the slice step"),
        (["--level", "series", "--record-signatures"], "Error: --update and --record-signatures work at --level instance only"),
    ]:
        res = runner.invoke(main, ["ingest", "dicom", ct.root, "-o", str(tmp_path / "x.parquet"), *args])
        assert res.exit_code == 2 and message in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
    res = runner.invoke(main, ["ingest", "dicom", ct.root, "-o", str(tmp_path / "x.parquet"), "--level", "study"])
    assert res.exit_code == 2 and "'study' is not one of 'instance', 'series'" in res.stderr


def test_cli_pseudonymize_series_keeps_instance_pseudonyms_and_leaks_no_path(runner, ct, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    series_out, instance_out, path_map = tmp_path / "s.parquet", tmp_path / "i.parquet", tmp_path / "map.csv"
    args = ["ingest", "dicom", ct.root, "--pseudonymize", "-q"]
    res = runner.invoke(main, [*args, "-o", str(series_out), "--level", "series", "--path-map", str(path_map)])
    assert res.exit_code == 0, res.stderr
    assert runner.invoke(main, [*args, "-o", str(instance_out)]).exit_code == 0
    series = read_manifest(series_out)
    files = [p for paths in series.frame["instance_paths"] for p in paths]
    assert sorted(files) == sorted(read_manifest(instance_out).frame["path"])  # each file: its instance-level pseudonym
    raw = series_out.read_bytes()
    assert b"CT0000" not in raw and not any(uid.encode() in raw for uid in ct.series)
    real = resolve_paths(series, load_path_map(path_map)).frame.set_index("path")
    assert sorted(real.loc["CT0001/study0/series1", "instance_paths"]) == [f"CT0001/study0/series1/im{k:04d}.dcm" for k in range(SLICES)]


def test_cli_series_lists_what_was_not_ingested_once(runner, ct, tmp_path):
    root = _copy(ct, tmp_path)
    (root / "README.txt").write_text("scanner export notes")
    res = runner.invoke(main, ["ingest", "dicom", str(root), "-o", str(tmp_path / "s.parquet"), "--level", "series", "-q"])
    assert res.exit_code == 0, res.stderr
    assert f"{ct.files + 1} files found = {ct.files} in {len(ct.series)} series rows + 0 in 0 dropped series + 1 skipped + 0 failed" in res.stderr
    assert res.stderr.count("Not ingested: NotDicom 1 (pass --errors FILE to list them)") == 1


def test_instance_paths_follow_the_paths_policy():
    from mdprep.manifest import Manifest
    from mdprep.pseudonyms import path_pseudonym, pseudonymize

    key = bytes.fromhex(KEY)
    rows = _rows([0, 1, 2], uid="7.7")
    rows["path"] = [f"scans/1.2.840.99.{k}.dcm" for k in range(3)]  # files named by UIDs the row does not hold
    manifest = Manifest(series_rows(rows).frame)
    assert manifest.frame["path"].tolist() == ["scans"]
    done = pseudonymize(manifest, key)
    assert done.manifest.frame["path"].tolist() == ["scans"]  # the folder names nothing
    files = list(done.manifest.frame["instance_paths"].iloc[0])
    assert files == [path_pseudonym(key, p) for p in rows["path"]]
    assert set(done.path_map["original_path"]) == set(rows["path"])
    assert list(pseudonymize(manifest, key, paths="drop").manifest.frame["instance_paths"].iloc[0]) == []
    with pytest.warns(UserWarning, match="1 path value"):
        kept = pseudonymize(manifest, key, paths="keep")
    assert list(kept.manifest.frame["instance_paths"].iloc[0]) == rows["path"].tolist()
    rows["path"] = [f"scans/slice{k}.dcm" for k in range(3)]
    plain = pseudonymize(Manifest(series_rows(rows).frame), key)
    assert list(plain.manifest.frame["instance_paths"].iloc[0]) == rows["path"].tolist()  # nothing to hide: kept
    with pytest.raises(UsageError, match="cannot be kept raw"):
        pseudonymize(manifest, key, keep_columns=["instance_paths"])


def test_series_level_from_object_storage_equals_local(ct, tmp_path, monkeypatch):
    import s3fs

    from mdprep.synthetic import LocalS3

    with LocalS3() as server:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIASERIESTEST000001")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "series-test-secret")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
        s3fs.S3FileSystem.clear_instance_cache()
        url = server.upload(ct.root, "scans", "ct")
        remote = ingest_dicom(url, level="series", workers=1)
        s3fs.S3FileSystem.clear_instance_cache()
    local = ingest_dicom(ct.root, level="series", workers=1)
    columns = [c for c in local.manifest.frame.columns]
    pd.testing.assert_frame_equal(remote.manifest.frame[columns], local.manifest.frame)
    assert remote.report.series == local.report.series  # the Enhanced CT file's frames read through ranged requests too


def test_a_multi_frame_file_whose_groups_cannot_be_read_keeps_its_row(ct, monkeypatch):
    import mdprep.ingest.dicom as dicom

    def broken(fh):
        raise ValueError("no functional groups")

    monkeypatch.setattr(dicom, "read_frame_geometry", broken)
    result = ingest_dicom(ct.root, level="series", workers=1)
    row = result.manifest.frame.set_index("path").loc["CT0000/study0/enhanced"]
    assert (row["n_instances"], row["n_frames"]) == (1, SLICES) and pd.isna(row["spacing_between_slices"])
    notes = " ".join(result.report.notes)
    assert "1 file(s): multi-frame file whose functional groups could not be read (ValueError): no frame positions" in notes
    assert "1 series whose images do not all carry ImagePositionPatient" in notes and result.report.reconciles
