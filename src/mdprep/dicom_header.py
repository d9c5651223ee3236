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
import warnings
import zlib
from dataclasses import dataclass, replace
from typing import Any, BinaryIO, Callable, Sequence

import pyarrow as pa

from .choices import MISSING_PATIENT_POLICIES  # noqa: F401 - defined there (for the help), importable here by name
from .errors import UsageError, cut_text, short_repr
from .fileio import open_nonblocking, special_file_kind

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
# One item of a comma-separated tag list: a GGGG,EEEE pair (its comma is not a separator; a pair with
# the wrong number of digits, such as 0010,103, stays one item, to be refused whole), or anything up to a comma.
_TAG_ITEM = re.compile(r"\s*(\(?\s*[0-9][0-9A-Fa-f]{0,7}\s*,\s*[0-9A-Fa-f]{1,8}\s*\)?(?=\s*(?:,|\Z))|[^,]*?)\s*(?:,|\Z)")
# Something written as a tag (hex digits, a comma, parentheses), not as a keyword.
_TAG_LIKE = re.compile(r"^\(?[\s0-9A-Fa-f]*[0-9][\s0-9A-Fa-f]*(,[\s0-9A-Fa-f]*)?\)?$")


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
        if tag is None and _TAG_LIKE.match(text):
            raise UsageError(
                f"malformed tag {spec!r}: expected GGGG,EEEE with 4 hex digits each (for example 0010,1030), "
                "(GGGG,EEEE) or GGGGEEEE, or a keyword such as PatientWeight",
                tag=spec,
            )
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


def header_columns(extra: Sequence[str] = (), reserved: Sequence[str] = ()) -> list[TagColumn]:
    """The preset columns followed by any ``extra`` tags (duplicates removed).

    Parameters
    ----------
    extra : sequence of str
        Keywords or tags to read besides the preset.
    reserved : sequence of str
        Column names the caller fills itself (``image_id``, ``path``, ...): an extra
        tag whose column would have one of these names is refused.

    Raises
    ------
    UsageError
        For an unknown or malformed tag, a tag that cannot be a column, or one whose
        column name is taken.

    Examples
    --------
    >>> [c.column for c in header_columns(["KVP"])][-1]
    'kvp'
    >>> header_columns(["ImageID"], reserved=["image_id"])
    Traceback (most recent call last):
    ...
    mdprep.errors.UsageError: tag 'ImageID' would create column 'image_id', which the manifest reserves for its own values; this attribute cannot be read with --tags
    """
    cols = [tag_column(keyword, column) for column, keyword in PRESET_TAGS.items()]
    seen_tags = {c.tag for c in cols}
    seen_names = {c.column for c in cols}
    reserved_names = set(reserved) - seen_names
    for spec in extra:
        col = tag_column(spec)
        if col.tag in seen_tags:
            continue
        if col.column in reserved_names:
            raise UsageError(
                f"tag {spec!r} would create column {col.column!r}, which the manifest reserves for its own values; "
                "this attribute cannot be read with --tags",
                tag=spec,
                column=col.column,
            )
        if col.column in seen_names:
            raise UsageError(f"tag {spec!r} would create column {col.column!r}, which already exists", tag=spec, column=col.column)
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


#: C0 control characters; none belongs in a text value except those :func:`_is_text` allows.
_C0 = re.compile("[\x00-\x1f]")
#: Control characters DICOM allows in the free-text VRs (PS3.5 6.1.3).
_FREE_TEXT_CONTROLS = frozenset("\t\n\f\r")
_ESC = "\x1b"


def _is_text(text: str, vr: str, iso2022: bool) -> bool:
    """True when ``text`` holds no control character its VR does not allow.

    LT, ST and UT may hold TAB, LF, FF and CR; ESC is allowed in the VRs the
    character set applies to when the file declares ISO 2022 code extensions. Any
    other C0 control character (binary data read as text: a US value in an implicit
    VR file, a NUL inside a value) makes the value not text.
    """
    if text.isprintable():
        return True
    allowed = _FREE_TEXT_CONTROLS if vr in _SINGLE_VALUE_TEXT and vr != "UR" else frozenset()
    if iso2022 and vr in _CHARSET_VRS:
        allowed = allowed | {_ESC}
    return all(c in allowed for c in _C0.findall(text))


