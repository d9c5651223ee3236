"""``ingest table --preset nih|chexpert`` in Arrow, without importing pandas.

``import pandas`` alone costs a process about 0.35 s, more than ``mdprep ingest table``
needs to read NIH's 112,120 rows, label them, check them and write the manifest. For the
nih and chexpert presets the command therefore builds the manifest here: read with
:func:`~mdprep.ingest.table_io.read_table` (pyarrow, multi-threaded), label lists parsed
once per distinct cell, one-hot labels, sex, ages and views, blank and uncertain
policies, label maps and ``--col`` as Arrow and numpy operations on the columns, and the
contract's checks (ids present, unique, text) on the way. The result is the Arrow table
that :func:`mdprep.manifest.to_arrow` makes of the manifest :func:`~mdprep.ingest.ingest_table`
returns for the same inputs and options, metadata included, so the files written are
byte-identical.

Exact is the rule: wherever this path could differ from the pandas path, it declines and
:func:`ingest_table_arrow` returns None, and the caller runs ``ingest_table``, which says
what is wrong with the input or warns about it in its own words. It declines

* options it does not handle: other presets, ``--label-when``, ``--aggregate``, and
  ``--col`` for ``age``, ``study_date`` and ``fold`` (text parsed by pandas);
* any error, and any warning (ids with white space around them);
* inputs it cannot match exactly: label lists that are not flat lists, label values
  outside {1, 0, -1} or not numbers, paths without ``patientNNNNN/studyN/``, repeated
  or missing ids, sex spellings it does not know, ages that are not numbers (or too
  large for float32), columns of types other than text, numbers, booleans and dates.

The options are checked, and the provenance recorded, by the same functions as the
pandas path (:mod:`mdprep.ingest.table_spec`), label lists are read by
:func:`mdprep.labels.parse_label_cells`, merges by :func:`mdprep.labels.merge_votes`,
sex by :func:`mdprep.ingest.sex_of_spellings`, CheXpert paths by
:func:`mdprep.ingest.extract_groups_arrow`: one definition each. Where every CheXpert
path is laid out alike (the real tables), the patient and study are read from the path
bytes instead, with a check on every row that the regex would find the same
(:func:`_laid_out_ids`).

The process that runs this path never imports pandas nor :mod:`pyarrow.compute` (its
import alone costs 0.02 to 0.03 s: :mod:`mdprep._compute` calls the few functions used
by name), and ``mdprep ingest table`` imports numpy without OpenBLAS's thread pool
(:func:`mdprep._lazy.import_numpy_single_threaded`).
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, TypeVar

import numpy as np
import pyarrow as pa

from .. import _compute as pc  # not pyarrow.compute, whose import alone costs 0.02 to 0.03 s
from ..errors import MdprepError, examples_text
from ..labels import find_column, label_map_plan, merge_votes, parse_label_cells
from ..manifest import (
    CANONICAL_TYPES,
    LABEL_TYPE,
    LABEL_VALUES,
    NEGATIVE,
    POSITIVE,
    REQUIRED_COLUMNS,
    UNCERTAIN,
    LabelCounts,
    ManifestSummary,
    metadata_document,
    schema_metadata,
)
from . import IngestReport, extract_groups_arrow, sex_of_spellings
from ._arrow import distinct, from_numpy, is_text, null_scalar, strings, stripped, text_scalar, valid_mask, values
from .table_io import read_table
from . import table_spec as spec
from .table_spec import TableOptions

#: The presets read here.
ARROW_PRESETS = ("nih", "chexpert")
#: Canonical columns ``--col`` may set here; ages, dates and folds are text that pandas parses.
ARROW_COLUMN_TARGETS = ("split", "view", "sex", "accession", "series_uid", "sop_uid")
#: Canonical text columns the pandas path stores as ``str`` (``view`` also loses the texts ``nan`` and ``None``).
_TEXT_CANONICAL = ("image_id", "path", "patient_id", "study_id", "series_uid", "sop_uid", "accession", "view", "split")
_INTEGER_TYPES = (pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64())
_FLOAT_TYPES = (pa.float32(), pa.float64())
_FLOAT32_MAX = float(np.finfo(np.float32).max)

T = TypeVar("T")
Column = pa.Array | pa.ChunkedArray
#: A label column: ``int8`` codes and where they are null.
Label = tuple[np.ndarray, np.ndarray]


class Declined(Exception):
    """The Arrow path cannot promise the pandas path's result for this input or these options."""


