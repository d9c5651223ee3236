"""Reading table files - CSV/TSV, compressed, zip, Parquet - into Arrow.

:func:`read_table` is the one entry point. It reads what :func:`pandas.read_csv`
reads from real dataset tables, without the dtype guessing that turns ``001``
into ``1``:

* **The format comes from the file's bytes, not its name.** The first bytes are
  compared with the magic numbers of gzip, bz2, xz, zstd, zip and Parquet
  (``PAR1``); anything else is text. A gzip file named ``.csv`` is read as gzip.
* **Zip archives** must hold one table, or the member must be named:
  ``labels.zip::train/labels.csv`` (or ``member=`` in Python). Folders,
  ``__MACOSX/`` entries and ``.DS_Store`` files do not count as members.
* **Text tables** are parsed by pyarrow with quoted newlines allowed anywhere.
  The header is read first with :mod:`csv` from the decoded text, so it may be
  any width and its quoted cells may hold the delimiter or a newline. Bracketed
  names that the delimiter split are joined back (see :func:`_split_header`).
  Only an empty field is null.
* **Identifier columns are text** from the first byte read: the columns the caller
  names in ``string_columns`` and every column that :func:`is_identifier_column`
  recognises, in CSV and Parquet alike.

Files are streamed: compressed data is decompressed on the fly into pyarrow, never
held as one Python string. The path ``-`` is standard input, copied once to a
private temporary file (:func:`mdprep.fileio.stdin_file`).
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import csv
import io
import itertools
import lzma
import os
import re
import zipfile
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..errors import EmptyInputError, EncodingError, InputError, UsageError, cut_text, examples_text, short_repr
from ..fileio import MEMBER_SEP, STDIO, split_member, stdin_file

#: Bytes pyarrow parses at a time. A row, and the header, must fit in one block; the
#: block grows (up to :data:`_MAX_BLOCK_SIZE`) when one does not.
BLOCK_SIZE = 1 << 22
_MAX_BLOCK_SIZE = 1 << 28
#: Bytes decoded at a time when looking for the first line that is not valid text.
_DECODE_CHUNK = 1 << 20
#: (magic bytes, compression) pairs; bz2 also checks its block or end-of-stream magic.
_COMPRESSION_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)
_BZ2_MAGIC = re.compile(rb"BZh[1-9](1AY&SY|\x17rE8P\x90)", re.DOTALL)
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_PARQUET_MAGIC = b"PAR1"
_PARQUET_SUFFIXES = (".parquet", ".pq")
#: Errors of reading and decompressing bytes (not of parsing them).
_READ_ERRORS = (OSError, EOFError, lzma.LZMAError, zipfile.BadZipFile, RuntimeError, NotImplementedError)
#: Bytes looked at to tell text from binary data.
_SNIFF_SIZE = 1024
#: (magic bytes, what they are) of files that are sometimes given in place of a table.
_BINARY_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"PK\x03\x04", "a zip archive inside the archive or compressed file"),
    (b"%PDF", "a PDF document"),
    (b"PAR1", "a Parquet file inside compression (Parquet is read as it is, or from a zip archive)"),
)
#: Byte-order marks of the encodings wider than one byte, longest first.
_WIDE_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)

# ----------------------------------------------------------------------------- identifiers

#: Whole names (lower case, letters and digits only) that hold identifiers.
_ID_NAMES = frozenset(
    "path file filename filepath fname image img imagename imagefile imagepath imgpath imageindex "
    "dicom dicomid dicomfile dicompath mrn".split()
)
#: Endings of run-together names (``patientid``, ``seriesinstanceuid``).
_ID_ENDINGS = ("patientid", "studyid", "imageid", "seriesid", "subjectid", "dicomid", "instanceuid", "seriesuid", "studyuid", "sopuid")
#: The last word of a name that makes it an identifier (``Patient ID``, ``patientId``, ``SOPInstanceUID``).
_ID_WORDS = frozenset({"id", "ids", "uid", "uids"})
#: Words of a name: an upper-case run (``UID``, ``UIDs``), a capitalised or lower-case word, digits.
_WORD = re.compile(r"[A-Z]+s?(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def is_identifier_column(name: str) -> bool:
    """Whether a column holds identifiers, to be read as text whatever its values look like.

    A name is an identifier's when

    * its last word is ``id``, ``ids``, ``uid`` or ``uids``, words being split at
      non-alphanumerics and at case changes (``Patient ID``, ``patientId``,
      ``dicom_id``, ``StudyInstanceUID``, ``SOPInstanceUIDs``);
    * or, lower-cased with non-alphanumerics removed, it contains ``accession``,
      ends with a run-together id name (``patientid``, ``seriesinstanceuid``, ...)
      or is a file or image name (``path``, ``filename``, ``imageindex``,
      ``imagepath``, ``dicomid``, ...).

    Words rather than letters decide, so ``COVID``, ``Valid`` or ``Pleural Fluid``
    (which end in the letters ``id``) are not identifiers.

    >>> names = ["Image Index", "ImageID", "PatientID", "patientId", "StudyInstanceUID",
    ...          "SOPInstanceUID", "dicom_id", "subject_id", "Accession Number", "rad_id",
    ...          "class_id", "path", "Path", "file_name", "studyinstanceuid", "COVID",
    ...          "Valid", "Patient Age", "Pleural Fluid", "width", "Finding Labels"]
    >>> [n for n in names if not is_identifier_column(n)]
    ['COVID', 'Valid', 'Patient Age', 'Pleural Fluid', 'width', 'Finding Labels']
    """
    key = re.sub(r"[^0-9a-z]", "", name.lower())
    if key in _ID_NAMES or "accession" in key or key.endswith(_ID_ENDINGS):
        return True
    words = _WORD.findall(name)
    return bool(words) and words[-1].lower() in _ID_WORDS


# ----------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class _Source:
    """Where a table's bytes are and how they are packed."""

    label: str  # the path as the user gave it, for messages
    file: str  # the file on disk
    member: str | None  # the zip member, if any
    compression: str | None  # gzip, bz2, xz, zstd or None
    parquet: bool

    @property
    def name(self) -> str:
        """The table's own name (the member's for a zip), without compression suffixes."""
        return re.sub(r"(\.(gz|bz2|xz|zst|zstd|zip))+$", "", (self.member or self.file).lower())