def convert_value(
    col: TagColumn, raw: bytes | str, vr: str | None, little: bool, encodings: tuple[str, ...] | None, iso2022: bool = False
) -> Any:
    """Typed Python value of one raw element value, ``None`` when empty, :data:`INVALID` when malformed.

    ``vr`` is the VR the file stores the element with (``None`` in implicit VR files,
    where the dictionary's VR applies). ``raw`` is the value's bytes, or its text
    where pydicom already decoded it. The result always fits ``col.arrow_type``:
    a value stored with a VR of another kind than the dictionary's (``Rows`` as LO,
    ``StudyDate`` as US, ``PatientID`` as US or as a sequence), a number out of the
    range of the attribute's VR (``Columns`` as DS ``1e30``), a non-finite number, or
    text holding control characters its VR does not allow (binary data read as text
    in an implicit VR file) is INVALID. ``iso2022`` says the file declares ISO 2022
    code extensions (ESC is then part of text).

    Examples
    --------
    >>> rows = tag_column("Rows")
    >>> convert_value(rows, b"512 ", "IS", True, None), convert_value(rows, b"abc", "LO", True, None) is INVALID
    (512, True)
    >>> convert_value(tag_column("StudyDate"), b"\\x01\\x00", "US", True, None) is INVALID
    True
    >>> convert_value(tag_column("PatientID"), b"\\x07\\x00", None, True, None) is INVALID  # US 7 in implicit VR
    True
    >>> convert_value(tag_column("PatientName"), b"Wang^XiaoDong=", "PN", True, None)
    'Wang^XiaoDong'
    """
    if vr is None or vr == "UN":
        vr = col.vr
    elif len(vr) != 2:
        vr = vr[:2]  # pydicom's "US or SS" for an ambiguous implicit element
    if vr == "SQ":
        return INVALID  # a sequence where a value belongs, even an empty one
    if not raw:
        return None
    target = col.vr
    if vr not in _ACCEPTED_VRS.get(target, ()):
        return INVALID
    if vr in _STRING_VRS and type(raw) is bytes:  # the common case first
        if encodings is None or vr not in _CHARSET_VRS:
            text = raw.decode("latin-1")
        else:
            try:
                text = _decode_text(raw, vr, encodings)
            except (ValueError, LookupError):
                return INVALID
    elif isinstance(raw, str):
        text = raw
    else:
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
    if target in _TEXT_VRS:
        # Trailing spaces and NULs pad a value; leading spaces are not significant.
        text = text.rstrip(" \x00").lstrip(" ")
        if not text.isprintable() and not _is_text(text, vr, iso2022):
            return INVALID
        if not col.multi:
            # Keep a single text value whole (a stray backslash is data, not a separator).
            if target == "PN" and text.endswith("="):
                text = _person_name(text)
            return text or None
    parts = [text] if vr in _SINGLE_VALUE_TEXT else text.split("\\")
    values = [_parse_one(p, target) for p in parts]
    if target == "PN":
        values = [_person_name(v) or None if isinstance(v, str) else v for v in values]
    if col.multi:
        if all(v is None for v in values):
            return None
        if any(v is INVALID for v in values):
            return INVALID
        return values
    if len(values) != 1:
        return INVALID
    return values[0]


def _person_name(text: str) -> str:
    """A person name without trailing empty component groups (``A^B=`` is ``A^B``), as pydicom writes it."""
    return text.rstrip("=").rstrip(" ") if text.endswith("=") else text


def _charset(raw: bytes | str | None) -> tuple[tuple[str, ...] | None, bool]:
    """Python codecs of a SpecificCharacterSet value (None for the default repertoire), and whether it uses ISO 2022.

    An unknown term makes pydicom warn and fall back on the default; the warning is
    given again for every file that names it, to become that file's note (see
    :func:`read_header`).
    """
    encodings, iso2022, warned = _charset_cached(raw)
    for message in warned:
        warnings.warn(message, UserWarning, stacklevel=2)
    return encodings, iso2022


