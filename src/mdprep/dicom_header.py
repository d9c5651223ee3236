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
to lists, person names to their text form. A value is read only when the VR it is
stored with is of the same kind as the dictionary's (text for text, a number for a
number, DA for a date, AS for an age) and it fits the column's type; otherwise it
is :data:`INVALID` (stored as null and counted), so one odd file never breaks the
Arrow column of a whole chunk.
"""

from __future__ import annotations

import datetime as _dt
import functools
import math
import os
import re
import stat
import struct
from dataclasses import dataclass
from typing import Any, Sequence

import pyarrow as pa

from .errors import UsageError
from .fileio import special_file_kind

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
# One item of a comma-separated tag list: a GGGG,EEEE pair (its comma is not a separator), or anything up to a comma.
_TAG_ITEM = re.compile(r"\s*(\(?\s*[0-9A-Fa-f]{4}\s*,\s*[0-9A-Fa-f]{4}\s*\)?|[^,]*?)\s*(?:,|\Z)")


def split_tag_specs(values: Sequence[str | None]) -> list[str]:
    """Items of repeated and/or comma-separated tag lists, keeping ``GGGG,EEEE`` whole.

    Examples
    --------
    >>> split_tag_specs(["0010,1030,Manufacturer", "(0018,0015)", "PatientWeight, 00181151"])
    ['0010,1030', 'Manufacturer', '(0018,0015)', 'PatientWeight', '00181151']
    """
    out: list[str] = []
    for value in values:
        if not value:
            continue
        pos = 0
        while pos < len(value):
            m = _TAG_ITEM.match(value, pos)  # always matches and consumes at least one character
            if m.group(1):
                out.append(m.group(1))
            pos = m.end()
    return out


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
    if s.isascii() and s.isdigit() and len(s) <= 3:
        # No unit: not valid AS, but real archives write it so (RSNA Pneumonia's "43"); years.
        return float(int(s))
    if len(s) < 2 or not s[:-1].isdigit() or s[-1].upper() not in _AGE_UNITS:
        return INVALID
    return round(int(s[:-1]) * _AGE_UNITS[s[-1].upper()], 4)


def parse_age(text: str) -> float | None:
    """Age in years of a DICOM AS value (``058Y``, ``006M``, ``003W``, ``010D``); None when it is not one.

    Up to three digits without a unit (``43``, as RSNA Pneumonia's files store it) are read
    as years.

    >>> parse_age("058Y"), parse_age("006M"), parse_age("58"), parse_age("58X")
    (58.0, 0.5, 58.0, None)
    """
    value = _parse_age(text)
    return None if value is INVALID else value


_INT64 = (-(1 << 63), (1 << 63) - 1)
#: Integer range of each integer VR, cut to the int64 column that holds it.
_INT_RANGE = {
    "US": (0, 0xFFFF),
    "SS": (-0x8000, 0x7FFF),
    "UL": (0, 0xFFFFFFFF),
    "SL": (-(1 << 31), (1 << 31) - 1),
    "SV": _INT64,
    "UV": (0, _INT64[1]),
    "IS": _INT64,
}
_FLOAT_VRS = frozenset({"DS"} | set(_BINARY_FLOAT))
_STRING_VRS = frozenset(_TEXT_VRS | {"DS", "IS", "DA", "AS"})  # VRs whose value is characters
_NUMBER_VRS = frozenset({"DS", "IS"} | set(_BINARY_INT) | set(_BINARY_FLOAT))
#: Dictionary VR -> the stored VRs whose value it can take: text from any character VR,
#: a number from DS, IS or a binary number, a date only from DA, an age only from AS.
_ACCEPTED_VRS: dict[str, frozenset] = {
    **{vr: _STRING_VRS for vr in _TEXT_VRS},
    **{vr: _NUMBER_VRS for vr in _NUMBER_VRS},
    "DA": frozenset({"DA"}),
    "AS": frozenset({"AS"}),
    "AT": frozenset({"AT"}),
}


def _fit_number(value: Any, target: str) -> Any:
    """``value`` (int or float) as the Python value of a ``target`` column, or INVALID if it does not fit."""
    if target in _FLOAT_VRS:
        f = float(value)  # an int beyond float range raises OverflowError, caught by the caller
        return f if math.isfinite(f) else INVALID
    if isinstance(value, float):
        if not value.is_integer():  # also false for inf and nan
            return INVALID
        value = int(value)
    lo, hi = _INT_RANGE[target]
    return value if lo <= value <= hi else INVALID


def _parse_one(s: str, target: str) -> Any:
    """One text value (a DS, IS, DA or AS string, or text) as the Python value of a ``target`` column."""
    s = s.strip(" \x00")
    if s == "":
        return None
    if target in _NUMBER_VRS:
        # int() and float() also take "1_000", non-ASCII digits, "nan" and "inf"; DS and IS do not.
        if not s.isascii() or "_" in s:
            return INVALID
        try:
            if target in _FLOAT_VRS:
                f = float(s)
                return f if math.isfinite(f) else INVALID
            try:
                return _fit_number(int(s), target)
            except ValueError:  # "512.0" in an integer attribute
                return _fit_number(float(s), target)
        except (OverflowError, ValueError):  # not a number, or thousands of digits
            return INVALID
    if target == "DA":
        return _parse_date(s)
    if target == "AS":
        return _parse_age(s)
    return s


def convert_value(col: TagColumn, raw: bytes, vr: str | None, little: bool, encodings: tuple[str, ...] | None) -> Any:
    """Typed Python value of one raw element value, ``None`` when empty, :data:`INVALID` when malformed.

    ``vr`` is the VR the file stores the element with (``None`` in implicit VR files,
    where the dictionary's VR applies). The result always fits ``col.arrow_type``:
    a value stored with a VR of another kind than the dictionary's (``Rows`` as LO,
    ``StudyDate`` as US, ``PatientID`` as US), a number out of the range of the
    attribute's VR (``Columns`` as DS ``1e30``), or a non-finite number is INVALID.

    Examples
    --------
    >>> rows = tag_column("Rows")
    >>> convert_value(rows, b"512 ", "IS", True, None), convert_value(rows, b"abc", "LO", True, None) is INVALID
    (512, True)
    >>> convert_value(tag_column("StudyDate"), b"\\x01\\x00", "US", True, None) is INVALID
    True
    """
    if vr is None or vr == "UN":
        vr = col.vr
    elif len(vr) != 2:
        vr = vr[:2]  # pydicom's "US or SS" for an ambiguous implicit element
    if not raw:
        return None
    target = col.vr
    if vr not in _ACCEPTED_VRS.get(target, ()):
        return INVALID
    try:
        if vr in _BINARY_INT or vr in _BINARY_FLOAT:
            code = _BINARY_INT.get(vr) or _BINARY_FLOAT[vr]
            size = struct.calcsize(code)
            if len(raw) % size:
                return INVALID
            vals = [_fit_number(v, target) for v in struct.unpack(("<" if little else ">") + code * (len(raw) // size), raw)]
            if any(v is INVALID for v in vals):
                return INVALID
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
    except (OverflowError, ValueError, LookupError, struct.error):
        return INVALID
    if target in _TEXT_VRS and not col.multi:
        # Keep a single text value whole (a stray backslash is data, not a separator).
        text = text.strip(" \x00")
        return text or None
    parts = [text] if vr in _SINGLE_VALUE_TEXT else text.split("\\")
    values = [_parse_one(p, target) for p in parts]
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
    patient_source: str = "PatientID"  # the attribute patient_id came from (see MISSING_PATIENT_POLICIES)


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
_PATIENT_TAG = 0x00100020
_SOP_CLASS_TAG = 0x00080016
_STUDY_UID = TagColumn("study_uid", 0x0020000D, "UI", False)
_SERIES_UID = TagColumn("series_uid", 0x0020000E, "UI", False)
_IDENTITY_TAGS = (_PATIENT_TAG, _STUDY_UID.tag, 0x00080018, _SOP_CLASS_TAG)  # PatientID, StudyInstanceUID, SOP instance/class
#: Tags read from every file besides the wanted columns: the character set, the SOP
#: class (does the file need pixel data?) and the UIDs a missing patient may fall back on.
_ALWAYS_TAGS = (_CHARSET_TAG, _SOP_CLASS_TAG, _STUDY_UID.tag, _SERIES_UID.tag)
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


# ----------------------------------------------------------------------------- policies

#: What to do with a file that has no PatientID: value -> meaning.
MISSING_PATIENT_POLICIES = {
    "error": "the file fails with MissingPatientID",
    "study": "patient_id becomes 'study:' + StudyInstanceUID (the file fails if that is missing too)",
    "series": "patient_id becomes 'series:' + SeriesInstanceUID (the file fails if that is missing too)",
}
_FALLBACKS = {"study": (_STUDY_UID, "StudyInstanceUID"), "series": (_SERIES_UID, "SeriesInstanceUID")}

#: SOP classes that carry pixel data without "Image Storage" in their name.
_OTHER_PIXEL_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
        "1.2.840.10008.5.1.4.1.1.30",  # Parametric Map Storage (float pixel data)
        "1.2.840.10008.5.1.4.1.1.6.2",  # Enhanced US Volume Storage
        "1.2.840.10008.5.1.4.1.1.81.1",  # Ophthalmic Thickness Map Storage
        "1.2.840.10008.5.1.4.1.1.82.1",  # Corneal Topography Map Storage
        "1.2.840.10008.5.1.4.1.1.77.1.5.8",  # Ophthalmic OCT B-scan Volume Analysis Storage
    }
)


@functools.lru_cache(maxsize=1)
def image_storage_classes() -> frozenset[str]:
    """SOP class UIDs whose objects must hold pixel data.

    Every SOP class that pydicom's UID dictionary names "... Image Storage ..." (CR,
    DX, CT, MR, US, secondary capture, ...), and the few pixel-bearing classes named
    otherwise (:data:`_OTHER_PIXEL_CLASSES`). Structured reports, presentation
    states, key object selections, RT plans and structure sets, waveforms and
    encapsulated documents are not in it: they have no pixels by design.

    >>> "1.2.840.10008.5.1.4.1.1.1.1" in image_storage_classes()  # DX for presentation
    True
    >>> "1.2.840.10008.5.1.4.1.1.88.22" in image_storage_classes()  # Enhanced SR
    False
    """
    from pydicom.uid import UID_dictionary

    named = {uid for uid, info in UID_dictionary.items() if info[1] == "SOP Class" and "Image Storage" in info[0]}
    return frozenset(named) | _OTHER_PIXEL_CLASSES


def _uid_text(found: dict, tag: int) -> str:
    item = found.get(tag)
    return item[1].decode("ascii", "replace").strip(" \x00") if item else ""


def _missing_pixels(found: dict, size: int) -> HeaderResult | None:
    """A TruncatedFile result when an image storage object ends without pixel data."""
    sop_class = _uid_text(found, _SOP_CLASS_TAG) or _uid_text(found, _MEDIA_CLASS_TAG)
    if sop_class not in image_storage_classes():
        return None
    from pydicom.uid import UID_dictionary

    name = UID_dictionary.get(sop_class, (sop_class,))[0]
    return HeaderResult(
        FAILED,
        size,
        error_type="TruncatedFile",
        message=f"the file ends at byte {size} without pixel data, which a {name} object must have; it was probably cut short",
    )


def _special(mode: int) -> HeaderResult:
    if stat.S_ISDIR(mode):
        return HeaderResult(FAILED, 0, error_type="IsADirectoryError", message="a folder, not a file")
    kind = special_file_kind(mode)
    return HeaderResult(SKIPPED, 0, error_type=kind, message=f"not a regular file ({kind}); not read")


def read_header(path: str, columns: Sequence[TagColumn], missing_patient: str = "error") -> HeaderResult:
    """Read the wanted attributes of one file; never raises for a bad file.

    Parameters
    ----------
    path : str
        The file. FIFOs, sockets and devices are skipped without being read.
    columns : sequence of TagColumn
        What to read; a column for PatientID (0010,0020) gives the row its patient.
    missing_patient : {"error", "study", "series"}
        What a file without PatientID gives (:data:`MISSING_PATIENT_POLICIES`).

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "notes.txt")
    >>> with open(p, "w") as fh:
    ...     _ = fh.write("not an image")
    >>> read_header(p, header_columns()).outcome
    'skipped'
    """
    try:
        return _read_header(path, columns, missing_patient)
    except Exception as exc:  # noqa: BLE001 - a reader bug on one odd file is that file's error row
        return HeaderResult(FAILED, 0, error_type=type(exc).__name__, message=str(exc) or repr(exc))


def _read_header(path: str, columns: Sequence[TagColumn], missing_patient: str) -> HeaderResult:
    wanted = {c.tag: i for i, c in enumerate(columns)}
    for tag in _ALWAYS_TAGS:
        wanted.setdefault(tag, -1)
    size = 0
    try:
        # Non-blocking, so that a FIFO listed by mistake is seen for what it is instead of hanging.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(fd, "rb", buffering=0) as fh:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return _special(st.st_mode)
            size = st.st_size
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
                return _read_with_pydicom(path, columns, size, lenient=True, missing_patient=missing_patient)
            else:
                return HeaderResult(SKIPPED, size, error_type="NotDicom", message="no DICOM preamble and no DICOM data elements")
    except _Unsupported:
        return _read_with_pydicom(path, columns, size, lenient=False, missing_patient=missing_patient)
    except _Truncated as exc:
        return HeaderResult(FAILED, size, error_type="TruncatedFile", message=str(exc))
    except OSError as exc:
        return HeaderResult(FAILED, size, error_type=type(exc).__name__, message=str(exc))
    if _uid_text(found, _MEDIA_CLASS_TAG) == _DICOMDIR_CLASS:
        return HeaderResult(SKIPPED, size, error_type="DicomDir", message="a DICOMDIR index, not an image")
    if not has_pixels:
        truncated = _missing_pixels(found, size)
        if truncated is not None:
            return truncated
    values, invalid = _values_from_raw(columns, found, little)
    return _finish(columns, size, values, invalid, found, little, lenient=False, has_pixels=has_pixels, missing_patient=missing_patient)


def _finish(columns, size, values, invalid, found, little, *, lenient, has_pixels, missing_patient) -> HeaderResult:
    """The OK result, unless the file has no readable patient (and no fallback for it)."""
    at = next((i for i, c in enumerate(columns) if c.tag == _PATIENT_TAG), None)
    source = "PatientID"
    if at is not None and at in invalid:
        vr = found[_PATIENT_TAG][0]
        vr_text = (vr.decode("ascii") if isinstance(vr, bytes) else vr) or "its dictionary VR"
        return HeaderResult(
            FAILED,
            size,
            error_type="InvalidPatientID",
            message=f"the PatientID (0010,0020) stored as {vr_text} cannot be read as text; every manifest row needs a patient",
        )
    if at is not None and values[at] in (None, ""):
        fallback = _FALLBACKS.get(missing_patient)
        if fallback is None:
            return HeaderResult(
                FAILED,
                size,
                error_type="MissingPatientID",
                message="the file has no PatientID (0010,0020); every manifest row needs a patient "
                "(--missing-patient study|series groups such files by study or series)",
            )
        col, source = fallback
        item = found.get(col.tag)
        uid = convert_value(col, item[1], None, little, None) if item else None
        if uid is None or uid is INVALID:
            return HeaderResult(
                FAILED,
                size,
                error_type="MissingPatientID",
                message=f"the file has neither a PatientID (0010,0020) nor a readable {source} to stand in for it",
            )
        values = values[:at] + (f"{missing_patient}:{uid}",) + values[at + 1 :]
    return HeaderResult(OK, size, values=values, invalid=invalid, lenient=lenient, has_pixels=has_pixels, patient_source=source)


def _read_with_pydicom(
    path: str, columns: Sequence[TagColumn], size: int, *, lenient: bool, missing_patient: str = "error"
) -> HeaderResult:
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
        for tag in [c.tag for c in columns] + [*_ALWAYS_TAGS, _MEDIA_CLASS_TAG]:
            source = meta if (tag >> 16) == 0x0002 and meta is not None else ds
            if tag in found or tag not in source:
                continue
            elem = source.get_item(tag)
            if isinstance(elem, RawDataElement):
                if elem.value is None:
                    continue
                found[tag] = (elem.VR, bytes(elem.value))
            else:
                found[tag] = (elem.VR, _python_value_bytes(elem.VR, elem.value, little))
        pixel_tags = [t for t in _PIXEL_TAGS if t in ds]
        # Offsets in a deflated data set count inflated bytes: they say nothing of the file's size.
        deflated = meta is not None and str(meta.get("TransferSyntaxUID", "")) in _DEFLATED
        for t in [] if deflated else pixel_tags:
            # keep_deferred: the element as read (value on disk, offset and length known), not its value.
            elem = ds.get_item(t, keep_deferred=True)
            tell, length = getattr(elem, "value_tell", None), getattr(elem, "length", None)
            if tell is not None and length not in (None, _UNDEFINED) and tell + length > size:
                return HeaderResult(
                    FAILED, size, error_type="TruncatedFile",
                    message=f"pixel data needs {length} bytes at offset {tell} but the file ends at {size}",
                )
        if not pixel_tags:
            truncated = _missing_pixels(found, size)
            if truncated is not None:
                return truncated
        if not any(t in found for t in _IDENTITY_TAGS):
            if lenient:
                return HeaderResult(SKIPPED, size, error_type="NotDicom", message="read leniently but holds no patient, study or instance attributes")
            return HeaderResult(FAILED, size, error_type="Unreadable", message="has the DICM marker but no readable patient, study or instance attributes")
        values, invalid = _values_from_raw(columns, found, little)
        return _finish(
            columns, size, values, invalid, found, little, lenient=lenient, has_pixels=bool(pixel_tags), missing_patient=missing_patient
        )
    except Exception as exc:  # noqa: BLE001
        return HeaderResult(FAILED, size, error_type=type(exc).__name__, message=str(exc) or repr(exc))


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