@dataclass(frozen=True)
class ArrowIngest:
    """What :func:`ingest_table_arrow` gives: the manifest as Arrow, ready for :func:`mdprep.manifest.write_table`.

    Attributes
    ----------
    table : pyarrow.Table
        The manifest's columns with their contract types and its ``mdprep`` metadata: what
        :func:`mdprep.manifest.to_arrow` gives for the manifest of ``ingest_table``.
    labels : tuple of str
        The label columns.
    report : IngestReport
        The counts and notes, as ``ingest_table`` reports them.
    """

    table: pa.Table
    labels: tuple[str, ...]
    report: IngestReport

    def summary(self) -> ManifestSummary:
        """Rows, patients, images per patient and label counts: :func:`mdprep.manifest.summarize` of the same manifest."""
        table = self.table
        counts = values(pc.value_counts(table.column("patient_id").combine_chunks()).field("counts")) if table.num_rows else np.zeros(0, np.int64)
        label_values = {name: (values(a), ~valid_mask(a)) for name, a in ((n, table.column(n).combine_chunks()) for n in self.labels)}
        unlabeled = int(np.logical_and.reduce([null for _, null in label_values.values()]).sum()) if self.labels else 0
        return ManifestSummary(
            rows=table.num_rows,
            patients=len(counts),
            images_per_patient_median=float(np.median(counts)) if len(counts) else 0.0,
            images_per_patient_max=int(counts.max()) if len(counts) else 0,
            unlabeled_rows=unlabeled,
            labels=tuple(
                LabelCounts(
                    name,
                    int(((v == POSITIVE) & ~null).sum()),
                    int(((v == NEGATIVE) & ~null).sum()),
                    int(((v == UNCERTAIN) & ~null).sum()),
                    int(null.sum()),
                )
                for name, (v, null) in label_values.items()
            ),
        )


def ingest_table_arrow(path: str | os.PathLike, **options: Any) -> ArrowIngest | None:
    """:func:`mdprep.ingest.ingest_table` for the nih and chexpert presets, in Arrow; None where only that function is exact.

    Takes the arguments of ``ingest_table``. Returns None, having printed and raised
    nothing, for other presets and options, for an input with anything to report (an
    error, a warning), and for any value this path cannot read exactly as the pandas
    path does (see the module's notes): the caller then runs ``ingest_table``.

    Examples
    --------
    >>> from pathlib import Path
    >>> from tempfile import mkdtemp
    >>> from mdprep.synthetic import write_chexpert_table
    >>> train = Path(mkdtemp()) / "train.csv"
    >>> rows = write_chexpert_table(train, patients=4)
    >>> r = ingest_table_arrow(train, preset="chexpert", uncertain="ones")
    >>> r.labels[:2], r.table.num_rows == rows == r.report.ingested
    (('No Finding', 'Enlarged Cardiomediastinum'), True)
    >>> print(ingest_table_arrow(train, preset="chexpert", aggregate="any"))  # only the pandas path aggregates
    None
    """
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = _ingest(spec.table_options(path, **options))
    except (Declined, MdprepError, pa.ArrowException):
        return None
    return None if caught else result


ingest_table_arrow.__signature__ = spec.options_signature("ArrowIngest | None")


