from __future__ import annotations

import datetime as dt
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from mdprep.dicom_header import INVALID, _read_with_pydicom, convert_value, header_columns, read_header, tag_column
from mdprep.errors import UsageError


def _write(path, *, implicit=False, charset=None, undefined_seq=False, **attrs):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1"
    ds = Dataset()
    ds.file_meta = meta
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = "1.2.3.4"
    ds.PatientID = "P1"
    item = Dataset()
    item.CodeMeaning = "x"
    inner = Dataset()
    inner.CodeValue = "y"
    item.ConceptCodeSequence = Sequence([inner])
    ds.ViewCodeSequence = Sequence([item])
    if undefined_seq:
        ds["ViewCodeSequence"].is_undefined_length = True
        item.is_undefined_length_sequence_item = True
        item["ConceptCodeSequence"].is_undefined_length = True
        inner.is_undefined_length_sequence_item = True
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 2, 2, 16, 16, 15
    ds.SamplesPerPixel, ds.PixelRepresentation, ds.PhotometricInterpretation = 1, 0, "MONOCHROME2"
    ds.PixelData = np.arange(4, dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


COLUMNS = header_columns(["Manufacturer", "ImageType", "KVP", "0018,1151", "PatientName", "WindowCenter"])


def _both(path):
    lean = read_header(str(path), COLUMNS)
    slow = _read_with_pydicom(str(path), COLUMNS, os.path.getsize(path), lenient=False)
    return lean, slow


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("undefined_seq", [False, True])
def test_lean_reader_agrees_with_pydicom(tmp_path, implicit, undefined_seq):
    path = _write(
        tmp_path / "a.dcm",
        implicit=implicit,
        undefined_seq=undefined_seq,
        PatientAge="006M",
        PatientSex="F",
        StudyDate="20200229",
        PixelSpacing=[0.5, "0.25"],
        ImageType=["ORIGINAL", "PRIMARY", "AXIAL"],
        KVP="120.5",
        XRayTubeCurrent="250",
        Manufacturer="ACME",
        WindowCenter=["40", "400"],
    )
    lean, slow = _both(path)
    assert lean.outcome == slow.outcome == "ok"
    assert lean.values == slow.values
    assert lean.has_pixels and slow.has_pixels
    row = dict(zip([c.column for c in COLUMNS], lean.values))
    assert row["age"] == 0.5
    assert row["study_date"] == dt.date(2020, 2, 29)
    assert row["pixel_spacing"] == [0.5, 0.25]
    assert row["image_type"] == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert row["kvp"] == 120.5 and row["x_ray_tube_current"] == 250
    assert row["rows"] == 2 and row["transfer_syntax"] == ("1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1")
    assert row["window_center"] == [40.0, 400.0]


def test_character_sets_decode_names(tmp_path):
    path = _write(tmp_path / "u.dcm", charset="ISO_IR 192", PatientName="Müller^Jürgen")
    lean, slow = _both(path)
    row = dict(zip([c.column for c in COLUMNS], lean.values))
    assert row["patient_name"] == "Müller^Jürgen"
    assert lean.values == slow.values
    path = _write(tmp_path / "l.dcm", charset="ISO_IR 100", PatientName="Müller^Jürgen")
    assert dict(zip([c.column for c in COLUMNS], read_header(str(path), COLUMNS).values))["patient_name"] == "Müller^Jürgen"


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_malformed_values_become_null_and_are_counted(tmp_path):
    path = _write(tmp_path / "bad.dcm", StudyDate="2020", PatientAge="abc")
    res = read_header(str(path), COLUMNS)
    names = [COLUMNS[i].column for i in res.invalid]
    assert sorted(names) == ["age", "study_date"]
    row = dict(zip([c.column for c in COLUMNS], res.values))
    assert row["age"] is None and row["study_date"] is None


@pytest.mark.parametrize(
    "vr,raw,multi,expected",
    [
        ("DS", b"1.5 ", False, 1.5),
        ("DS", b"1.5\\2", True, [1.5, 2.0]),
        ("IS", b" 12 ", False, 12),
        ("IS", b"1.5", False, INVALID),
        ("DA", b"19991231", False, dt.date(1999, 12, 31)),
        ("DA", b"1999.12.31", False, dt.date(1999, 12, 31)),
        ("DA", b"19991332", False, INVALID),
        ("AS", b"010W", False, round(70 / 365.25, 4)),
        ("AS", b"003D", False, round(3 / 365.25, 4)),
        ("CS", b"PA ", False, "PA"),
        ("CS", b"A\\B ", True, ["A", "B"]),
        ("UI", b"1.2.3\x00", False, "1.2.3"),
        ("US", b"\x00\x02", False, 512),
        ("US", b"\x00\x02\x01\x00", True, [512, 1]),
        ("FD", np.array([2.5]).tobytes(), False, 2.5),
        ("LO", b"", False, None),
        ("DS", b"  ", False, None),
    ],
)
def test_convert_value(vr, raw, multi, expected):
    from mdprep.dicom_header import TagColumn

    col = TagColumn("x", 0, vr, multi)
    assert convert_value(col, raw, vr, True, None) == expected


def test_tag_column_accepts_keywords_and_tags_and_refuses_sequences():
    assert tag_column("PatientWeight").column == "patient_weight"
    assert tag_column("0018,0015").column == "body_part_examined"
    assert tag_column("(0009,1001)").column == "tag_00091001"
    with pytest.raises(UsageError, match="unknown DICOM keyword 'NotAKeyword'"):
        tag_column("NotAKeyword")
    with pytest.raises(UsageError, match="VR SQ"):
        tag_column("ViewCodeSequence")


def test_big_header_beyond_first_read_is_followed(tmp_path):
    # 200 KB of private data before the patient group forces reads past the first 64 KB.
    path = tmp_path / "big.dcm"
    _write(path, Manufacturer="ACME")
    from pydicom import dcmread

    ds = dcmread(path)
    ds.add_new((0x0009, 0x1001), "OB", bytes(200_000))
    ds.save_as(path)
    res = read_header(str(path), COLUMNS)
    assert res.outcome == "ok" and dict(zip([c.column for c in COLUMNS], res.values))["manufacturer"] == "ACME"


ascii_text = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ^-", min_size=0, max_size=16).map(str.strip)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    patient=ascii_text.filter(bool),
    manufacturer=ascii_text,
    age=st.integers(0, 120),
    spacing=st.lists(st.floats(0.01, 10, allow_nan=False).map(lambda f: round(f, 4)), min_size=2, max_size=2),
    implicit=st.booleans(),
    undefined=st.booleans(),
)
def test_lean_and_pydicom_agree_on_random_headers(tmp_path, patient, manufacturer, age, spacing, implicit, undefined):
    path = _write(
        tmp_path / "h.dcm",
        implicit=implicit,
        undefined_seq=undefined,
        PatientAge=f"{age:03d}Y",
        PixelSpacing=spacing,
        Manufacturer=manufacturer,
    )
    from pydicom import dcmread

    ds = dcmread(path)
    ds.PatientID = patient
    ds.save_as(path)
    lean, slow = _both(path)
    assert lean.outcome == slow.outcome == "ok"
    assert lean.values == slow.values
    row = dict(zip([c.column for c in COLUMNS], lean.values))
    assert row["patient_id"] == patient and row["age"] == age