def _compression(head: bytes) -> str | None:
    for magic, name in _COMPRESSION_MAGIC:
        if head.startswith(magic):
            return name
    return "bz2" if _BZ2_MAGIC.match(head) else None


def _zip_members(zf: zipfile.ZipFile) -> list[str]:
    return [
        i.filename
        for i in zf.infolist()
        if not i.is_dir() and not i.filename.startswith("__MACOSX/") and os.path.basename(i.filename) != ".DS_Store"
    ]


def _resolve(path: str | os.PathLike, member: str | None) -> _Source:
    """Find the file (and zip member) behind ``path`` and what its bytes are."""
    label = os.fspath(path)
    file, named = split_member(label)
    if file == STDIO:  # standard input, copied to a private file: the readers below need a path
        file = stdin_file()
    if named is not None:
        if member is not None and member != named:
            raise UsageError(f"{label} names member {named!r} and member={member!r} names another; give one", path=label)
        member = named
    if not os.path.isfile(file):
        raise InputError(f"table {file!r} does not exist; check the path", path=file)
    if os.path.getsize(file) == 0:
        raise EmptyInputError(f"{file} is empty; it needs a header line and at least one row", path=file)
    try:
        with open(file, "rb") as fh:
            head = fh.read(16)
        if not head.startswith(_ZIP_MAGIC):
            if member is not None:
                raise UsageError(
                    f"{file} is not a zip archive, so it has no member {member!r}; give the file's path without {MEMBER_SEP}{member}",
                    path=file,
                )
            compression = _compression(head)
            parquet = compression is None and head.startswith(_PARQUET_MAGIC)
            if not parquet and compression is None and file.lower().endswith(_PARQUET_SUFFIXES):
                raise InputError(f"{file} is not a Parquet file (it does not begin with PAR1); check the file", path=file)
            return _Source(label, file, None, compression, parquet)
        with zipfile.ZipFile(file) as zf:
            members = _zip_members(zf)
            if member is None:
                if not members:
                    raise EmptyInputError(f"{file} is a zip archive with no files in it", path=file)
                if len(members) > 1:
                    raise UsageError(
                        f"{file} holds {len(members)} files ({examples_text(members, len(members), limit=10)}); "
                        f"say which table to read as {file}{MEMBER_SEP}MEMBER, for example {file}{MEMBER_SEP}{members[0]}",
                        path=file,
                        members=members,
                    )
                member = members[0]
            elif member not in zf.namelist():
                raise InputError(
                    f"{file} has no member {member!r}; it holds {examples_text(members, len(members), limit=10)}",
                    path=file,
                    members=members,
                )
            with zf.open(member) as fh:
                head = fh.read(16)
    except _READ_ERRORS as exc:
        raise InputError(f"cannot read {label}: {exc}", path=label) from exc
    if not head:
        raise EmptyInputError(f"{label} is empty; it needs a header line and at least one row", path=label)
    compression = _compression(head)
    return _Source(label, file, member, compression, compression is None and head.startswith(_PARQUET_MAGIC))