@functools.lru_cache(maxsize=256)  # a tree has few distinct character sets; pydicom's lookup is not free
def _charset_cached(raw: bytes | str | None) -> tuple[tuple[str, ...] | None, bool, tuple[str, ...]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        encodings, iso2022 = _charset_uncached(raw)
    return encodings, iso2022, tuple(str(w.message) for w in caught)


def _charset_uncached(raw: bytes | str | None) -> tuple[tuple[str, ...] | None, bool]:
    if not raw:
        return None, False
    text = raw if isinstance(raw, str) else raw.decode("latin-1")
    names = [p.strip(" \x00") for p in text.split("\\")]
    names = [n for n in names if n] or ["ISO_IR 6"]
    iso2022 = any(n.startswith("ISO 2022") for n in names)
    if names in (["ISO_IR 6"], ["ISO 2022 IR 6"]):
        return None, iso2022
    if names == ["ISO_IR 100"]:
        return ("latin_1",), False
    if names == ["ISO_IR 192"]:
        return ("iso_ir_192",), False
    from pydicom.charset import convert_encodings

    return tuple(convert_encodings(names)), iso2022


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
    notes: tuple[str, ...] = ()  # what pydicom or Python warned about while reading the file, one line per kind


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


class _NoMeta(_Unsupported):
    """The DICM marker is not followed by a file meta group: perhaps not DICOM at all, so no sign of a cut."""


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
            if end > file_size:
                raise _Truncated(f"the file ends at byte {file_size}, inside its file meta information")
            raise _NeedMore
        if tag in wanted or tag in (_TS_TAG, _MEDIA_CLASS_TAG):
            found[tag] = (vr, buf[start:end])
        pos = end
    if pos + 8 > n:
        if n < file_size:
            raise _NeedMore
        if pos < n:
            where = "inside its file meta information"
        else:
            where = "right after the DICM marker" if pos == 132 else "after its file meta information, with no data set"
        raise _Truncated(f"the file ends at byte {file_size}, {where}")
    ts_raw = found.get(_TS_TAG)
    if ts_raw is None:
        raise _NoMeta("no transfer syntax in the file meta information")
    ts = ts_raw[1].decode("ascii", "replace").strip(" \x00")
    if ts == _BIG_ENDIAN or ts in _DEFLATED:
        raise _Unsupported(f"transfer syntax {ts}")
    implicit = ts == _IMPLICIT_LE
    if implicit and _explicit_vr_header(buf, pos):
        # A known fault: the meta says implicit VR but the data set is written in explicit VR.
        # pydicom notices and reads it as it is (its warning becomes the file's note).
        raise _Unsupported("an explicit VR data set under an implicit VR transfer syntax")
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
            if tag in wanted:  # a sequence where a value belongs (PatientID as SQ): not a value
                found[tag] = (b"SQ", b"")
            pos = _skip_undefined(buf, start, implicit or vr == b"UN")
            continue
        end = start + length
        if end > file_size:
            raise _Truncated(f"element ({g:04X},{e:04X}) needs {length} bytes at offset {start} but the file ends at {file_size}")
        if tag in wanted:
            if end > n:
                raise _NeedMore
            found[tag] = (vr, buf[start:end])
        pos = end


def _explicit_vr_header(buf: bytes, pos: int) -> bool:
    """True when the element at ``pos`` has an explicit VR header: a VR at bytes 4-5 that the dictionary gives its tag."""
    vr = buf[pos + 4 : pos + 6]
    if len(vr) < 2 or vr not in _KNOWN_VRS:
        return False
    from pydicom.datadict import dictionary_VR

    g, e = struct.unpack_from("<HH", buf, pos)
    try:
        expected = dictionary_VR((g << 16) | e)
    except KeyError:  # a private or unknown tag: a valid VR there is evidence enough
        return True
    return vr.decode("ascii") in expected.split(" or ")


def _values_from_raw(columns: Sequence[TagColumn], found: dict, little: bool) -> tuple[tuple, tuple[int, ...]]:
    charset = found.get(_CHARSET_TAG)
    encodings, iso2022 = _charset(charset[1]) if charset else (None, False)
    values = []
    invalid = []
    for i, col in enumerate(columns):
        item = found.get(col.tag)
        if item is None:
            values.append(None)
            continue
        vr, raw = item
        vr_text = vr.decode("ascii") if isinstance(vr, bytes) else vr
        value = convert_value(col, raw, vr_text, little, encodings, iso2022)
        if value is INVALID:
            invalid.append(i)
            value = None
        values.append(value)
    return tuple(values), tuple(invalid)


def _whole_first_element(head: bytes, size: int) -> bool:
    """True when the first element of a file without preamble lies whole within the file (evidence it is DICOM)."""
    if len(head) < 8:
        return False
    vr = head[4:6]
    if vr in _KNOWN_VRS:  # explicit VR little endian
        if vr in _LONG_VRS:
            return len(head) >= 12 and 12 + _U32.unpack_from(head, 8)[0] <= size
        return 8 + (head[6] | (head[7] << 8)) <= size
    return 8 + _U32.unpack_from(head, 4)[0] <= size


def _looks_like_raw_dataset(head: bytes) -> bool:
    """True when a file without preamble starts like a little-endian dataset (group 0002/0008)."""
    if len(head) < 8:
        return False
    group = head[0] | (head[1] << 8)
    return group in (0x0002, 0x0008)


# ----------------------------------------------------------------------------- policies

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
    if not item:
        return ""
    raw = item[1]
    return (raw if isinstance(raw, str) else raw.decode("ascii", "replace")).strip(" \x00")


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
        return HeaderResult(SKIPPED, 0, error_type="Folder", message="a folder, not a file; not read (list the files in it)")
    kind = special_file_kind(mode)
    return HeaderResult(SKIPPED, 0, error_type=kind, message=f"not a regular file ({kind}); not read")


def _os_error(exc: OSError, size: int) -> HeaderResult:
    """The failed result of an OS error, worded without file descriptors or absolute paths."""
    return HeaderResult(FAILED, size, error_type=type(exc).__name__, message=f"cannot read the file: {exc.strerror or exc}")


#: pydicom and Python warnings -> the note that counts them (one note per kind, files counted per note).
_WARNING_KINDS: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"Unknown encoding '(.*?)'"), "unknown character set {0!r}; its text was decoded as ASCII/Latin-1"),
    (re.compile(r"Incorrect value for Specific Character Set '(.*?)'"), "malformed character set {0!r}; read as the nearest known one"),
    (re.compile(r"Expected (explicit|implicit) VR, but found (explicit|implicit) VR"), "the data set is in {1} VR although its transfer syntax says {0} VR; read as {1} VR"),
    (re.compile(r"VR lookup failed"), "private or unknown attributes whose VR could not be looked up; read as UN"),
    (re.compile(r"exceeds the maximum length of \d+ allowed for VR (\w\w)"), "{0} values longer than the standard allows; read whole"),
    (re.compile(r"Invalid value for VR (\w\w)"), "{0} values that break the standard's character rules; read as stored"),
    (re.compile(r"[Ff]ailed to decode|cannot be decoded|invalid continuation|can't decode"), "text that is not valid in its character set; undecodable bytes replaced"),
)


