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
        ("AS", b"43", False, 43.0),  # no unit, as RSNA Pneumonia's files store it: years
        ("AS", b"43X", False, INVALID),
        ("AS", b"1234", False, INVALID),
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


# ----------------------------------------------------------------------------- odd files


def _with_element(path, tag, vr, value, *, big_endian=False):
    """Rewrite ``path`` with ``tag`` stored under ``vr`` (whatever the dictionary says)."""
    from pydicom import dcmread, dcmwrite

    ds = dcmread(path)
    if tag in ds:
        del ds[tag]
    ds.add_new(tag, vr, value)
    if big_endian:  # read by the pydicom fallback
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.2"
        dcmwrite(path, ds, implicit_vr=False, little_endian=False, force_encoding=True)
    else:
        ds.save_as(path)
    return path


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize(
    "tag,vr,value,column",
    [
        (0x00280010, "LO", "abc", "rows"),  # Rows as text
        (0x00280011, "DS", "1e30", "columns"),  # a number far beyond US
        (0x00280011, "IS", "1" * 30, "columns"),  # beyond int64
        (0x00280010, "UL", 70000, "rows"),  # beyond the US range of Rows
        (0x00280010, "UV", 2**63 + 5, "rows"),  # beyond int64
        (0x00100040, "US", 5, "sex"),  # PatientSex as a number
        (0x00280030, "AT", [0x00100010, 0x00100020], "pixel_spacing"),  # PixelSpacing as tags
        (0x00080020, "US", 1, "study_date"),  # StudyDate as a number: not 1970-01-02
        (0x00101010, "US", 40, "age"),  # PatientAge as a number
        (0x00101010, "LO", "040Y", "age"),  # an age in a text VR that is not AS
        (0x00080020, "DS", "20200101", "study_date"),  # a date in a number VR
        (0x00280030, "DS", "nan\\1", "pixel_spacing"),  # not a finite number
    ],
)
def test_a_value_with_a_foreign_vr_is_null_and_counted(tmp_path, tag, vr, value, column, big_endian):
    path = _with_element(_write(tmp_path / "a.dcm", PatientSex="F", StudyDate="20200101", PatientAge="040Y"), tag, vr, value, big_endian=big_endian)
    res = read_header(str(path), COLUMNS)
    assert res.outcome == "ok", res
    names = [c.column for c in COLUMNS]
    assert [names[i] for i in res.invalid] == [column]
    row = dict(zip(names, res.values))
    assert row[column] is None and row["patient_id"] == "P1"
    if not big_endian:
        lean, slow = _both(path)
        assert lean == slow


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("big_endian", [False, True])
def test_a_patient_id_that_is_not_text_fails_the_file(tmp_path, big_endian):
    path = _with_element(_write(tmp_path / "a.dcm"), 0x00100020, "US", 7, big_endian=big_endian)
    res = read_header(str(path), COLUMNS, missing_patient="study")  # not a missing patient: no fallback
    assert (res.outcome, res.error_type) == ("failed", "InvalidPatientID")
    assert "stored as US" in res.message


@pytest.mark.parametrize(
    "vr,target,raw,expected",
    [
        ("IS", "IS", b"1" * 30, INVALID),
        ("IS", "IS", b"9" * 5000, INVALID),  # beyond Python's int-from-text limit
        ("IS", "US", b"70000", INVALID),
        ("IS", "US", b"-1", INVALID),
        ("DS", "US", b"512.0", 512),
        ("DS", "DS", b"1e400", INVALID),
        ("DS", "DS", b"1_000", INVALID),
        ("DS", "DS", b"Infinity", INVALID),
        ("FD", "US", np.array([2.5]).tobytes(), INVALID),
        ("FD", "IS", np.array([3.0]).tobytes(), 3),
        ("US", "DS", b"\x05\x00", 5.0),
        ("US", "DA", b"\x01\x00", INVALID),
        ("US", "AS", b"\x28\x00", INVALID),
        ("US", "LO", b"\x07\x00", INVALID),
        ("OB", "LO", b"P1", INVALID),
        ("LO", "DS", b"1.5", INVALID),
        ("DS", "LO", b"1.5", "1.5"),
        ("UN", "DS", b"1.5", 1.5),
        ("US or SS", "US", b"\x02\x00", 2),
    ],
)
def test_convert_value_checks_the_stored_vr_and_the_column_range(vr, target, raw, expected):
    from mdprep.dicom_header import TagColumn

    assert convert_value(TagColumn("x", 0, target, False), raw, vr, True, None) == expected