@contextlib.contextmanager
def _open(src: _Source) -> Iterator[Any]:
    """The table's bytes, decompressed, as a binary stream that pyarrow and :mod:`io` read."""
    with contextlib.ExitStack() as stack:
        if src.member is None:
            raw = stack.enter_context(pa.OSFile(src.file))
        else:
            archive = stack.enter_context(zipfile.ZipFile(src.file))
            raw = stack.enter_context(archive.open(src.member))
        if src.compression == "xz":  # pyarrow has no xz codec
            yield stack.enter_context(lzma.open(raw))
        elif src.compression:
            yield stack.enter_context(pa.CompressedInputStream(raw, src.compression))
        else:
            yield raw


# ----------------------------------------------------------------------------- encoding errors


def _text_encoding(encoding: str) -> codecs.CodecInfo:
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        info = None
    if info is None or not getattr(info, "_is_text_encoding", True):
        raise UsageError(
            f"unknown text encoding {encoding!r}; give a Python codec name such as utf-8, latin-1, cp1252 or utf-16",
            encoding=encoding,
        )
    return info


def _head(src: _Source) -> bytes | None:
    """The first bytes of the (decompressed) table, or None when they cannot be read here."""
    try:
        with _open(src) as stream:
            return bytes(stream.read(_SNIFF_SIZE))
    except (pa.ArrowException, *_READ_ERRORS):
        return None  # reported by the reader with its context


def _utf16_without_bom(head: bytes) -> str | None:
    """``utf-16-le`` or ``utf-16-be`` when ``head`` looks like ASCII text in that encoding, else None."""
    even, odd = head[0::2], head[1::2]
    if len(head) < 4:
        return None
    if odd.count(0) >= 0.9 * len(odd) and not even.count(0):
        return "utf-16-le"
    if even.count(0) >= 0.9 * len(even) and not odd.count(0):
        return "utf-16-be"
    return None