def _warning_note(message: str) -> str:
    """One warning's kind, as the note reported for it."""
    for pattern, note in _WARNING_KINDS:
        m = pattern.search(message)
        if m:
            return note.format(*m.groups())
    # Unknown warnings keep their text, with numbers and tags masked so files of one kind count together.
    text = re.sub(r"\(\s*[0-9A-Fa-f]{4}\s*,\s*[0-9A-Fa-f]{4}\s*\)|\b\d+\b", "#", message.splitlines()[0] if message else "")
    return "pydicom warned: " + (text if len(text) <= 120 else text[:119] + "…")


def read_header(path: str, columns: Sequence[TagColumn], missing_patient: str = "error") -> HeaderResult:
    """Read the wanted attributes of one file; never raises for a bad file.

    Warnings pydicom (or Python) gives while reading are caught and returned as the
    result's ``notes``, one per kind, so that the caller reports them per file
    instead of letting them reach stderr unattributed.

    Parameters
    ----------
    path : str
        The file. FIFOs, sockets, devices and folders are skipped without being read.
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
    return read_headers([path], columns, missing_patient)[0]


def read_headers(
    paths: Sequence[str],
    columns: Sequence[TagColumn],
    missing_patient: str = "error",
    *,
    opener: Callable[[str], tuple[BinaryIO, int]] | None = None,
    first_read: int = _READ_SIZE,
) -> list[HeaderResult]:
    """:func:`read_header` for several files, with one warnings catcher for all (cheaper than one per file).

    ``opener`` (``path -> (binary file, size)``, raising OSError) opens files that
    are not local, such as objects read with ranged requests
    (:func:`mdprep.storage.opener`); by default paths are local files. The reader
    first reads ``first_read`` bytes and reads more only when the header goes on;
    the result does not depend on it, only the bytes read do.
    """
    results = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for path in paths:
            seen = len(caught)
            try:
                result = _read_header(path, columns, missing_patient, opener, first_read)
            except Exception as exc:  # noqa: BLE001 - a reader bug on one odd file is that file's error row
                result = HeaderResult(FAILED, 0, error_type=type(exc).__name__, message=str(exc) or repr(exc))
            if len(caught) > seen:
                result = replace(result, notes=tuple(sorted({_warning_note(str(w.message)) for w in caught[seen:]})))
                del caught[seen:]
            results.append(result)
    return results


def _open_local(path: str) -> tuple[BinaryIO, int] | HeaderResult:
    """The open file and its size, or the skipped result of a folder or special file (never read)."""
    fd, st = open_nonblocking(path)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return _special(st.st_mode)
    return open(fd, "rb", buffering=0), st.st_size


def _read_header(
    path: str, columns: Sequence[TagColumn], missing_patient: str, opener: Callable[[str], tuple[BinaryIO, int]] | None = None, first_read: int = _READ_SIZE
) -> HeaderResult:
    wanted = {c.tag: i for i, c in enumerate(columns)}
    for tag in _ALWAYS_TAGS:
        wanted.setdefault(tag, -1)
    size = 0
    try:
        opened = _open_local(path) if opener is None else opener(path)
        if isinstance(opened, HeaderResult):
            return opened
        fh, size = opened
        with fh:
            buf = fh.read(first_read)
            if len(buf) >= 132 and buf[128:132] == b"DICM":
                read_size = first_read
                while True:
                    try:
                        found, little, has_pixels = _lean_parse(buf, size, wanted)
                        break
                    except _NeedMore:
                        if len(buf) >= size:
                            raise _Truncated(f"the file ends at byte {size}, inside a data element") from None
                        read_size *= 8
                        fh.seek(0)
                        buf = fh.read(read_size)
            elif _looks_like_raw_dataset(buf):
                whole = _whole_first_element(buf, size)
                return _read_with_pydicom(path, columns, size, lenient=True, missing_patient=missing_patient, evidence=whole, opener=opener)
            else:
                return HeaderResult(SKIPPED, size, error_type="NotDicom", message="no DICOM preamble and no DICOM data elements")
    except _Unsupported as exc:
        return _read_with_pydicom(
            path, columns, size, lenient=False, missing_patient=missing_patient, evidence=not isinstance(exc, _NoMeta), opener=opener
        )
    except _Truncated as exc:
        return HeaderResult(FAILED, size, error_type="TruncatedFile", message=str(exc))
    except OSError as exc:
        return _os_error(exc, size)
    if _uid_text(found, _MEDIA_CLASS_TAG) == _DICOMDIR_CLASS:
        return HeaderResult(SKIPPED, size, error_type="DicomDir", message="a DICOMDIR index, not an image")
    if not has_pixels:
        truncated = _missing_pixels(found, size)
        if truncated is not None:
            return truncated
    values, invalid = _values_from_raw(columns, found, little)
    return _finish(columns, size, values, invalid, found, little, lenient=False, has_pixels=has_pixels, missing_patient=missing_patient)


def _vr_text(vr: Any) -> str | None:
    return vr.decode("ascii", "replace") if isinstance(vr, bytes) else vr


def _not_text_reason(item: tuple) -> str:
    """Why a value stored as ``item`` (vr, raw) cannot be read as text, for a message."""
    vr, raw = _vr_text(item[0]), item[1]
    if vr == "SQ" or (vr is None and isinstance(raw, bytes) and raw[:4] == b"\xfe\xff\x00\xe0"):
        return "is stored as a sequence (SQ), not as text"
    if vr is None or vr in _STRING_VRS or vr == "UN":
        text = raw if isinstance(raw, str) else raw.decode("latin-1")
        return f"holds control characters, not text ({short_repr(text.rstrip(' '))})"
    return f"is stored as {vr}, which cannot be read as text"


def _finish(columns, size, values, invalid, found, little, *, lenient, has_pixels, missing_patient) -> HeaderResult:
    """The OK result, unless the file has no readable patient (and no fallback for it)."""
    at = next((i for i, c in enumerate(columns) if c.tag == _PATIENT_TAG), None)
    source = "PatientID"
    if at is not None and at in invalid:
        return HeaderResult(
            FAILED,
            size,
            error_type="InvalidPatientID",
            message=f"the PatientID (0010,0020) {_not_text_reason(found[_PATIENT_TAG])}; every manifest row needs a patient",
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
        if item is None:
            return HeaderResult(
                FAILED,
                size,
                error_type="MissingPatientID",
                message=f"the file has neither a PatientID (0010,0020) nor a {source} to stand in for it",
            )
        uid = convert_value(col, item[1], _vr_text(item[0]), little, None)
        if uid is None or uid is INVALID:
            why = "is empty" if uid is None else _not_text_reason(item)
            return HeaderResult(
                FAILED,
                size,
                error_type="MissingPatientID",
                message=f"the file has no PatientID (0010,0020) and no readable {source} to stand in for it (its {source} {why})",
            )
        values = values[:at] + (f"{missing_patient}:{uid}",) + values[at + 1 :]
    return HeaderResult(OK, size, values=values, invalid=invalid, lenient=lenient, has_pixels=has_pixels, patient_source=source)


def _deflated_file(path: str, opener: Callable[[str], tuple[BinaryIO, int]] | None = None) -> bool:
    """True when the file meta of ``path`` names a deflated transfer syntax (offsets then count inflated bytes)."""
    try:
        with open(path, "rb") if opener is None else opener(path)[0] as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return any(uid.encode() in head for uid in _DEFLATED)


def _truncated(size: int, message: str) -> HeaderResult:
    return HeaderResult(FAILED, size, error_type="TruncatedFile", message=message)


def _read_with_pydicom(
    path: str,
    columns: Sequence[TagColumn],
    size: int,
    *,
    lenient: bool,
    missing_patient: str = "error",
    evidence: bool = True,
    opener: Callable[[str], tuple[BinaryIO, int]] | None = None,
) -> HeaderResult:
    """Read one file with pydicom; ``lenient`` for a file without preamble.

    A file pydicom cannot read to its end, or whose last value runs past it, is
    ``TruncatedFile`` when there is ``evidence`` that it is DICOM: its file meta group,
    or (read leniently) a first element that lies whole within the file. Without it
    (the DICM marker followed by random bytes) it is ``Unreadable``, not a file cut short.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        fh = open(path, "rb") if opener is None else opener(path)[0]
    except OSError as exc:
        return _os_error(exc, size)
    with fh:
        try:
            # defer_size keeps large values (pixel data) on disk but records where they are.
            ds = pydicom.dcmread(fh, defer_size=1024, force=lenient)
        except InvalidDicomError as exc:
            return HeaderResult(SKIPPED, size, error_type="NotDicom", message=str(exc))
        except Exception as exc:  # noqa: BLE001 - any reader failure is this file's error row
            text = cut_text(str(exc) or repr(exc))
            deflated = _deflated_file(path, opener)
            if evidence and (isinstance(exc, zlib.error) or (not deflated and fh.tell() >= size)):
                # pydicom ran out of bytes: "No tag to read at file position ...", a short struct unpack, ...
                if isinstance(exc, zlib.error) and ("incomplete" in text or "truncated" in text):
                    return _truncated(size, f"the file ends at byte {size}, inside its deflated data set (zlib: {text})")
                if not deflated:
                    return _truncated(size, f"the file ends at byte {size}, inside a data element (pydicom: {text})")
            return HeaderResult(FAILED, size, error_type=type(exc).__name__, message=text)
        try:
            return _from_dataset(ds, columns, size, lenient=lenient, missing_patient=missing_patient, evidence=evidence)
        except Exception as exc:  # noqa: BLE001
            return HeaderResult(FAILED, size, error_type=type(exc).__name__, message=cut_text(str(exc) or repr(exc)))