def _ingest(opts: TableOptions) -> ArrowIngest:
    if opts.preset not in ARROW_PRESETS:
        raise Declined(f"preset {opts.preset!r}")
    if opts.rules or opts.aggregate != "error":
        raise Declined("--label-when or --aggregate")
    if any(t not in ARROW_COLUMN_TARGETS for t in opts.column_map):
        raise Declined("--col for a column that pandas parses")
    frame, labels, notes, source, origins, plain = _nih(opts) if opts.preset == "nih" else _chexpert(opts)
    if opts.column_map:
        _apply_column_map(frame, source, opts.column_map, notes, origins)
        plain -= set(opts.column_map)
    checked = _background(_check_identifiers, dict(frame), plain)  # the ids are final: check them beside the label work
    try:
        if opts.label_mapping is not None:
            plan, renamed, merged = label_map_plan(list(labels), opts.label_mapping)
            if renamed or merged:
                labels = {name: labels[s[0]] if len(s) == 1 else _merged([labels[x] for x in s]) for name, s in plan.items()}
            notes += spec.label_map_notes(renamed, merged)
        names = list(labels)
        origin = spec.label_origin(opts.preset, None, ())
        spec.check_label_names(names, list(frame), opts.path, derived=[], mapped=opts.label_mapping, origin=origin)
        filled = _blank(labels, opts.blank_default, spec.blank_policies(opts, names))
        if filled:
            notes.append(f"{filled} blank label cell(s) of labelled rows counted as negative (--blank)")
        _uncertain(labels, opts.uncertain)
        # Counted after --uncertain: `ignore` leaves a row whose labels were all uncertain with none.
        unlabeled = int(np.logical_and.reduce([null for _, null in labels.values()]).sum()) if labels else 0
        canonical = {c: _canonical(c, frame[c]) for c in CANONICAL_TYPES if c in frame}
        rest = {c: _stored(frame[c]) for c in frame if c not in CANONICAL_TYPES}
    finally:
        checked()  # always waited for: nothing of this call runs on once it has returned
    n = source.num_rows
    columns = {**canonical, **{name: from_numpy(v, ~null, LABEL_TYPE) for name, (v, null) in labels.items()}, **rest}
    step = spec.provenance(opts)
    document = metadata_document(names, spec.manifest_root(opts.root), [step])
    schema = pa.schema([pa.field(name, arr.type) for name, arr in columns.items()], metadata=schema_metadata(document))
    table = pa.Table.from_arrays(list(columns.values()), schema=schema)
    report = IngestReport(found=n, ingested=n, aggregated=0, unlabeled=unlabeled, invalid_values={}, invalid_examples={}, notes=tuple(notes))
    return ArrowIngest(table=table, labels=tuple(names), report=report)


# ----------------------------------------------------------------------------- presets


def _spare_core() -> bool:
    """Whether a second thread would find a core of its own: fewer processes wanting to run (the 1-minute load) than cores, ours aside.

    On an idle machine the work that can run in two threads does (the CSV parse, the
    label columns beside the paths, the identifier checks beside the labels): CheXpert's
    table takes 0.05 s less. On a busy one the threads only wait for each other, and the
    same work in one thread takes 5% to 30% less time (at a load of 3.5 to 5.5 on two
    cores) and less CPU. The output is the same either way.
    """
    try:
        return os.getloadavg()[0] + 1 <= (os.cpu_count() or 1)
    except OSError:  # no load average here
        return True


def _background(fn: Callable[..., T], *args: Any) -> Callable[[], T]:
    """Start ``fn(*args)`` in a thread (in this one where no core is spare); the function returned waits for its result, or raises what it raised.

    pyarrow's kernels and numpy's loops let go of the GIL, so on two cores two of them run at once.
    """
    box: dict[str, Any] = {}
    if not _spare_core():
        try:
            box["result"] = fn(*args)
        except Exception as exc:  # noqa: BLE001 - raised by the waiting function, as from a thread
            box["error"] = exc
        return lambda: box["result"] if "error" not in box else _reraise(box["error"])

    def run() -> None:
        try:
            box["result"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"mdprep-{getattr(fn, '__name__', 'task')}", daemon=True)
    thread.start()

    def wait() -> T:
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["result"]

    return wait


def _reraise(exc: BaseException):
    raise exc


def _one(column: Column) -> pa.Array:
    """One contiguous array (the manifest is written from such arrays: chunks change the Parquet bytes)."""
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


#: What a preset read: the frame's columns, the labels, notes, the table as read, the source of each renamed
#: canonical column, and the columns known to be plain text (no white space at all), which need no test.
Read = tuple[dict[str, Column], dict[str, Label], list[str], pa.Table, dict[str, str], set[str]]