def _check_text(src: _Source, info: codecs.CodecInfo) -> None:
    """Refuse binary data, and text in an encoding other than ``info``'s that its first bytes give away.

    Images, archives and other binary files given in place of a table are named
    (``it looks like a PNG image``) rather than reported as badly encoded text. A
    UTF-16/32 byte-order mark, or the NUL bytes of UTF-16 text without one, get the
    ``--encoding`` that reads them.
    """
    head = _head(src)
    if not head:
        return
    label = src.label
    wide = info.name.startswith(("utf-16", "utf-32"))
    for magic, what in _BINARY_MAGIC:
        if head.startswith(magic):
            raise InputError(f"{label} is not a text table (it looks like {what}); give the CSV, TSV or Parquet table", path=label, looks_like=what)
    if head[128:132] == b"DICM":
        what = "a DICOM file"
        raise InputError(
            f"{label} is not a text table (it looks like {what}); read DICOM files with `mdprep ingest dicom`", path=label, looks_like=what
        )
    compressed = _compression(head)
    if compressed:
        what = f"{compressed} data compressed twice"
        raise InputError(f"{label} is not a text table (it looks like {what}); decompress it once and give the result", path=label, looks_like=what)
    bom = next((name for mark, name in _WIDE_BOMS if head.startswith(mark)), None)
    if wide:
        if info.name in ("utf-16", "utf-32") and bom is None:
            guess = _utf16_without_bom(head) if info.name == "utf-16" else None
            hint = f"pass --encoding {guess}" if guess else f"pass --encoding {info.name}-le or {info.name}-be"
            raise EncodingError(
                f"{label} has no byte-order mark, so its {info.name} byte order is unknown; {hint}", path=label, line=1, encoding=info.name
            )
        return
    if bom is not None:
        raise EncodingError(
            f"{label} starts with a {bom.upper()} byte-order mark: it is {bom.upper()} text, not {info.name}; pass --encoding {bom}",
            path=label,
            line=1,
            encoding=info.name,
        )
    if b"\x00" in head:
        guess = _utf16_without_bom(head)
        if guess:
            raise EncodingError(
                f"{label} looks like UTF-16 text without a byte-order mark (every other byte is NUL); pass --encoding {guess}",
                path=label,
                line=1,
                encoding=info.name,
            )
        what = "binary data: it holds NUL bytes"
        raise InputError(f"{label} is not a text table (it looks like {what}); give the CSV, TSV or Parquet table", path=label, looks_like=what)


def _first_bad_line(src: _Source, encoding: str) -> tuple[int, str]:
    """The line number and what is wrong at the first byte not valid in ``encoding`` (0 if none).

    Lines are counted by ``\\n`` bytes; the file is decoded a chunk at a time.
    """
    decoder = codecs.getincrementaldecoder(encoding)()
    newlines = 0  # "\n" bytes in the chunks before this one
    tail = 0  # bytes after the last "\n" in the chunks before this one
    with _open(src) as stream:
        while True:
            chunk = stream.read(_DECODE_CHUNK)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeError as exc:
                if not isinstance(exc, UnicodeDecodeError):  # no position: the codec refused the stream
                    return 1 + newlines, str(exc)
                data = bytes(exc.object)
                carried = len(data) - len(chunk) if data.endswith(chunk) else 0  # held back from the last chunk
                before = data[: exc.start]
                line = 1 + newlines - data[:carried].count(b"\n") + before.count(b"\n")
                cut = before.rfind(b"\n")
                column = exc.start - cut if cut >= 0 else tail - carried + exc.start + 1
                return line, f"byte 0x{data[exc.start]:02x} at column {column}"
            if not chunk:
                return 0, ""
            n = chunk.count(b"\n")
            newlines += n
            tail = len(chunk) - chunk.rfind(b"\n") - 1 if n else tail + len(chunk)


def _encoding_error(src: _Source, encoding: str) -> EncodingError:
    """The first line not valid in ``encoding``, with advice that fits what the bytes look like.

    Binary data and UTF-16/32 text were refused before parsing (:func:`_check_text`),
    so bytes that are not UTF-8 here are 8-bit text: Latin-1 or cp1252 reads them.
    """
    try:
        line, what = _first_bad_line(src, encoding)
    except (pa.ArrowException, *_READ_ERRORS):
        line, what = 0, "the file could not be decoded"
    where = f"line {line}" if line else "somewhere"
    if codecs.lookup(encoding).name == "utf-8":
        advice = "convert the file to UTF-8 (for example `iconv -f latin1 -t utf-8`) or pass --encoding latin-1"
    else:
        advice = "check the file's encoding and pass it with --encoding (utf-8, latin-1, cp1252, utf-16, ...)"
    return EncodingError(
        f"{where} of {src.label} is not valid {encoding} ({what}); {advice}",
        path=src.label,
        line=line,
        encoding=encoding,
    )


# ----------------------------------------------------------------------------- reading