def _from_dataset(ds: Any, columns: Sequence[TagColumn], size: int, *, lenient: bool, missing_patient: str, evidence: bool = True) -> HeaderResult:
    """The result of a data set pydicom read (values deferred), checked against the file's size."""
    from pydicom.dataelem import RawDataElement

    meta = getattr(ds, "file_meta", None)
    if meta is not None and str(meta.get("MediaStorageSOPClassUID", "")) == _DICOMDIR_CLASS:
        return HeaderResult(SKIPPED, size, error_type="DicomDir", message="a DICOMDIR index, not an image")
    # Offsets in a deflated data set count inflated bytes: they say nothing of the file's size.
    deflated = meta is not None and str(meta.get("TransferSyntaxUID", "")) in _DEFLATED
    if evidence and not deflated:
        # A value cut short: pydicom reads what is there (or defers it) without complaint.
        complete, end = 0, None
        for tag in sorted(ds.keys()):
            elem = ds.get_item(tag, keep_deferred=True)  # as read: a deferred value (pixel data) stays on disk
            tell, length = getattr(elem, "value_tell", None), getattr(elem, "length", None)
            if tell is None or length in (None, _UNDEFINED):
                end = None
                continue
            end = tell + length
            if end <= size:
                complete += 1
                continue
            if lenient and not complete:
                break  # not one whole element: not evidence enough of a DICOM file
            what = "pixel data" if elem.tag in _PIXEL_TAGS else f"element ({elem.tag >> 16:04X},{elem.tag & 0xFFFF:04X})"
            return _truncated(size, f"{what} needs {length} bytes at offset {tell} but the file ends at {size}")
        else:
            if end is not None and 0 < size - end < 8 and complete:
                # pydicom stops without a word at an element header cut short.
                return _truncated(size, f"the file ends at byte {size}, inside the header of the element at offset {end}")
    little = getattr(ds, "is_little_endian", None) is not False
    found: dict[int, tuple[Any, bytes | str]] = {}
    for tag in [c.tag for c in columns] + [*_ALWAYS_TAGS, _MEDIA_CLASS_TAG]:
        source = meta if (tag >> 16) == 0x0002 and meta is not None else ds
        if tag in found or tag not in source:
            continue
        elem = source.get_item(tag, keep_deferred=True)
        if elem.VR == "SQ":
            found[tag] = ("SQ", b"")
        elif isinstance(elem, RawDataElement):
            raw = elem.value
            if raw is None and elem.length:
                raw = _deferred_value(ds, elem)
            found[tag] = (elem.VR, bytes(raw or b""))
        else:
            found[tag] = (elem.VR, _python_value(elem.VR, elem.value, little))
    pixel_tags = [t for t in _PIXEL_TAGS if t in ds]
    if not pixel_tags:
        truncated = _missing_pixels(found, size)
        if truncated is not None:
            return truncated
    if not any(t in found for t in _IDENTITY_TAGS):
        if lenient:
            return HeaderResult(SKIPPED, size, error_type="NotDicom", message="read leniently but holds no patient, study or instance attributes")
        return HeaderResult(FAILED, size, error_type="Unreadable", message="has the DICM marker but no readable patient, study or instance attributes")
    values, invalid = _values_from_raw(columns, found, little)
    return _finish(columns, size, values, invalid, found, little, lenient=lenient, has_pixels=bool(pixel_tags), missing_patient=missing_patient)