def _cut_before_pixels(path):
    """Cut ``path`` exactly where its PixelData element starts: a file that ends at an element boundary."""
    from pydicom import dcmread

    data = path.read_bytes()
    start = dcmread(path).get_item(0x7FE00010).value_tell - 12  # explicit VR OW header: 12 bytes
    path.write_bytes(data[:start])
    return path


@pytest.mark.parametrize("big_endian", [False, True])
def test_an_image_cut_before_its_pixel_data_is_truncated(tmp_path, big_endian):
    path = _write(tmp_path / "a.dcm")  # Secondary Capture Image Storage
    if big_endian:
        _with_element(path, 0x00080060, "CS", "OT", big_endian=True)
    _cut_before_pixels(path)
    res = read_header(str(path), COLUMNS)
    assert (res.outcome, res.error_type) == ("failed", "TruncatedFile")
    assert "Secondary Capture Image Storage" in res.message


@pytest.mark.parametrize("sop_class", ["1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.11.1", "1.2.840.10008.5.1.4.1.1.88.59"])
def test_objects_without_pixels_by_design_stay_rows(tmp_path, sop_class):
    path = _write(tmp_path / "sr.dcm", SOPClassUID=sop_class)  # Enhanced SR, GSPS, KOS
    _cut_before_pixels(path)
    res = read_header(str(path), COLUMNS)
    assert res.outcome == "ok" and not res.has_pixels


def test_image_storage_classes_are_precise():
    from mdprep.dicom_header import image_storage_classes

    classes = image_storage_classes()
    for uid in ("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.66.4"):
        assert uid in classes  # CR, DX, CT, MR, SC, segmentation
    for uid in ("1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.11.1", "1.2.840.10008.5.1.4.1.1.88.59", "1.2.840.10008.5.1.4.1.1.104.1", "1.2.840.10008.5.1.4.1.1.481.5", "1.2.840.10008.1.3.10"):
        assert uid not in classes  # SR, GSPS, KOS, PDF, RT plan, DICOMDIR


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_path_that_is_not_a_regular_file_is_not_read(tmp_path, kind):
    path = tmp_path / "x.dcm"
    if kind == "fifo":
        os.mkfifo(path)  # opening it for reading would block without O_NONBLOCK
        expected = ("skipped", "Fifo")
    else:
        path.mkdir()
        expected = ("skipped", "Folder")
    res = read_header(str(path), COLUMNS)
    assert (res.outcome, res.error_type) == expected


def test_missing_patient_falls_back_on_study_or_series(tmp_path):
    from pydicom import dcmread

    path = _write(tmp_path / "a.dcm", StudyInstanceUID="1.2.9", SeriesInstanceUID="1.2.9.1")
    ds = dcmread(path)
    del ds.PatientID
    ds.save_as(path)
    names = [c.column for c in COLUMNS]
    assert read_header(str(path), COLUMNS).error_type == "MissingPatientID"
    res = read_header(str(path), COLUMNS, missing_patient="study")
    assert res.outcome == "ok" and res.patient_source == "StudyInstanceUID"
    assert dict(zip(names, res.values))["patient_id"] == "study:1.2.9"
    res = read_header(str(path), COLUMNS, missing_patient="series")
    assert dict(zip(names, res.values))["patient_id"] == "series:1.2.9.1" and res.patient_source == "SeriesInstanceUID"
    del ds.StudyInstanceUID
    ds.save_as(path)
    res = read_header(str(path), COLUMNS, missing_patient="study")
    assert (res.outcome, res.error_type) == ("failed", "MissingPatientID") and "StudyInstanceUID" in res.message