def read_table(
    path: str | os.PathLike,
    *,
    sep: str | None = None,
    string_columns: Sequence[str] = (),
    encoding: str = "utf-8",
    member: str | None = None,
    use_threads: bool = True,
) -> pa.Table:
    """Read a CSV, TSV or Parquet table, compressed or in a zip archive, into Arrow.

    Parameters
    ----------
    path : path
        The table. gzip, bz2, xz and zstd compression, zip archives and Parquet are
        recognised from the file's first bytes, whatever its name. A member of a zip
        archive that holds several files is named as ``archive.zip::member.csv``.
    sep : str, optional
        The delimiter of a text table (``\\t`` may be written as the two characters
        backslash and t). By default ``\\t`` for ``.tsv``/``.tab`` names, ``,`` for
        ``.csv``, otherwise whichever of the two the first line has more of.
    string_columns : sequence of str
        Columns read as text whatever they look like, besides those that
        :func:`is_identifier_column` recognises (identifiers such as ``00012`` keep
        their zeros; numeric Parquet identifier columns are cast to text).
    encoding : str
        The text encoding of a text table.
    member : str, optional
        The zip member to read, as an alternative to the ``::`` syntax.
    use_threads : bool
        Parse with pyarrow's thread pool. On an idle machine that is faster; on a busy
        one the threads wait for each other, and one thread needs a fifth less CPU
        (CheXpert's table: 0.10 s against 0.125 s).

    Returns
    -------
    pyarrow.Table
        One column per header name. Only an empty field is null. A column that the
        header does not name and that is empty in every row (a trailing delimiter)
        is dropped.

    Raises
    ------
    InputError
        The file does not exist or cannot be read or parsed; a row has a different
        number of fields than the header; duplicate column names.
    EmptyInputError
        An empty file or a header without rows.
    EncodingError
        Text that is not valid in ``encoding``, naming the first bad line.
    UsageError
        An unknown encoding; a zip archive with several tables and no member named.

    Examples
    --------
    >>> import gzip, os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "labels.csv")
    >>> with gzip.open(p, "wt") as fh:  # gzip, though the name says .csv
    ...     _ = fh.write('image_id,note,age\\n001.png,"two\\nlines",40\\n')
    >>> read_table(p).to_pylist()
    [{'image_id': '001.png', 'note': 'two\\nlines', 'age': 40}]
    """
    info = _text_encoding(encoding)
    src = _resolve(path, member)
    if src.parquet:
        table = _read_parquet(src, string_columns, use_threads)
    else:
        table = _read_csv(src, sep=sep, string_columns=string_columns, encoding=encoding, info=info, use_threads=use_threads)
    if table.num_rows == 0:
        raise EmptyInputError(f"{src.label} has a header but no data rows", path=src.label)
    return table


def is_parquet_table(path: str | os.PathLike, member: str | None = None) -> bool:
    """Whether :func:`read_table` reads ``path`` as Parquet (rows) rather than text (lines).

    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "t.csv")
    >>> _ = open(p, "w").write("a\\n1\\n")
    >>> is_parquet_table(p)
    False
    """
    return _resolve(path, member).parquet


def _text_column_type(t: pa.DataType) -> bool:
    """Whether an identifier column of type ``t`` is cast to text (numbers and dictionaries are)."""
    return (
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_decimal(t)
        or pa.types.is_large_string(t)
        or (pa.types.is_dictionary(t) and (pa.types.is_string(t.value_type) or pa.types.is_integer(t.value_type)))
    )


def _read_parquet(src: _Source, string_columns: Sequence[str], use_threads: bool = True) -> pa.Table:
    try:
        if src.member is None:
            table = pq.read_table(src.file, use_threads=use_threads)
        else:
            with zipfile.ZipFile(src.file) as zf:
                table = pq.read_table(pa.BufferReader(zf.read(src.member)), use_threads=use_threads)
    except (pa.ArrowException, *_READ_ERRORS) as exc:
        raise InputError(f"{src.label} is not a readable Parquet file ({exc})", path=src.label) from exc
    table = table.replace_schema_metadata(None)
    fields = []
    for f in table.schema:
        if (f.name in string_columns and not pa.types.is_string(f.type)) or (is_identifier_column(f.name) and _text_column_type(f.type)):
            f = pa.field(f.name, pa.string())
        fields.append(f)
    try:
        return table.cast(pa.schema(fields))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InputError(f"{src.label}: cannot read identifier columns as text ({exc})", path=src.label) from exc


