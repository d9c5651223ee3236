"""Reading DICOM headers into typed values, one file at a time.

Touches DICOM files (headers only, never pixel data) and pydicom; knows nothing of
manifests or the command line.

Two readers share one value converter:

* a lean reader for the encodings nearly every archive uses (a Part 10 file with
  preamble, explicit or implicit VR little endian, native or encapsulated pixel
  data). It walks the element headers with :mod:`struct`, decodes only the tags
  asked for, and stops at the pixel data. pydicom's general reader builds an
  object per element and is about ten times slower for this job (see
  docs/benchmarks.md);
* pydicom (``dcmread`` with large values deferred) for everything else: files without
  the preamble (read leniently and marked), big endian, deflated, or anything the
  lean reader does not recognise.

Value typing follows the VR of the DICOM data dictionary: DS to float, IS and
binary integers to int, DA to a date, AS to age in years, multi-valued attributes
to lists, person names to their text form.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import struct
from dataclasses import dataclass
from typing import Any, Sequence

import pyarrow as pa

from .errors import UsageError

# ----------------------------------------------------------------------------- tags

_TEXT_VRS = {"AE", "CS", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
_CHARSET_VRS = {"LO", "LT", "PN", "SH", "ST", "UC", "UT"}
_SINGLE_VALUE_TEXT = {"LT", "ST", "UT", "UR"}
_BINARY_INT = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "SV": "q", "UV": "Q"}
_BINARY_FLOAT = {"FL": "f", "FD": "d"}
_SUPPORTED_VRS = _TEXT_VRS | {"DS", "IS", "DA", "AS", "AT"} | set(_BINARY_INT) | set(_BINARY_FLOAT)


@dataclass(frozen=True)
class TagColumn:
    """One DICOM attribute read into one manifest column."""

    column: str
    tag: int
    vr: str
    multi: bool

    @property
    def arrow_type(self) -> pa.DataType:
        if self.vr in {"DS", "FL", "FD"}:
            base: pa.DataType = pa.float64()
        elif self.vr in {"IS"} | set(_BINARY_INT):
            base = pa.int64()
        elif self.vr == "DA":
            base = pa.date32()
        elif self.vr == "AS":
            base = pa.float32()
        else:
            base = pa.string()
        return pa.list_(base) if self.multi else base


#: The default preset: manifest column name -> DICOM keyword.
PRESET_TAGS: dict[str, str] = {
    "patient_id": "PatientID",
    "study_id": "StudyInstanceUID",
    "series_uid": "SeriesInstanceUID",
    "sop_uid": "SOPInstanceUID",
    "sop_class_uid": "SOPClassUID",
    "accession": "AccessionNumber",
    "modality": "Modality",
    "view": "ViewPosition",
    "body_part": "BodyPartExamined",
    "sex": "PatientSex",
    "age": "PatientAge",
    "birth_date": "PatientBirthDate",
    "study_date": "StudyDate",
    "rows": "Rows",
    "columns": "Columns",
    "pixel_spacing": "PixelSpacing",
    "photometric": "PhotometricInterpretation",
    "transfer_syntax": "TransferSyntaxUID",
}

_TAG_TEXT = re.compile(r"^\(?\s*([0-9A-Fa-f]{4})\s*,?\s*([0-9A-Fa-f]{4})\s*\)?$")


def _snake(keyword: str) -> str:
    """The manifest column name of a DICOM keyword.

    A plural acronym stays one word (``OtherPatientIDs`` -> ``other_patient_ids``).

    >>> _snake("OtherPatientIDs"), _snake("SOPInstanceUID"), _snake("PatientBirthName")
    ('other_patient_ids', 'sop_instance_uid', 'patient_birth_name')
    """
    keyword = re.sub(r"(?<=[A-Z])([A-Z])s(?=[A-Z0-9]|$)", lambda m: m.group(1).lower() + "s", keyword)
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", keyword).lower()


def tag_column(spec: str, column: str | None = None) -> TagColumn:
    """Resolve a keyword (``PatientWeight``) or a tag (``0010,1030``) to a :class:`TagColumn`.

    Examples
    --------
    >>> tag_column("PatientWeight")
    TagColumn(column='patient_weight', tag=1052720, vr='DS', multi=False)
    >>> tag_column("(0028,0030)").column, tag_column("(0028,0030)").multi
    ('pixel_spacing', True)
    """
    from pydicom.datadict import dictionary_VM, dictionary_VR, keyword_for_tag, tag_for_keyword

    text = spec.strip()
    m = _TAG_TEXT.match(text)
    if m:
        tag = int(m.group(1) + m.group(2), 16)
        keyword = keyword_for_tag(tag)
    else:
        tag = tag_for_keyword(text)
        keyword = text
        if tag is None:
            raise UsageError(
                f"unknown DICOM keyword {spec!r}; use a keyword from the DICOM dictionary "
                "(for example PatientWeight) or a tag as GGGG,EEEE (for example 0010,1030)",
                tag=spec,
            )
    try:
        vr = dictionary_VR(tag).split(" or ")[0]
        vm = dictionary_VM(tag)
    except KeyError:
        # A private or unknown tag: read its value as text.
        vr, vm = "LO", "1"
    if vr not in _SUPPORTED_VRS:
        raise UsageError(
            f"tag {spec!r} has VR {vr}, which cannot be a manifest column (sequences and binary data are not "
            "read); choose an attribute with a text or numeric value",
            tag=spec,
            vr=vr,
        )
    name = column or (_snake(keyword) if keyword else f"tag_{tag:08x}")
    return TagColumn(column=name, tag=tag, vr=vr, multi=vm != "1")


def header_columns(extra: Sequence[str] = ()) -> list[TagColumn]:
    """The preset columns followed by any ``extra`` tags (duplicates removed)."""
    cols = [tag_column(keyword, column) for column, keyword in PRESET_TAGS.items()]
    seen_tags = {c.tag for c in cols}
    seen_names = {c.column for c in cols}
    for spec in extra:
        col = tag_column(spec)
        if col.tag in seen_tags:
            continue
        if col.column in seen_names:
            raise UsageError(f"tag {spec!r} would create column {col.column!r}, which already exists", tag=spec)
        seen_tags.add(col.tag)
        seen_names.add(col.column)
        cols.append(col)
    return cols


# ----------------------------------------------------------------------------- values

INVALID = object()  # a present value that does not parse as its VR


def _decode_text(raw: bytes, vr: str, encodings: tuple[str, ...] | None) -> str:
    if vr in _CHARSET_VRS and encodings:
        if encodings == ("iso_ir_192",):
            text = raw.decode("utf-8", "replace")
        elif encodings == ("latin_1",):
            text = raw.decode("latin-1")
        else:
            from pydicom.charset import decode_bytes

            text = decode_bytes(raw, list(encodings), {0x5C, 0x5E, 0x3D} if vr == "PN" else {0x5C})
    else:
        text = raw.decode("latin-1")
    return text


def _parse_date(s: str) -> Any:
    s = s.strip()
    if len(s) == 10 and s[4] == "." and s[7] == ".":  # ACR-NEMA style YYYY.MM.DD
        s = s[:4] + s[5:7] + s[8:]
    if len(s) != 8 or not s.isdigit():
        return INVALID
    try:
        return _dt.date(int(s[:4]), int(s[4:6]), int(s[6:8]))
    except ValueError:
        return INVALID


_AGE_UNITS = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}


def _parse_age(s: str) -> Any:
    s = s.strip()
    if len(s) < 2 or not s[:-1].isdigit() or s[-1].upper() not in _AGE_UNITS:
        return INVALID
    return round(int(s[:-1]) * _AGE_UNITS[s[-1].upper()], 4)


def _parse_one(s: str, vr: str) -> Any:
    s = s.strip(" \x00")
    if s == "":
        return None
    try:
        if vr == "DS":
            return float(s)
        if vr == "IS":
            f = float(s)
            return int(f) if f.is_integer() else INVALID
    except ValueError:
        return INVALID
    if vr == "DA":
        return _parse_date(s)
    if vr == "AS":
        return _parse_age(s)
    return s


def convert_value(col: TagColumn, raw: bytes, vr: str | None, little: bool, encodings: tuple[str, ...] | None) -> Any:
    """Typed Python value of one raw element value, ``None`` when empty, :data:`INVALID` when malformed."""
    vr = col.vr if vr in (None, "UN") else vr
    if not raw:
        return None
    if vr in _BINARY_INT or vr in _BINARY_FLOAT:
        code = _BINARY_INT.get(vr) or _BINARY_FLOAT[vr]
        size = struct.calcsize(code)
        if len(raw) % size:
            return INVALID
        vals = list(struct.unpack(("<" if little else ">") + code * (len(raw) // size), raw))
        if col.multi:
            return vals
        return vals[0] if len(vals) == 1 else INVALID
    if vr == "AT":
        if len(raw) % 4:
            return INVALID
        fmt = "<" if little else ">"
        tags = [f"({g:04X},{e:04X})" for g, e in struct.iter_unpack(fmt + "HH", raw)]
        return tags if col.multi else "\\".join(tags)
    text = _decode_text(raw, vr, encodings)
    if col.vr in _TEXT_VRS and not col.multi:
        # Keep a single text value whole (a stray backslash is data, not a separator).
        text = text.strip(" \x00")
        return text or None
    parts = [text] if vr in _SINGLE_VALUE_TEXT else text.split("\\")
    values = [_parse_one(p, col.vr) for p in parts]
    if col.multi:
        if all(v is None for v in values):
            return None
        if any(v is INVALID for v in values):
            return INVALID
        return values
    if len(values) != 1:
        return INVALID
    return values[0]


def _encodings(raw: bytes | None) -> tuple[str, ...] | None:
    if not raw:
        return None
    names = [p.strip(" \x00") for p in raw.decode("latin-1").split("\\")]
    names = [n for n in names if n] or ["ISO_IR 6"]
    if names in (["ISO_IR 6"], ["ISO 2022 IR 6"]):
        return None
    if names == ["ISO_IR 100"]:
        return ("latin_1",)
    if names == ["ISO_IR 192"]:
        return ("iso_ir_192",)
    from pydicom.charset import convert_encodings

    return tuple(convert_encodings(names))


# ----------------------------------------------------------------------------- results

OK, SKIPPED, FAILED = "ok", "skipped", "failed"


@dataclass(frozen=True)
class HeaderResult:
    """What reading one file gave: values for a row, or why there is no row."""

    outcome: str  # OK, SKIPPED or FAILED
    size: int
    values: tuple = ()
    invalid: tuple[int, ...] = ()  # indexes of columns whose value did not parse
    lenient: bool = False
    has_pixels: bool = False
    error_type: str = ""
    message: str = ""


# ----------------------------------------------------------------------------- lean reader

_HDR = struct.Struct("<HH2sH")
_U32 = struct.Struct("<I")
_IMPLICIT_HDR = struct.Struct("<HHI")
_KNOWN_VRS = {
    v.encode()
    for v in "AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
}
_LONG_VRS = {b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV", b"SV", b"UV"}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}
_TS_TAG = 0x00020010
_MEDIA_CLASS_TAG = 0x00020002
_CHARSET_TAG = 0x00080005
_IMPLICIT_LE = "1.2.840.10008.1.2"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
_IDENTITY_TAGS = (0x00100020, 0x0020000D, 0x00080018, 0x00080016)  # PatientID, StudyInstanceUID, SOP instance/class
_READ_SIZE = 1 << 16


class _NeedMore(Exception):
    pass


class _Unsupported(Exception):
    pass


class _Truncated(Exception):
    pass


def _element(buf: bytes, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """Parse one element header at ``pos``: (tag, vr, value length, value start)."""
    if pos + 8 > len(buf):
        raise _NeedMore
    if implicit:
        g, e, length = _IMPLICIT_HDR.unpack_from(buf, pos)
        tag = (g << 16) | e
        return tag, None, length, pos + 8
    g, e, vr, length = _HDR.unpack_from(buf, pos)
    tag = (g << 16) | e
    if g == 0xFFFE:  # item and delimiter tags have no VR
        return tag, None, _U32.unpack_from(buf, pos + 4)[0], pos + 8
    if vr in _LONG_VRS:
        if pos + 12 > len(buf):
            raise _NeedMore
        return tag, vr, _U32.unpack_from(buf, pos + 8)[0], pos + 12
    if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        raise _Unsupported(f"bad VR {vr!r}")
    return tag, vr, length, pos + 8


def _skip_undefined(buf: bytes, pos: int, implicit: bool, depth: int = 0) -> int:
    """Skip the items of an undefined-length sequence starting at ``pos``; return the end."""
    if depth > 32:
        raise _Unsupported("sequences nested too deeply")
    while True:
        tag, _, length, pos = _element(buf, pos, True)  # items carry no VR in any encoding
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM:
            raise _Unsupported(f"unexpected tag {tag:08X} in a sequence")
        if length != _UNDEFINED:
            pos += length
            continue
        while True:
            tag, vr, length, pos = _element(buf, pos, implicit)
            if tag == _ITEM_END:
                break
            if length == _UNDEFINED:
                # SQ, or UN holding an implicit-VR sequence, or nested items.
                pos = _skip_undefined(buf, pos, implicit or vr == b"UN", depth + 1)
            else:
                pos += length


def _lean_parse(buf: bytes, file_size: int, wanted: dict[int, int]) -> tuple[dict, bool, bool]:
    """Raw values of wanted tags from a Part 10 file in ``buf`` (its first bytes).

    Returns ``(found, little_endian, has_pixels)`` where ``found`` maps tag to
    ``(vr or None, raw bytes)``. Raises _NeedMore when ``buf`` ends too early.
    """
    found: dict[int, tuple[bytes | None, bytes]] = {}
    pos = 132
    n = len(buf)
    # File meta group: always explicit VR little endian.
    while pos + 8 <= n:
        g = buf[pos] | (buf[pos + 1] << 8)
        if g != 0x0002:
            break
        tag, vr, length, start = _element(buf, pos, False)
        end = start + length
        if end > n:
            raise _NeedMore
        if tag in wanted or tag in (_TS_TAG, _MEDIA_CLASS_TAG):
            found[tag] = (vr, buf[start:end])
        pos = end
    ts_raw = found.get(_TS_TAG)
    if ts_raw is None:
        raise _Unsupported("no transfer syntax in the file meta information")
    ts = ts_raw[1].decode("ascii", "replace").strip(" \x00")
    if ts == _BIG_ENDIAN or ts in _DEFLATED:
        raise _Unsupported(f"transfer syntax {ts}")
    implicit = ts == _IMPLICIT_LE
    # The hot loop: element headers are unpacked inline (no call per element).
    explicit_hdr, implicit_hdr, u32 = _HDR.unpack_from, _IMPLICIT_HDR.unpack_from, _U32.unpack_from
    long_vrs, known_vrs, pixel_tags = _LONG_VRS, _KNOWN_VRS, _PIXEL_TAGS
    while True:
        if pos + 8 > n:
            if pos >= n and n >= file_size:
                return found, True, False
            raise _NeedMore
        if implicit:
            g, e, length = implicit_hdr(buf, pos)
            vr = None
            start = pos + 8
        else:
            g, e, vr, length = explicit_hdr(buf, pos)
            if vr in long_vrs:
                if pos + 12 > n:
                    raise _NeedMore
                length = u32(buf, pos + 8)[0]
                start = pos + 12
            elif vr in known_vrs:
                start = pos + 8
            else:
                raise _Unsupported(f"bad VR {vr!r}")
        tag = (g << 16) | e
        if tag in pixel_tags:
            if length != _UNDEFINED and start + length > file_size:
                raise _Truncated(
                    f"pixel data needs {length} bytes at offset {start} but the file ends at {file_size}"
                )
            return found, True, True
        if g == 0xFFFE:
            raise _Unsupported("item tag outside a sequence")
        if length == _UNDEFINED:
            if not implicit and vr not in (b"SQ", b"UN"):
                raise _Unsupported(f"undefined length on VR {vr!r}")
            pos = _skip_undefined(buf, start, implicit or vr == b"UN")
            continue
        end = start + length
        if end > file_size:
            raise _Truncated(f"element ({g:04X},{e:04X}) runs past the end of the file")
        if tag in wanted:
            if end > n:
                raise _NeedMore
            found[tag] = (vr, buf[start:end])
        pos = end


def _values_from_raw(columns: Sequence[TagColumn], found: dict, little: bool) -> tuple[tuple, tuple[int, ...]]:
    charset = found.get(_CHARSET_TAG)
    encodings = _encodings(charset[1]) if charset else None
    values = []
    invalid = []
    for i, col in enumerate(columns):
        item = found.get(col.tag)
        if item is None:
            values.append(None)
            continue
        vr, raw = item
        vr_text = vr.decode("ascii") if isinstance(vr, bytes) else vr
        value = convert_value(col, raw, vr_text, little, encodings)
        if value is INVALID:
            invalid.append(i)
            value = None
        values.append(value)
    return tuple(values), tuple(invalid)


def _looks_like_raw_dataset(head: bytes) -> bool:
    """True when a file without preamble starts like a little-endian dataset (group 0002/0008)."""
    if len(head) < 8:
        return False
    group = head[0] | (head[1] << 8)
    return group in (0x0002, 0x0008)


def _missing_patient(columns: Sequence[TagColumn], values: tuple) -> bool:
    for col, value in zip(columns, values):
        if col.column == "patient_id":
            return value in (None, "")
    return False


def read_header(path: str, columns: Sequence[TagColumn]) -> HeaderResult:
    """Read the wanted attributes of one file; never raises for a bad file.

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "notes.txt")
    >>> _ = open(p, "w").write("not an image")
    >>> read_header(p, header_columns()).outcome
    'skipped'
    """
    wanted = {c.tag: i for i, c in enumerate(columns)}
    wanted.setdefault(_CHARSET_TAG, -1)
    try:
        with open(path, "rb", buffering=0) as fh:
            size = os.fstat(fh.fileno()).st_size
            buf = fh.read(_READ_SIZE)
            if len(buf) >= 132 and buf[128:132] == b"DICM":
                read_size = _READ_SIZE
                while True:
                    try:
                        found, little, has_pixels = _lean_parse(buf, size, wanted)
                        break
                    except _NeedMore:
                        if len(buf) >= size:
                            raise _Truncated("the header ends before its last element") from None
                        read_size *= 8
                        fh.seek(0)
                        buf = fh.read(read_size)
            elif _looks_like_raw_dataset(buf):
                return _read_with_pydicom(path, columns, size, lenient=True)
            else:
                return HeaderResult(SKIPPED, size, error_type="NotDicom", message="no DICOM preamble and no DICOM data elements")
    except _Unsupported:
        return _read_with_pydicom(path, columns, size, lenient=False)
    except _Truncated as exc:
        return HeaderResult(FAILED, size, error_type="TruncatedFile", message=str(exc))
    except OSError as exc:
        return HeaderResult(FAILED, 0, error_type=type(exc).__name__, message=str(exc))
    media = found.get(_MEDIA_CLASS_TAG)
    if media and media[1].decode("ascii", "replace").strip(" \x00") == _DICOMDIR_CLASS:
        return HeaderResult(SKIPPED, size, error_type="DicomDir", message="a DICOMDIR index, not an image")
    values, invalid = _values_from_raw(columns, found, little)
    return _finish(columns, size, values, invalid, lenient=False, has_pixels=has_pixels)


def _finish(columns, size, values, invalid, *, lenient, has_pixels) -> HeaderResult:
    if _missing_patient(columns, values):
        return HeaderResult(
            FAILED,
            size,
            error_type="MissingPatientID",
            message="the file has no PatientID (0010,0020); every manifest row needs a patient",
        )
    return HeaderResult(OK, size, values=values, invalid=invalid, lenient=lenient, has_pixels=has_pixels)


def _read_with_pydicom(path: str, columns: Sequence[TagColumn], size: int, *, lenient: bool) -> HeaderResult:
    import pydicom
    from pydicom.dataelem import RawDataElement
    from pydicom.errors import InvalidDicomError

    try:
        # defer_size keeps large values (pixel data) on disk but records where they are.
        ds = pydicom.dcmread(path, defer_size=1024, force=lenient)
    except InvalidDicomError as exc:
        return HeaderResult(SKIPPED, size, error_type="NotDicom", message=str(exc))
    except Exception as exc:  # noqa: BLE001 - any reader failure is this file's error row
        return HeaderResult(FAILED, size, error_type=type(exc).__name__, message=str(exc) or repr(exc))
    try:
        meta = getattr(ds, "file_meta", None)
        if meta is not None and str(meta.get("MediaStorageSOPClassUID", "")) == _DICOMDIR_CLASS:
            return HeaderResult(SKIPPED, size, error_type="DicomDir", message="a DICOMDIR index, not an image")
        little = getattr(ds, "is_little_endian", None) is not False
        found: dict[int, tuple[Any, bytes]] = {}
        for col in list(columns) + [TagColumn("_charset", _CHARSET_TAG, "CS", True)]:
            source = meta if (col.tag >> 16) == 0x0002 and meta is not None else ds
            if col.tag not in source:
                continue
            elem = source.get_item(col.tag)
            if isinstance(elem, RawDataElement):
                if elem.value is None:
                    continue
                found[col.tag] = (elem.VR, bytes(elem.value))
            else:
                found[col.tag] = (elem.VR, _python_value_bytes(elem.VR, elem.value, little))
        if not any(t in found for t in _IDENTITY_TAGS):
            if lenient:
                return HeaderResult(SKIPPED, size, error_type="NotDicom", message="read leniently but holds no patient, study or instance attributes")
            return HeaderResult(FAILED, size, error_type="Unreadable", message="has the DICM marker but no readable patient, study or instance attributes")
        pixel_tags = [t for t in _PIXEL_TAGS if t in ds]
        for t in pixel_tags:
            elem = ds.get_item(t)
            tell, length = getattr(elem, "value_tell", None), getattr(elem, "length", None)
            if tell is not None and length not in (None, _UNDEFINED) and tell + length > size:
                return HeaderResult(
                    FAILED, size, error_type="TruncatedFile",
                    message=f"pixel data needs {length} bytes at offset {tell} but the file ends at {size}",
                )
        values, invalid = _values_from_raw(columns, found, little)
    except Exception as exc:  # noqa: BLE001
        return HeaderResult(FAILED, size, error_type=type(exc).__name__, message=str(exc) or repr(exc))
    return _finish(columns, size, values, invalid, lenient=lenient, has_pixels=bool(pixel_tags))


def _python_value_bytes(vr: str, value: Any, little: bool) -> bytes:
    """Bytes for an element pydicom already converted (file meta, mostly)."""
    from pydicom.multival import MultiValue

    if vr in _BINARY_INT or vr in _BINARY_FLOAT:
        code = _BINARY_INT.get(vr) or _BINARY_FLOAT[vr]
        vals = list(value) if isinstance(value, (list, MultiValue)) else [value]
        return struct.pack(("<" if little else ">") + code * len(vals), *vals)
    if isinstance(value, (list, MultiValue)):
        value = "\\".join(str(v) for v in value)
    return str(value).encode("utf-8")