@pytest.mark.parametrize(
    "values,expected",
    [
        (["0010,1030"], ["0010,1030"]),
        (["0010,1030,Manufacturer"], ["0010,1030", "Manufacturer"]),
        (["0010,1030", "PatientWeight"], ["0010,1030", "PatientWeight"]),
        (["(0018,0015), 00181151,KVP"], ["(0018,0015)", "00181151", "KVP"]),
        (["Manufacturer,,KVP,", None], ["Manufacturer", "KVP"]),
    ],
)
def test_split_tag_specs_keeps_group_element_pairs_whole(values, expected):
    from mdprep.dicom_header import split_tag_specs

    assert split_tag_specs(values) == expected


def test_every_tag_spelling_names_the_same_column():
    spellings = ["0010,1030", "(0010,1030)", "00101030", "PatientWeight", " ( 0010 , 1030 ) "]
    assert {tag_column(s).column for s in spellings} == {"patient_weight"}


# ----------------------------------------------------------------------------- pydicom's own test files

_AGE_UNITS = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}


def _pydicom_value(value, col):
    """pydicom's value normalised the way the manifest stores it (an independent conversion)."""
    from pydicom.multival import MultiValue

    if isinstance(value, (list, MultiValue)):
        items = [_pydicom_value(v, col) for v in value]
        return None if all(v is None for v in items) else items
    text = str(value).strip(" \x00") if not isinstance(value, (int, float)) else value
    if text == "" or value is None:
        return None
    if col.vr == "DA":
        return dt.datetime.strptime(text.replace(".", ""), "%Y%m%d").date()
    if col.vr == "AS":
        return round(int(text[:-1]) * _AGE_UNITS[text[-1].upper()], 4)
    if col.vr == "DS":
        return float(value)
    if col.vr in ("IS", "US", "UL", "SS", "SL"):
        return int(value)
    return text


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_read_header_agrees_with_pydicom_on_its_test_files():
    """Every file pydicom ships: same values where both read it, an error row where one cannot."""
    import pydicom
    from pydicom.data import get_testdata_files
    from pydicom.errors import InvalidDicomError

    from mdprep.dicom_header import image_storage_classes

    columns = header_columns()
    counts = {"agree": 0, "no_pixels": 0, "not_by_pydicom": 0, "invalid": 0}
    for path in get_testdata_files():
        res = read_header(path, columns, missing_patient="series")
        if os.path.isdir(path):
            assert (res.outcome, res.error_type) == ("skipped", "Folder")
            continue
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            ds = pydicom.dcmread(path, force=True) if res.outcome == "ok" and res.lenient else None
        except Exception:  # noqa: BLE001 - pydicom cannot read it at all
            ds = None
        if ds is None:
            assert res.outcome in ("failed", "skipped"), path
            counts["not_by_pydicom"] += 1
            continue
        if res.outcome != "ok":
            # Our reader refuses what pydicom reads lazily: a DICOMDIR, a file cut short,
            # an image stored without pixel data, or no patient/series at all.
            assert res.error_type in ("DicomDir", "TruncatedFile", "MissingPatientID", "Unreadable"), (path, res)
            if res.error_type == "TruncatedFile" and "without pixel data" in res.message:
                sop_class = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
                assert str(sop_class) in image_storage_classes() and "PixelData" not in ds
                counts["no_pixels"] += 1
            continue
        # Our two readers agree: the pydicom fallback gives the lean reader's row.
        fallback = _read_with_pydicom(path, columns, os.path.getsize(path), lenient=res.lenient, missing_patient="series")
        assert (fallback.outcome, fallback.values, fallback.invalid) == (res.outcome, res.values, res.invalid), path
        for i, col in enumerate(columns):
            source = ds.file_meta if col.tag >> 16 == 2 else ds
            ours = res.values[i]
            if col.column == "patient_id" and res.patient_source != "PatientID":
                assert ours == "series:" + str(ds.SeriesInstanceUID).strip(" \x00")
                continue
            if col.tag not in source:
                assert ours is None, (path, col.column)
                continue
            try:
                expected = _pydicom_value(source[col.tag].value, col)
            except (ValueError, KeyError, IndexError):
                expected = INVALID
            if i in res.invalid:
                # Only a value pydicom cannot make sense of either, or one stored with another VR.
                assert expected is INVALID or source[col.tag].VR != col.vr, (path, col.column, source[col.tag])
                counts["invalid"] += 1
                continue
            assert ours == expected, (path, col.column, ours, expected)
        counts["agree"] += 1
    # 95 files agree, 53 are images stored without pixel data, 11 are not DICOM (pydicom 3.0).
    assert counts["agree"] >= 90 and counts["no_pixels"] >= 40 and counts["not_by_pydicom"] >= 5, counts