def _split_header(tokens: Sequence[str]) -> list[str]:
    """Column names from the header's cells, expanding ``Name[a,b]`` that the delimiter split.

    NIH's header has ``OriginalImage[Width,Height]``: two data columns under one
    bracketed name. It becomes ``OriginalImage[Width]`` and ``OriginalImage[Height]``.
    A quoted cell (``"Size[w,h]"``) is one cell and stays one name.

    >>> _split_header(["a", "Size[w", "h]", "b"])
    ['a', 'Size[w]', 'Size[h]', 'b']
    """
    names: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if "[" in tok and "]" not in tok.split("[", 1)[1]:
            j = i
            while j + 1 < len(tokens) and "]" not in tokens[j]:
                j += 1
            group = tokens[i : j + 1]
            prefix, first = group[0].split("[", 1)
            parts = [first] + list(group[1:])
            parts[-1] = parts[-1].rsplit("]", 1)[0]
            names += [f"{prefix}[{p.strip()}]" for p in parts]
            i = j + 1
        else:
            names.append(tok.strip())
            i += 1
    return names


def _read_header(src: _Source, sep: str | None, encoding: str, utf8: bool) -> tuple[list[str], str, int, int]:
    """The header's cells, the delimiter, and the lines and characters the header spans."""
    with _open(src) as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8-sig" if utf8 else encoding, newline="")
        try:
            first = text.readline().lstrip("\ufeff")
            if not first:
                raise EmptyInputError(f"{src.label} is empty; it needs a header line and at least one row", path=src.label)
            blank = 0
            while first and not first.strip():  # blank lines before the header are skipped, as pandas does
                blank += 1
                first = text.readline()
            if not first:
                raise EmptyInputError(f"{src.label} has no header line, only blank lines", path=src.label)
            if sep is None:
                if src.name.endswith((".tsv", ".tab")):
                    sep = "\t"
                elif src.name.endswith(".csv"):
                    sep = ","
                else:
                    sep = "\t" if first.count("\t") > first.count(",") else ","
            chars = 0

            def lines() -> Iterator[str]:
                nonlocal chars
                for line in itertools.chain([first], text):
                    chars += len(line)
                    yield line

            reader = csv.reader(lines(), delimiter=sep)
            try:
                cells = next(reader)
            except csv.Error as exc:
                raise InputError(
                    f"cannot read the header of {src.label}: {exc}; is a quote in the header not closed?", path=src.label
                ) from exc
            return cells, sep, blank + reader.line_num, chars
        except UnicodeError:
            raise _encoding_error(src, encoding) from None
        finally:
            with contextlib.suppress(ValueError):
                text.detach()


def _ends_in_open_quote(src: _Source, table: pa.Table) -> bool:
    """Whether the last value ran to the end of the file because its quote was never closed.

    pyarrow takes an unclosed quote in the last column as a value that ends at the end
    of the file, swallowing the rows after it. Only a last value with a line break can
    be one; then the file must end with the closing quote.
    """
    if not table.num_rows or not pa.types.is_string(table.schema.types[-1]):
        return False
    last = table.column(table.num_columns - 1)[-1].as_py()
    if last is None or ("\n" not in last and "\r" not in last):
        return False
    tail = b""
    with _open(src) as stream:
        while chunk := stream.read(1 << 20):
            tail = (tail + chunk)[-64:]
    return not tail.rstrip(b"\r\n\x00").endswith(b'"')