def _nih(opts: TableOptions) -> Read:
    table = read_table(opts.path, sep=opts.sep, string_columns=[*spec.NIH_TEXT, *opts.text_columns], encoding=opts.encoding, use_threads=_spare_core())
    spec.require_columns(table, spec.NIH_REQUIRED, opts.path, spec.NIH_HINT)
    encoded = pc.dictionary_encode(_one(table.column("Finding Labels")))
    names, cells, empty, malformed = parse_label_cells(encoded.dictionary.to_pylist(), sep="|", known=spec.NIH_LABEL_COLUMNS)
    if malformed:
        raise Declined("malformed label lists")
    codes = np.where(valid_mask(encoded.indices), values(encoded.indices), -1)  # null cells: the last row
    rows, null = cells[codes], empty[codes]
    labels = {name: (np.ascontiguousarray(rows[:, j]), null.copy()) for j, name in enumerate(names)}
    image = table.column("Image Index")
    frame: dict[str, Column] = {"image_id": image, "path": image, "patient_id": table.column("Patient ID")}
    extra = [n for n in names if n not in spec.NIH_LABEL_COLUMNS]
    notes = [f"labels not in the NIH list: {', '.join(extra)}"] if extra else []
    origins = {}
    for source, target in spec.NIH_RENAMES.items():
        if source in table.column_names:
            frame[target] = table.column(source)
            origins[target] = source
    return frame, labels, notes, table, origins, set()


def _chexpert(opts: TableOptions) -> Read:
    table = read_table(opts.path, sep=opts.sep, string_columns=[*spec.CHEXPERT_TEXT, *opts.text_columns], encoding=opts.encoding, use_threads=_spare_core())
    spec.require_columns(table, ["Path", *spec.CHEXPERT_LABELS], opts.path, spec.CHEXPERT_HINT)
    path = _one(table.column("Path"))
    # The label columns are read in another thread (pyarrow and numpy let go of the GIL) while this one reads the paths.
    tail = _background(lambda: {name: _label_values(table.column(name)) for name in spec.CHEXPERT_LABELS})
    try:
        patient, study, plain = _patient_study(path)
        present = table.column_names
        view = None
        if "AP/PA" in present:
            view = _one(table.column("AP/PA"))
            if "Frontal/Lateral" in present:
                lateral = pc.equal(_one(table.column("Frontal/Lateral")), text_scalar("Lateral"))
                view = pc.if_else(pc.is_valid(view), view, pc.if_else(lateral, text_scalar("LATERAL"), null_scalar(pa.string())))
    finally:
        labels = tail()
    frame: dict[str, Column] = {"image_id": path, "path": path, "patient_id": patient, "study_id": study}
    if view is not None:
        frame["view"] = view
    origins = {}
    for source, target in spec.CHEXPERT_RENAMES.items():
        if source in present:
            frame[target] = table.column(source)
            origins[target] = source
    for name in (c for c in present if c not in spec.CHEXPERT_READ):
        if name in frame:
            raise Declined(f"column {name!r} named like a column the preset makes")
        frame[name] = table.column(name)
    return frame, labels, [], table, origins, plain


def _patient_study(path: pa.Array) -> tuple[pa.Array, pa.Array, set[str]]:
    """The patient (``patientNNNNN``) and study (``patientNNNNN/studyN``) of every CheXpert path, as the regex finds them.

    :func:`_laid_out_ids` reads them straight from the bytes where every path is laid
    out alike (ASCII letters, digits and ``/`` only: the third item names them as plain
    text); otherwise :data:`~mdprep.ingest.table_spec.CHEXPERT_PATH` is searched in each
    (:func:`~mdprep.ingest.extract_groups_arrow`), five times the work.
    """
    found = _laid_out_ids(path)
    if found is not None:
        return *found, {"patient_id", "study_id"}
    parts, matched = extract_groups_arrow(path, spec.CHEXPERT_PATH)
    if not matched.all():
        raise Declined("paths without patientNNNNN/studyN/")
    return parts["patient"], pc.binary_join_element_wise(parts["patient"], parts["study"], text_scalar("/")), set()