def _deferred_value(ds: Any, elem: Any) -> bytes:
    """The raw bytes of a value pydicom deferred, read from where pydicom read the data set (never converted)."""
    from pydicom.filereader import read_deferred_data_element

    src = ds.filename or ds.buffer
    if ds.filename and ds.buffer is not None and not getattr(ds.buffer, "closed", False):
        src = ds.buffer
    return read_deferred_data_element(ds.fileobj_type, src, ds.timestamp, elem).value


def _python_value(vr: str, value: Any, little: bool) -> bytes | str:
    """The raw form of an element pydicom already converted (file meta, mostly).

    Bytes stay bytes (UN and other binary values); numbers of a binary VR are packed
    back; text stays text, already decoded (never the repr of another type).
    """
    from pydicom.multival import MultiValue

    vr = vr[:2]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    vals = list(value) if isinstance(value, (list, MultiValue)) else [value]
    if vr in _BINARY_INT or vr in _BINARY_FLOAT:
        code = _BINARY_INT.get(vr) or _BINARY_FLOAT[vr]
        return struct.pack(("<" if little else ">") + code * len(vals), *vals)
    if vr == "AT":  # tags as (group, element) pairs, as the file stores them
        return b"".join(struct.pack(("<" if little else ">") + "HH", int(t) >> 16, int(t) & 0xFFFF) for t in vals)
    if isinstance(value, (list, MultiValue)):
        return "\\".join(str(v) for v in value)
    return "" if value is None else str(value)