def _read_csv(
    src: _Source, *, sep: str | None, string_columns: Sequence[str], encoding: str, info: codecs.CodecInfo, use_threads: bool = True
) -> pa.Table:
    utf8 = info.name in ("utf-8", "utf-8-sig")
    if sep == "\\t":
        sep = "\t"
    if sep is not None and (len(sep) != 1 or not sep.isascii() or sep in "\r\n\""):
        raise UsageError(
            f"the delimiter must be one ASCII character other than a quote or a line break, not {sep!r}; for a tab write --sep '\\t'", sep=sep
        )
    _check_text(src, info)
    try:
        cells, sep, header_lines, header_chars = _read_header(src, sep, encoding, utf8)
    except _READ_ERRORS as exc:
        raise InputError(f"cannot read {src.label}: {exc}", path=src.label) from exc
    names = _split_header(cells)
    unnamed = set()
    for i, n in enumerate(names):
        if n == "":
            names[i] = f"_unnamed_{i}"
            unnamed.add(names[i])
    dupes = sorted(n for n, k in collections.Counter(names).items() if k > 1)
    if dupes:
        raw = [c for c in cells if c.strip() in dupes]
        stripped = ""
        if len(set(raw)) > len(dupes):  # cells that differ only in surrounding white space
            stripped = (
                f" (the header cells {examples_text(raw, len(raw), limit=10)} are the same name once the white space "
                "around names is stripped)"
            )
        raise InputError(
            f"{src.label} has duplicate column names {examples_text(dupes, len(dupes))}{stripped}; rename them",
            path=src.label,
            duplicates=dupes,
        )
    column_types = {n: pa.string() for n in names if n in string_columns or is_identifier_column(n)}
    # The skipped header lines must fit in pyarrow's first block (4 bytes a character at most).
    block_size = max(BLOCK_SIZE, 4 * header_chars + 64)
    kind = "TSV" if sep == "\t" else "CSV"
    while True:
        bad: list = []

        def on_invalid(row: Any) -> str:
            bad.append(row)
            return "error"

        try:
            with _open(src) as stream:
                table = pacsv.read_csv(
                    stream,
                    read_options=pacsv.ReadOptions(
                        column_names=names,
                        skip_rows=header_lines,
                        encoding="utf8" if utf8 else info.name,
                        block_size=block_size,
                        use_threads=use_threads,
                    ),
                    parse_options=pacsv.ParseOptions(delimiter=sep, newlines_in_values=True, invalid_row_handler=on_invalid),
                    convert_options=pacsv.ConvertOptions(
                        column_types=column_types, null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=True
                    ),
                )
            break
        except UnicodeError:
            raise _encoding_error(src, encoding) from None
        except pa.ArrowInvalid as exc:
            text = str(exc)
            if "utf8" in text.lower() and "invalid" in text.lower():
                raise _encoding_error(src, encoding) from None
            if "straddling" in text and block_size < _MAX_BLOCK_SIZE:
                block_size *= 8  # a row longer than a block
                continue
            if "straddling" in text:
                raise InputError(
                    f"cannot parse {src.label} as {kind}: a quoted value runs on for over {_MAX_BLOCK_SIZE >> 20} MB; "
                    "is a quote not closed?",
                    path=src.label,
                ) from exc
            if text.startswith("Could not skip initial"):  # the header and nothing after it
                table = pa.table({n: pa.array([], pa.string()) for n in names})
                break
            if bad:
                row = bad[0]
                if row.actual_columns < row.expected_columns and all(n in unnamed for n in names[row.actual_columns :]):
                    # The header ends in delimiters that the rows do not have (NIH's BBox_List_2017.csv).
                    names = names[: row.actual_columns]
                    continue
                raise InputError(
                    f"cannot parse {src.label} as {kind}: a row has {row.actual_columns} field(s) where the header has "
                    f"{row.expected_columns} column(s): {short_repr(row.text, width=200)}; every row needs one field per column "
                    f"(quote values that hold the delimiter {sep!r}, or pass --sep)",
                    path=src.label,
                ) from exc
            raise InputError(f"cannot parse {src.label} as {kind}: {cut_text(text)}", path=src.label) from exc
        except _READ_ERRORS as exc:
            raise InputError(f"cannot read {src.label}: {exc}", path=src.label) from exc
    if any(pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type) for f in table.schema):
        # pyarrow reads a column with bytes that are not valid text as binary.
        raise _encoding_error(src, encoding)
    if _ends_in_open_quote(src, table):
        raise InputError(
            f"{src.label} ends inside a quoted value: a quote opened in column {table.column_names[-1]!r} "
            f"(row {table.num_rows}) is never closed; close it (a quote inside a quoted value is written twice, \"\")",
            path=src.label,
        )
    # A trailing delimiter on every line makes an empty, unnamed column: drop it.
    empty = [n for n in table.column_names if n in unnamed and table.column(n).null_count == table.num_rows]
    return table.drop_columns(empty)