#: Bytes the CheXpert path reader looks for.
_SLASH, _ZERO = ord("/"), ord("0")


def _laid_out_ids(path: pa.Array) -> tuple[pa.Array, pa.Array] | None:
    """:func:`_patient_study` where every path starts with the first one's text up to ``patient``: None where one does not.

    Then no path holds ``patient`` before that point, so the leftmost match of
    ``patient\\d+/study\\d+/`` can only start there, and it does where the bytes that
    follow are ASCII digits, ``/study``, ASCII digits and ``/`` (RE2's ``\\d`` is
    ASCII); this is checked for every path with numpy on the array's buffers, one byte
    position at a time (a loop over positions, not rows). Any path that differs gives
    None, and the caller searches the regex.

    >>> patient, study = _laid_out_ids(strings(["t/patient01/study12/v.jpg", "t/patient2/study3/x/y.jpg"]))
    >>> patient.to_pylist(), study.to_pylist()
    (['patient01', 'patient2'], ['patient01/study12', 'patient2/study3'])
    >>> print(_laid_out_ids(strings(["t/patient01/study12/v.jpg", "u/patient2/study3/v.jpg"])))
    None
    """
    n = len(path)
    if n == 0 or path.type != pa.string() or path.null_count:
        return None
    first = path[0].as_py()
    at = first.find("patient")
    if at < 0 or not pc.all(pc.starts_with(path, pattern=first[: at + 7])).as_py():
        return None
    raw = np.frombuffer(path.buffers()[2], np.uint8)
    buf = np.zeros(len(raw) + 32, np.uint8)  # reads run past the last path into zeros, which match nothing
    buf[: len(raw)] = raw
    offsets = np.frombuffer(path.buffers()[1], np.int32, count=path.offset + n + 1)[path.offset :]
    begin = offsets[:-1] + len(first[:at].encode("utf-8"))

    def digits(pos: np.ndarray) -> np.ndarray:
        run, going = np.zeros(n, np.int32), np.ones(n, bool)
        while True:
            going &= (buf[pos + run] - _ZERO) < 10  # uint8: bytes below '0' wrap around to large numbers
            if not going.any():
                return run
            run += going

    patient_end = begin + 7 + digits(begin + 7)
    ok = patient_end > begin + 7
    for i, byte in enumerate(b"/study"):
        ok &= buf[patient_end + i] == byte
    study_end = patient_end + 6 + digits(patient_end + 6)
    # Every byte read for an accepted row lies before its closing '/', so inside the row itself.
    ok &= (study_end > patient_end + 6) & (buf[study_end] == _SLASH) & (study_end < offsets[1:])
    if not ok.all():
        return None
    return _substrings(path, buf, begin, patient_end - begin), _substrings(path, buf, begin, study_end - begin)


def _substrings(path: pa.Array, buf: np.ndarray, begin: np.ndarray, length: np.ndarray) -> pa.Array:
    """The ``length`` bytes at ``begin`` (positions in ``path``'s data, ``buf`` a copy of it) of each row, as a ``string`` array.

    Pieces longer than 12 bytes are a ``string_view`` array over ``path``'s own data,
    which Arrow copies out in C++; shorter ones (which a view holds inline) are gathered
    with numpy.
    """
    n = len(begin)
    if int(length.min()) > 12:
        views = np.zeros((n, 4), np.int32)  # per value: length, its first 4 bytes, buffer 0, offset
        views[:, 0] = length
        first4 = buf[begin[:, None] + np.arange(4)]
        views[:, 1] = np.ascontiguousarray(first4).view(np.int32).ravel()
        views[:, 3] = begin
        return pc.cast(pa.Array.from_buffers(pa.string_view(), n, [None, pa.py_buffer(views), path.buffers()[2]]), pa.string())
    width = int(length.max())
    block = np.lib.stride_tricks.sliding_window_view(buf, width)[begin]
    data = block.reshape(-1) if int(length.min()) == width else block[np.arange(width) < length[:, None]]
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(length, out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(data))])