def test_pydicom_fallback_sees_pixel_data_cut_short(tmp_path):
    # Big endian goes to the pydicom fallback; pydicom 3 reads a deferred value on get_item,
    # so the check must look at the element as read (offset and length), not at its value.
    path = _with_element(_write(tmp_path / "a.dcm"), 0x00080060, "CS", "OT", big_endian=True)
    path.write_bytes(path.read_bytes()[:-4])
    res = read_header(str(path), COLUMNS)
    assert (res.outcome, res.error_type) == ("failed", "TruncatedFile") and "pixel data needs 8 bytes" in res.message


# ----------------------------------------------------------------------------- long values, odd encodings, cuts


def _encoded(path, ds, kind):
    """Write ``ds`` as explicit LE, implicit LE (lean reader), explicit BE, deflated or without preamble (pydicom fallback)."""
    from pydicom import dcmwrite

    ds = ds.copy()
    if kind == "nopre":
        del ds.file_meta
        ds.preamble = None
        with open(path, "wb") as fh:
            dcmwrite(fh, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
        return path
    ds.file_meta.TransferSyntaxUID = {
        "exLE": "1.2.840.10008.1.2.1",
        "imLE": "1.2.840.10008.1.2",
        "exBE": "1.2.840.10008.1.2.2",
        "deflate": "1.2.840.10008.1.2.1.99",
    }[kind]
    dcmwrite(path, ds, implicit_vr=kind == "imLE", little_endian=kind != "exBE", enforce_file_format=True)
    return path


KINDS = ["exLE", "imLE", "exBE", "nopre"]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_long_values_are_the_same_in_both_readers(tmp_path):
    """Values longer than pydicom's defer size (1024 bytes), and text longer than 65535 bytes
    (stored as UN in explicit VR), pass through as they are: never as the repr of bytes."""
    from pydicom import dcmread

    base = dcmread(_write(tmp_path / "base.dcm", ImageComments="c" * 1500))
    base.PatientID = "P" * 70_000  # too long for LO's 2-byte length: written as UN in explicit VR
    base.add_new((0x0009, 0x0010), "LO", "ACME")
    base.add_new((0x0009, 0x1001), "UN", b"hello" * 400)  # a private value, VR unknown
    columns = header_columns(["ImageComments", "0009,1001"])
    names = [c.column for c in columns]
    rows = {}
    for kind in [*KINDS, "deflate"]:
        path = _encoded(tmp_path / f"{kind}.dcm", base, kind)
        lean = read_header(str(path), columns)
        slow = _read_with_pydicom(str(path), columns, os.path.getsize(path), lenient=kind == "nopre")
        assert lean.outcome == slow.outcome == "ok", (kind, lean, slow)
        assert lean.values == slow.values, kind  # the lean reader (or the fallback it chose) and pydicom agree
        rows[kind] = dict(zip(names, lean.values))
    for kind, row in rows.items():
        assert row["patient_id"] == "P" * 70_000, kind
        assert row["image_comments"] == "c" * 1500, kind
        assert row["tag_00091001"] == "hello" * 400, kind


@pytest.mark.parametrize("kind", KINDS)
def test_binary_data_read_as_text_is_not_text(tmp_path, kind):
    """In implicit VR a US or FD value meets the reader as bytes: control characters make it no text."""
    from pydicom import dcmread

    ds = dcmread(_write(tmp_path / "a.dcm"))
    ds.add_new(0x00080060, "FD", 1.5)  # Modality
    ds.add_new(0x00100020, "US", 7)  # PatientID
    path = _encoded(tmp_path / "b.dcm", ds, kind)
    res = read_header(str(path), COLUMNS)
    assert (res.outcome, res.error_type) == ("failed", "InvalidPatientID")
    if kind in ("imLE", "nopre"):
        assert "holds control characters, not text ('\\x07\\x00')" in res.message
    else:
        assert "is stored as US, which cannot be read as text" in res.message
    del ds.PatientID
    ds.PatientID = "P1"
    res = read_header(str(_encoded(tmp_path / "c.dcm", ds, kind)), COLUMNS)
    assert res.outcome == "ok" and [COLUMNS[i].column for i in res.invalid] == ["modality"]


@pytest.mark.parametrize(
    "vr,raw,iso2022,expected",
    [
        ("LT", b"line one\r\nline two\tend\f", False, "line one\r\nline two\tend\f"),  # free text may hold CR, LF, TAB, FF
        ("LO", b"P1\n", False, INVALID),  # LF is text in LT, ST and UT only, and it is no padding
        ("LO", b"P\x071", False, INVALID),
        ("LO", b"\x00\x00P1", False, INVALID),  # NULs pad at the end only
        ("UI", b"1.2.3\x00", False, "1.2.3"),
        ("LO", b"\x1b$B", False, INVALID),
        ("LO", b"\x1b$B", True, "\x1b$B"),  # ESC belongs to ISO 2022 text
        ("PN", b"Wang^XiaoDong=", False, "Wang^XiaoDong"),  # trailing empty groups dropped, as pydicom does
        ("PN", b"A==", False, "A"),
        ("PN", b"A=^", False, "A=^"),
    ],
)
def test_text_holds_only_the_control_characters_its_vr_allows(vr, raw, iso2022, expected):
    from mdprep.dicom_header import TagColumn

    assert convert_value(TagColumn("x", 0, vr, False), raw, vr, True, None, iso2022) == expected


def test_person_names_match_pydicom(tmp_path):
    path = _write(tmp_path / "pn.dcm", charset=["", "ISO 2022 IR 87"], PatientName="Yamada^Tarou=山田^太郎=")
    lean, slow = _both(path)
    names = [c.column for c in COLUMNS]
    assert dict(zip(names, lean.values))["patient_name"] == "Yamada^Tarou=山田^太郎"
    assert lean.values == slow.values


@pytest.mark.parametrize("kind", KINDS)
def test_a_fallback_uid_is_read_with_its_stored_vr(tmp_path, kind):
    from pydicom import dcmread

    ds = dcmread(_write(tmp_path / "a.dcm"))
    del ds.PatientID
    ds.add_new(0x0020000D, "US", 3)  # StudyInstanceUID as a number
    res = read_header(str(_encoded(tmp_path / "b.dcm", ds, kind)), COLUMNS, missing_patient="study")
    assert (res.outcome, res.error_type) == ("failed", "MissingPatientID")
    assert "no readable StudyInstanceUID" in res.message and "study:" not in str(res.values)


@pytest.mark.parametrize("kind", ["exLE", "exBE"])
def test_a_patient_id_stored_as_a_sequence_is_invalid(tmp_path, kind):
    from pydicom import dcmread

    ds = dcmread(_write(tmp_path / "a.dcm"))
    del ds.PatientID
    ds.add_new(0x00100020, "SQ", [])
    res = read_header(str(_encoded(tmp_path / "b.dcm", ds, kind)), COLUMNS, missing_patient="study")
    assert (res.outcome, res.error_type) == ("failed", "InvalidPatientID")
    assert "stored as a sequence (SQ)" in res.message


def _mislabelled(path, *, says_implicit):
    """A Part 10 file whose meta names one VR encoding while its data set is written in the other."""
    from io import BytesIO

    from pydicom import dcmread
    from pydicom.filebase import DicomFileLike
    from pydicom.filewriter import write_dataset, write_file_meta_info

    ds = dcmread(_write(path, StudyDate="20200101"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2" if says_implicit else "1.2.840.10008.1.2.1"
    buf = DicomFileLike(BytesIO())
    buf.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buf, ds.file_meta)
    buf.is_implicit_VR, buf.is_little_endian = not says_implicit, True
    del ds.file_meta
    write_dataset(buf, ds)
    path.write_bytes(buf.parent.getvalue())
    return path


@pytest.mark.parametrize("says_implicit", [True, False])
def test_a_data_set_in_the_other_vr_encoding_is_read_with_a_note(tmp_path, says_implicit):
    res = read_header(str(_mislabelled(tmp_path / "m.dcm", says_implicit=says_implicit)), COLUMNS)
    assert res.outcome == "ok", res
    row = dict(zip([c.column for c in COLUMNS], res.values))
    assert row["patient_id"] == "P1" and row["study_date"] == dt.date(2020, 1, 1)
    found, said = ("explicit", "implicit") if says_implicit else ("implicit", "explicit")
    assert res.notes == (f"the data set is in {found} VR although its transfer syntax says {said} VR; read as {found} VR",)


@pytest.mark.parametrize("kind", KINDS)
def test_a_file_cut_anywhere_is_truncated(tmp_path, kind):
    """Cut before the pixel data, inside the meta, a value or an undefined-length sequence: always TruncatedFile."""
    from pydicom import dcmread

    ds = dcmread(_write(tmp_path / "a.dcm", undefined_seq=True, StudyInstanceUID="1.2.9", Manufacturer="ACME"))
    data = _encoded(tmp_path / "full.dcm", ds, kind).read_bytes()
    first = 132 if kind != "nopre" else 48  # without preamble: from the first whole element on
    got = {}
    for cut in range(first, len(data) - 1, 3):
        path = tmp_path / f"cut{cut}.dcm"
        path.write_bytes(data[:cut])
        res = read_header(str(path), COLUMNS)
        got[cut] = (res.outcome, res.error_type)
    assert set(got.values()) == {("failed", "TruncatedFile")}, {k: v for k, v in got.items() if v[1] != "TruncatedFile"}


def test_random_bytes_after_the_dicm_marker_are_unreadable_not_truncated(tmp_path):
    rng = np.random.default_rng(0)
    kinds = set()
    for i in range(20):
        path = tmp_path / f"r{i}.dcm"
        path.write_bytes(bytes(128) + b"DICM" + rng.integers(0, 256, int(rng.integers(10, 2000)), dtype=np.uint8).tobytes())
        kinds.add(read_header(str(path), COLUMNS).error_type)
    assert kinds == {"Unreadable"}


def test_warnings_become_notes_of_their_file(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns when it writes the file too
        path = _write(tmp_path / "a.dcm", charset="ISO_IR 999", PatientName="Doe^John")
    with warnings.catch_warnings(record=True) as leaked:
        warnings.simplefilter("always")
        lean = read_header(str(path), COLUMNS)
    assert leaked == []  # caught, and attributed to the file
    assert lean.outcome == "ok" and lean.notes == ("unknown character set 'ISO_IR 999'; its text was decoded as ASCII/Latin-1",)
    assert dict(zip([c.column for c in COLUMNS], lean.values))["patient_name"] == "Doe^John"


def test_malformed_tags_are_named_so():
    from mdprep.dicom_header import split_tag_specs

    assert split_tag_specs(["0010,103,KVP"]) == ["0010,103", "KVP"]
    for spec in ("0010,103", "0010", "(0010,10300)", "00101"):
        with pytest.raises(UsageError, match=r"malformed tag .*expected GGGG,EEEE with 4 hex digits each"):
            tag_column(spec)


def test_values_pydicom_converted_go_back_to_their_stored_form():
    from pydicom.multival import MultiValue
    from pydicom.tag import Tag

    from mdprep.dicom_header import TagColumn, _python_value

    assert _python_value("UN", b"P1\x00", True) == b"P1\x00"  # bytes stay bytes: never "b'P1\\x00'"
    assert _python_value("OB", bytearray(b"\x01"), True) == b"\x01"
    assert _python_value("US", [1, 2], False) == b"\x00\x01\x00\x02"
    assert _python_value("PN", "Doe^John", True) == "Doe^John"  # text pydicom decoded stays text
    tags = _python_value("AT", MultiValue(Tag, [0x00100010, 0x00100020]), True)
    assert convert_value(TagColumn("x", 0, "AT", True), tags, "AT", True, None) == ["(0010,0010)", "(0010,0020)"]