def _label_values(column: Column) -> Label:
    """A one-hot label column of numbers (1, 0, -1, blank) as ``int8`` codes and nulls, as :func:`mdprep.labels.coerce_label_values` reads it.

    A float NaN is blank, as there; any other value than 1, 0 and -1 (or true, false) declines.

    >>> [a.tolist() for a in _label_values(pa.chunked_array([from_numpy(np.array([1.0, -0.0, np.nan, -1.0]), np.array([True, True, True, False]))]))]
    [[1, 0, 0, 0], [False, False, True, True]]
    """
    arr = _one(column)
    if pa.types.is_null(arr.type):
        return np.zeros(len(arr), np.int8), np.ones(len(arr), bool)
    if not (arr.type in _INTEGER_TYPES or arr.type in _FLOAT_TYPES or pa.types.is_boolean(arr.type)):
        raise Declined("label values that are not numbers")
    v, null = values(arr), ~valid_mask(arr)  # v: anything in null slots
    if arr.type in _FLOAT_TYPES:
        null |= np.isnan(v)
    if not pa.types.is_boolean(arr.type) and not ((v == LABEL_VALUES[0]) | (v == LABEL_VALUES[1]) | (v == LABEL_VALUES[2]) | null).all():
        raise Declined("label values outside {1, 0, -1}")
    return np.where(null, 0, v).astype(np.int8), null


# ----------------------------------------------------------------------------- options


def _apply_column_map(frame: dict[str, Column], source: pa.Table, column_map: Mapping[str, str], notes: list[str], origins: dict[str, str]) -> None:
    """``--col``, as the pandas path's ``_apply_column_map`` does it: canonical columns from source columns, replacing the preset's."""
    present = source.column_names
    found = {t: find_column(present, s) for t, s in column_map.items()}
    if any(hit is None for hit in found.values()):
        raise Declined("--col names a missing column")
    replaced = [t for t in found if t in frame]
    if replaced:
        notes.append(f"--col replaced the preset's {', '.join(replaced)}")
    for target, col in found.items():
        frame[target] = source.column(col)
        origins[target] = col
    for col in [c for c in found.values() if c in frame and c not in CANONICAL_TYPES]:
        del frame[col]


def _float_values(label: Label) -> np.ndarray:
    v, null = label
    return np.where(null, np.nan, v.astype(np.float64))


def _merged(labels: Sequence[Label]) -> Label:
    return merge_votes(np.column_stack([_float_values(label) for label in labels]))


def _blank(labels: dict[str, Label], default: str, per_label: Mapping[str, str]) -> int:
    """Blank cells of labelled rows made negative where the policy says so (:func:`mdprep.labels.apply_blank_policy`); how many."""
    negative = [name for name in labels if per_label.get(name, default) == "negative"]
    if not negative:
        return 0
    labelled = ~np.logical_and.reduce([null for _, null in labels.values()])
    filled = 0
    for name in negative:
        v, null = labels[name]
        fill = null & labelled
        filled += int(fill.sum())
        v = v.copy()
        v[fill] = NEGATIVE
        labels[name] = (v, null & ~fill)
    return filled


def _uncertain(labels: dict[str, Label], policy: str) -> None:
    """Uncertain (-1) values replaced as the policy says (:func:`mdprep.labels.apply_uncertain_policy`)."""
    if policy == "keep":
        return
    for name, (v, null) in list(labels.items()):
        unc = (v == UNCERTAIN) & ~null
        if policy == "ignore":
            labels[name] = (v, null | unc)
        else:
            labels[name] = (np.where(unc, POSITIVE if policy == "ones" else NEGATIVE, v).astype(np.int8), null)


# ----------------------------------------------------------------------------- checks and types


def _check_identifiers(frame: Mapping[str, Column], plain: set[str] = frozenset()) -> None:
    """What the pandas path checks of identifiers before the contract: text, no white space around, image ids present and unique.

    The columns in ``plain`` are text known to hold no white space: not tested again.
    """
    seen: set[int] = set()
    for col in spec.ID_COLUMNS:
        if col in frame and col not in plain and id(frame[col]) not in seen:  # image_id and path are often one array
            if not (is_text(frame[col]) and stripped(frame[col])):
                raise Declined(f"{col} is not stripped text")
            seen.add(id(frame[col]))
    if not distinct(frame["image_id"]):
        raise Declined("repeated image ids")
    if any(frame[c].null_count for c in REQUIRED_COLUMNS):
        raise Declined("missing identifiers")


def _canonical(name: str, column: Column) -> pa.Array:
    """A canonical column with its contract type, as the pandas path's ``_coerce_canonical`` and ``to_arrow`` leave it."""
    arr = _one(column)
    if name == "sex":
        return _sex(arr)
    if name == "age":
        return _age(arr)
    if name not in _TEXT_CANONICAL:
        raise Declined(f"{name} is parsed by pandas")
    if pa.types.is_null(arr.type):
        return pa.nulls(len(arr), pa.string())
    if not is_text(arr):
        raise Declined(f"{name} is not text")
    arr = pc.cast(arr, pa.string())
    if name == "view":  # PadChest writes a missing ViewPosition as the text 'nan'
        arr = pc.if_else(pc.is_in(arr, value_set=strings(["nan", "None"])), null_scalar(pa.string()), arr)
    return arr


def _sex(arr: pa.Array) -> pa.Array:
    if pa.types.is_null(arr.type):
        return pa.nulls(len(arr), pa.string())
    if not is_text(arr):
        raise Declined("sex is not text")
    encoded = pc.dictionary_encode(pc.cast(arr, pa.string()))
    mapped, unknown = sex_of_spellings(pc.utf8_upper(pc.utf8_trim_whitespace(encoded.dictionary)).to_pylist())
    if unknown.any():
        raise Declined("sex spellings that are not recognised")
    return pc.take(strings(mapped[:-1]), encoded.indices)


def _age(arr: pa.Array) -> pa.Array:
    if pa.types.is_null(arr.type):  # a column left blank
        return pa.nulls(len(arr), pa.float32())
    if not (arr.type in _INTEGER_TYPES or arr.type in _FLOAT_TYPES):
        raise Declined("ages that are not numbers")
    if pa.types.is_floating(arr.type) and np.abs(np.where(valid_mask(arr), values(arr), 0)).max(initial=0) > _FLOAT32_MAX:
        raise Declined("ages too large for float32")  # numpy warns, and gives inf
    age = pc.cast(pc.cast(arr, pa.float64(), safe=False), pa.float32(), safe=False)
    return pc.if_else(pc.is_nan(age), null_scalar(pa.float32()), age)


def _stored(column: Column) -> pa.Array:
    """Another column as the pandas path stores it, through pandas and back: NaN becomes null, an all-blank column text."""
    arr = _one(column)
    t = arr.type
    if pa.types.is_string(t) or t in _INTEGER_TYPES or pa.types.is_boolean(t) or pa.types.is_date32(t):
        return arr
    if pa.types.is_large_string(t):
        return pc.cast(arr, pa.string())
    if t in _FLOAT_TYPES:
        return pc.if_else(pc.is_nan(arr), null_scalar(t), arr)
    if pa.types.is_null(t):
        return pa.nulls(len(arr), pa.string())
    raise Declined(f"a column of type {t}")


def declined_reason(path: str | os.PathLike, **options: Any) -> str | None:
    """Why :func:`ingest_table_arrow` declines these arguments (None: it does not), for tests and benchmarks.

    >>> import tempfile, os
    >>> from mdprep.synthetic import write_nih_table
    >>> p = os.path.join(tempfile.mkdtemp(), "Data_Entry_2017.csv")
    >>> _ = write_nih_table(p, patients=5)
    >>> declined_reason(p, preset="nih", label_when=["A:Patient Gender==M"])
    '--label-when or --aggregate'
    """
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _ingest(spec.table_options(path, **options))
    except Declined as exc:
        return str(exc)
    except (MdprepError, pa.ArrowException) as exc:
        return f"{type(exc).__name__}: {exc}"
    if caught:
        return f"warnings: {examples_text([str(w.message) for w in caught], len(caught))}"
    return None
