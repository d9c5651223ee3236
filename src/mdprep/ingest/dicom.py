"""``ingest dicom``: a tree of DICOM files into a manifest, headers only: one row per file, or per series (``level="series"``)."""

from __future__ import annotations

import functools
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..dicom_header import FAILED, MISSING_PATIENT_POLICIES, OK, PRESET_TAGS, SKIPPED, TagColumn, header_columns, read_headers
from ..choices import INGEST_LEVELS
from ..errors import EmptyInputError, UsageError, examples_text
from ..executor import map_chunks
from ..fileio import listing_fingerprint
from ..incremental import Plan, check_compatible, load_previous, plan_update, results_table, reused_rows, signatures_for
from ..manifest import CANONICAL_TYPES, Manifest, frame_from_arrow, provenance_step
from . import IngestReport, IngestResult, canonical_sex, errors_frame
from ..manifest import order_columns
from .files import check_root, collect_files, escaped_path, iter_tree
from .series import DEFAULT_SPACING_TOLERANCE, SERIES_COLUMNS, SERIES_TAGS, FrameGeometry, check_spacing_tolerance, read_frame_geometry, series_rows
from ..storage import is_url, join


@dataclass(frozen=True)
class _Chunk:
    """What one worker hands back for a chunk of files: rows already in Arrow form."""

    batch: pa.RecordBatch
    errors: list[tuple[str, str, str, str]]
    invalid: dict[str, int]
    relpaths: list[str]
    sizes: list[int]
    notes: dict[str, int]  # what pydicom warned about -> files
    per_file: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=dict)  # rel -> (invalid, notes), where any
    frames: dict[str, FrameGeometry] = field(default_factory=dict)  # rel -> frame geometry of a multi-frame file (series level)


#: Column added when a missing PatientID may fall back on a UID: which attribute gave patient_id.
PATIENT_SOURCE_COLUMN = "patient_id_source"
#: Columns ``ingest dicom`` fills itself, which no ``--tags`` attribute may name.
RESERVED_COLUMNS: tuple[str, ...] = tuple(
    dict.fromkeys(["image_id", "path", "lenient_read", "has_pixels", PATIENT_SOURCE_COLUMN, *CANONICAL_TYPES])
)
#: Error types of files that were never read as DICOM: refused by the listing, or the file system said no.
_NOT_READ_TYPES = frozenset(
    {"UndecodablePath", "OutsideRoot", "OSError", "FileNotFoundError", "PermissionError", "IsADirectoryError", "NotADirectoryError"}
)



def _schema(columns: Sequence[TagColumn], with_source: bool = False) -> pa.Schema:
    fields = [pa.field("image_id", pa.string()), pa.field("path", pa.string())]
    fields += [pa.field(c.column, CANONICAL_TYPES.get(c.column, c.arrow_type)) for c in columns]
    fields += [pa.field("lenient_read", pa.bool_()), pa.field("has_pixels", pa.bool_())]
    if with_source:
        fields.append(pa.field(PATIENT_SOURCE_COLUMN, pa.string()))
    return pa.schema(fields)


@dataclass(frozen=True)
class _Row:
    rel: str
    values: tuple
    invalid: list[str]  # columns whose value was stored as null
    lenient: bool
    has_pixels: bool
    source: str


def _batch(rows: Sequence[_Row], schema: pa.Schema, ncols: int) -> pa.RecordBatch:
    paths = [r.rel for r in rows]
    values = list(zip(*(r.values for r in rows))) if rows else [()] * ncols
    arrays = [pa.array(paths, pa.string()), pa.array(paths, pa.string())]
    arrays += [pa.array(list(v), type=schema.field(i + 2).type) for i, v in enumerate(values)]
    arrays += [pa.array([r.lenient for r in rows], pa.bool_()), pa.array([r.has_pixels for r in rows], pa.bool_())]
    if len(schema) > len(arrays):
        arrays.append(pa.array([r.source for r in rows], pa.string()))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _unstorable(row: _Row, schema: pa.Schema, columns: Sequence[TagColumn]) -> tuple[str, str, str, str] | None:
    """The error row of a row that cannot go into ``schema``, or None if it can."""
    try:
        _batch([row], schema, len(columns))
        return None
    except Exception as exc:  # noqa: BLE001 - anything Arrow refuses
        for i, value in enumerate(row.values):
            field = schema.field(i + 2)
            try:
                pa.array([value], type=field.type)
            except Exception as col_exc:  # noqa: BLE001
                shown = repr(value)
                shown = shown if len(shown) <= 80 else shown[:77] + "..."
                message = f"the value {shown} of column {field.name!r} cannot be stored as {field.type} ({col_exc})"
                return (row.rel, FAILED, "UnstorableValue", message)
        return (row.rel, FAILED, "UnstorableValue", f"the row cannot be stored ({exc})")


def _remote_reading(root: str, relpaths: Sequence[str]) -> dict:
    """How :func:`read_headers` opens the files of a URL root: ranged reads, the chunk's heads fetched concurrently.

    Each object's first :data:`mdprep.storage.DICOM_HEAD` bytes are fetched by a
    small thread pool before the (sequential) parse; the parse asks for more only
    when a header goes on, and never for pixel data. A local root reads as before.
    """
    if not is_url(root):
        return {}
    from ..storage import DICOM_HEAD, open_objects, opener

    return {"opener": opener(open_objects(root, relpaths, head=DICOM_HEAD)), "first_read": DICOM_HEAD}


def _read_chunk(
    relpaths: Sequence[str], *, root: str, columns: Sequence[TagColumn], missing_patient: str = "error", frames: bool = False
) -> _Chunk:
    """Read a chunk of files and build its rows as one Arrow record batch (in the worker).

    The values :func:`read_header` gives always fit their columns; should a file
    still give one Arrow refuses, that file alone becomes a failed row
    (``UnstorableValue``) and the rest of the chunk is kept. With ``frames`` (series
    level), the multi-frame files (NumberOfFrames without a top-level
    ImagePositionPatient) are read again, with pydicom, for the positions of their
    frames (:func:`mdprep.ingest.series.read_frame_geometry`).
    """
    rows: list[_Row] = []
    errors, sizes = [], []
    notes: Counter[str] = Counter()
    file_notes: dict[str, tuple[str, ...]] = {}
    sex_at = next((i for i, c in enumerate(columns) if c.column == "sex"), None)
    reading = _remote_reading(root, relpaths)
    results = read_headers([join(root, rel) for rel in relpaths], columns, missing_patient, **reading)
    for rel, res in zip(relpaths, results):
        sizes.append(res.size)
        if res.outcome != OK:
            errors.append((rel, res.outcome, res.error_type, res.message))
            continue
        notes.update(res.notes)  # a file without a row has its error row; what pydicom said of it is moot
        if res.notes:
            file_notes[rel] = tuple(res.notes)
        values = res.values
        invalid = [columns[i].column for i in res.invalid]
        if sex_at is not None:
            code, known = canonical_sex(values[sex_at])
            values = values[:sex_at] + (code,) + values[sex_at + 1 :]
            if not known:
                invalid.append("sex")
        rows.append(_Row(rel, values, invalid, res.lenient, res.has_pixels, res.patient_source))
    schema = _schema(columns, with_source=missing_patient != "error")
    try:
        batch = _batch(rows, schema, len(columns))
    except Exception:  # noqa: BLE001 - find the file(s) Arrow refuses, keep the others
        kept = []
        for row in rows:
            bad = _unstorable(row, schema, columns)
            if bad is None:
                kept.append(row)
            else:
                errors.append(bad)
        rows = kept
        batch = _batch(rows, schema, len(columns))
    invalid_counts = Counter(c for row in rows for c in row.invalid)
    # Per file, for the signatures of an incremental run (mdprep.incremental): what each file adds to the counts.
    per_file = {rel: ((), n) for rel, n in file_notes.items()}
    per_file.update({row.rel: (tuple(row.invalid), file_notes.get(row.rel, ())) for row in rows if row.invalid})
    geometry = _frame_geometry(rows, columns, root, reading.get("opener"), notes) if frames else {}
    return _Chunk(batch, errors, dict(invalid_counts), list(relpaths), sizes, dict(notes), per_file, geometry)


def _frame_geometry(rows: Sequence[_Row], columns: Sequence[TagColumn], root: str, open_remote, notes: Counter) -> dict[str, FrameGeometry]:
    """The frame geometry of the multi-frame files among ``rows``: NumberOfFrames given, no top-level position."""
    names = [c.column for c in columns]
    frames_at, position_at = names.index("number_of_frames"), names.index("image_position_patient")
    out: dict[str, FrameGeometry] = {}
    for row in rows:
        if row.values[frames_at] is None or row.values[position_at] is not None:
            continue
        path = join(root, row.rel)
        try:
            # What pydicom warns about in this file was noted when its header was read.
            with warnings.catch_warnings(), (open(path, "rb") if open_remote is None else open_remote(path)[0]) as fh:
                warnings.simplefilter("ignore")
                out[row.rel] = read_frame_geometry(fh)
        except Exception as exc:  # noqa: BLE001 - the file keeps its row, without frame positions
            notes[f"multi-frame file whose functional groups could not be read ({type(exc).__name__}): no frame positions"] += 1
    return out


#: --missing-patient policy -> (the column holding the UID, the attribute's name, the group's name).
_FALLBACK_KEYS = {"study": ("study_id", "StudyInstanceUID", "study"), "series": ("series_uid", "SeriesInstanceUID", "series")}


def borrow_patient_ids(frame: pd.DataFrame, missing_patient: str) -> tuple[pd.DataFrame, list[str]]:
    """Give files without PatientID the PatientID the other files of their study (or series) carry.

    With ``--missing-patient study`` a file without PatientID stands in as
    ``study:<StudyInstanceUID>``. When other files of the same study do carry a
    PatientID, that stand-in would split one study across two "patients"; so the file
    takes the study's PatientID instead, and its ``patient_id_source`` says
    ``StudyInstanceUID (PatientID of the study)``. A study whose files carry several
    distinct PatientIDs keeps the stand-in (borrowing would have to guess), and a note
    says so. ``series`` works the same way with SeriesInstanceUID.

    Returns the frame and the notes for the report.

    Examples
    --------
    >>> f = pd.DataFrame({"patient_id": ["P1", "study:1.2"], "study_id": ["1.2", "1.2"],
    ...                   "patient_id_source": ["PatientID", "StudyInstanceUID"]})
    >>> out, notes = borrow_patient_ids(f, "study")
    >>> out["patient_id"].tolist(), out["patient_id_source"].tolist()[1]
    (['P1', 'P1'], 'StudyInstanceUID (PatientID of the study)')
    """
    key, attribute, group = _FALLBACK_KEYS[missing_patient]
    source = frame[PATIENT_SOURCE_COLUMN]
    stand_in = source.eq(attribute).to_numpy(dtype=bool)
    if not stand_in.any():
        return frame, []
    carried = frame.loc[source.eq("PatientID").to_numpy(dtype=bool), [key, "patient_id"]].dropna()
    per_group = carried.groupby(key, sort=False)["patient_id"].agg(["nunique", "first"])
    unique = per_group.loc[per_group["nunique"] == 1, "first"]
    keys = frame.loc[stand_in, key]
    borrowed = keys.map(unique)
    take = borrowed.notna()
    frame = frame.copy()
    rows = take.index[take.to_numpy(dtype=bool)]
    frame.loc[rows, "patient_id"] = borrowed[take]
    frame.loc[rows, PATIENT_SOURCE_COLUMN] = f"{attribute} (PatientID of the {group})"
    notes = []
    if len(rows):
        notes.append(
            f"{len(rows)} file(s) without PatientID took the PatientID that the other files of their {group} carry "
            f"(patient_id_source '{attribute} (PatientID of the {group})')"
        )
    ambiguous = keys.isin(per_group.index[per_group["nunique"] > 1])
    if ambiguous.any():
        examples = examples_text(sorted(keys[ambiguous].unique()), int(keys[ambiguous].nunique()), limit=3)
        notes.append(
            f"{int(ambiguous.sum())} file(s) without PatientID belong to a {group} whose other files carry several "
            f"PatientIDs ({attribute} {examples}); they keep '{group}:<{attribute}>' as their patient"
        )
    return frame, notes


def _counted(items: Iterable[str], on_found: Callable[[int], None] | None) -> Iterator[str]:
    """Pass ``items`` through, telling ``on_found`` the running count every 256 items and at the end."""
    n = 0
    for n, item in enumerate(items, start=1):
        if on_found and n % 256 == 0:
            on_found(n)
        yield item
    if on_found:
        on_found(n)


def ingest_dicom(
    root: str | os.PathLike,
    *,
    files: Iterable[str] | None = None,
    tags: Sequence[str] = (),
    missing_patient: str = "error",
    allow_outside_root: bool = False,
    workers: int | None = None,
    on_found: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    update: str | os.PathLike | None = None,
    record_signatures: bool = False,
    scheduler=None,
    level: str = "instance",
    drop_bad_series: bool = False,
    spacing_tolerance: float = DEFAULT_SPACING_TOLERANCE,
) -> IngestResult:
    """Read the headers of every DICOM file under ``root`` into a manifest.

    Parameters
    ----------
    root : path
        Folder walked recursively; manifest paths are relative to it.
    files : iterable of str, optional
        Read these files (absolute or relative to ``root``) instead of walking.
    tags : sequence of str
        Extra attributes (keywords, ``GGGG,EEEE``, ``(GGGG,EEEE)`` or ``GGGGEEEE``) besides the preset.
    missing_patient : {"error", "study", "series"}
        A file without PatientID fails (``error``), or takes the PatientID that the
        other files of its study (``study``) or series (``series``) carry, else
        ``study:<StudyInstanceUID>`` or ``series:<SeriesInstanceUID>`` as its patient
        (see :func:`borrow_patient_ids`), so anonymised collections can be grouped
        conservatively; a column ``patient_id_source`` then says where each row's
        patient came from.
    allow_outside_root : bool
        Follow symlinks whose target lies outside ``root``; by default they are
        skipped entries (``OutsideRoot``), as mdprep reads files only under the root.
    workers : int, optional
        Processes; all cores by default.
    on_found, on_progress : callable, optional
        Told the number of files found (to read, with ``update``), then the number read
        after each chunk.
    update : path, optional
        A manifest this function wrote before, with its signatures file
        (:mod:`mdprep.incremental`): only files that are new or whose size or
        modification time changed are read; the other rows come from it, rows of files
        that are gone are dropped. The result is the one a full run gives; the counts
        are in ``report.update``.
    record_signatures : bool
        Take every file's signature, for a later ``update`` (implied by ``update``).
    scheduler : str, DaskScheduler or distributed.Client, optional
        Read on a Dask cluster (see :func:`mdprep.executor.map_chunks`); the result is the same.
    level : {"instance", "series"}
        ``instance`` (the default, for projection radiography): one row per file.
        ``series``: one row per SeriesInstanceUID, a series-level manifest with
        volume checks (:func:`mdprep.ingest.series.series_rows`); the geometry
        attributes of :data:`mdprep.ingest.series.SERIES_TAGS` are read too, and
        the positions of the frames of multi-frame files. A file without
        SeriesInstanceUID then fails (``MissingSeriesUID``). ``--tags`` columns hold
        the value every file of the series shares (null where they differ).
    drop_bad_series : bool
        Series level only: leave out every series with a volume problem; its files
        are error rows with outcome ``dropped`` and counted in ``report.dropped``.
    spacing_tolerance : float
        Series level only: how far a step between slice positions may be from the
        median step, as a fraction of it (0.1: 10%).

    Returns
    -------
    IngestResult
        Rows for readable DICOM files; non-DICOM files and special entries (skipped)
        and unreadable or incomplete ones (failed) in ``errors``; counts in ``report``;
        with ``update`` or ``record_signatures``, the ``signatures`` to write next to
        the manifest (:func:`mdprep.incremental.write_signatures`). At series level,
        ``report.ingested`` counts series rows, ``report.aggregated`` the files
        combined into another file's series row, ``report.dropped`` the files of
        dropped series, and ``report.series`` holds the
        :class:`~mdprep.ingest.series.SeriesSummary` (problems per series).

    Rows whose values pydicom warned about are counted in ``report.notes``, one
    line per kind of warning (``2 file(s): unknown character set 'ISO_IR 999'; ...``).

    Raises
    ------
    UsageError
        For an unknown ``missing_patient``, ``level`` or tag, or a tag whose column the
        manifest reserves (:data:`RESERVED_COLUMNS`, and at series level
        :data:`mdprep.ingest.series.SERIES_COLUMNS`); ``update`` made with other
        options; ``drop_bad_series`` or a ``spacing_tolerance`` other than the default
        at instance level; ``update`` or ``record_signatures`` at series level; a
        ``spacing_tolerance`` outside (0, 0.5).
    InputError
        ``update`` has no signatures file, was made from another root, by another
        command, or was pseudonymised (:func:`mdprep.incremental.load_previous`).
    EmptyInputError
        When ``root`` holds no file, or no DICOM file at all: every file was skipped
        (not DICOM, special entries) or could not be opened (listed but missing).

    Examples
    --------
    >>> import tempfile
    >>> from mdprep.synthetic import write_dicom_tree
    >>> root = tempfile.mkdtemp()
    >>> _ = write_dicom_tree(root, patients=2, images_per_patient=2, shape=(8, 8))
    >>> result = ingest_dicom(root, workers=1)
    >>> result.report.ingested, result.manifest.frame["patient_id"].nunique()
    (4, 2)
    """
    if missing_patient not in MISSING_PATIENT_POLICIES:
        raise UsageError(
            f"missing_patient {missing_patient!r} is not one of {', '.join(MISSING_PATIENT_POLICIES)}",
            missing_patient=missing_patient,
        )
    series = _check_level(level, drop_bad_series, spacing_tolerance, update, record_signatures)
    reserved = RESERVED_COLUMNS + (SERIES_COLUMNS if series else ())
    user_columns = [c.column for c in header_columns(tags, reserved=reserved)[len(PRESET_TAGS) :]]
    columns = header_columns(list(tags) + (list(SERIES_TAGS) if series else []), reserved=reserved)
    options = {"tags": list(tags), "file_list": files is not None, "missing_patient": missing_patient, "allow_outside_root": allow_outside_root}
    if series:  # recorded only at series level: instance-level manifests keep their bytes
        options.update(level=level, drop_bad_series=drop_bad_series, spacing_tolerance=float(spacing_tolerance))
    schema = _schema(columns, with_source=missing_patient != "error")
    plan = None
    if files is None and update is None and not record_signatures:
        # Stream the walk into the workers: reading starts while the walk goes on. The
        # entries it does not yield (special files, bad names, ...) land in `refused`.
        root_abs, refused = check_root(root), []
        source: Iterable[str] = _counted(iter_tree(root_abs, refused, allow_outside_root=allow_outside_root), on_found)
    else:
        # Incremental (or recording signatures): list every file first, then read only what changed.
        root_abs = check_root(root)
        previous = load_previous(update, command="ingest dicom") if update is not None else None
        if previous is not None:
            check_compatible(previous, root=root_abs, options=options)
        if files is None:
            refused = []
            listed = list(iter_tree(root_abs, refused, allow_outside_root=allow_outside_root))
        else:
            listing = collect_files(root, files, allow_outside_root=allow_outside_root)
            refused, listed = listing.refused, listing.relpaths
        plan = plan_update(root_abs, listed, previous)
        source = plan.to_read
        if on_found:
            on_found(len(source))
    chunks: list[_Chunk] = map_chunks(
        functools.partial(_read_chunk, root=root_abs, columns=columns, missing_patient=missing_patient, frames=series),
        source,
        workers=workers,
        on_progress=on_progress,
        scheduler=scheduler,
    )
    signatures = None
    if plan is not None:
        signatures = signatures_for(plan, "ingest dicom", options, _results(chunks))
        if plan.reuse.any():
            chunks.append(_reused_chunk(plan, schema, missing_patient))
    found = sum(len(c.relpaths) for c in chunks) + len(refused)
    shown = escaped_path(os.fspath(root))
    if found == 0:
        raise EmptyInputError(f"no files found under {shown}; check the path", path=shown)
    error_rows = sorted(list(refused) + [e for c in chunks for e in c.errors])
    reasons = Counter(f"{o}:{t}" for _, o, t, _ in error_rows)
    if not any(len(c.batch) for c in chunks) and all(o == SKIPPED or t in _NOT_READ_TYPES for _, o, t, _ in error_rows):
        counts = ", ".join(f"{k.split(':', 1)[1]} {v}" for k, v in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
        if files is not None:
            where, hint = "listed", f"check the list, and that its paths are relative to {shown} or absolute"
        else:
            where, hint = f"found under {shown}", "check the path"
        raise EmptyInputError(
            f"no DICOM file among the {found} files {where} ({counts}); {hint} "
            "(for PNG or JPEG images use `mdprep ingest images`)",
            path=shown,
            reasons=dict(reasons),
        )
    invalid: Counter[str] = Counter()
    notes: Counter[str] = Counter()
    for c in chunks:
        invalid.update(c.invalid)
        notes.update(c.notes)
    # Chunks come back in the order the walk (or the sorted list) gave the files.
    table = pa.Table.from_batches([c.batch for c in chunks], schema=schema)
    if plan is not None and plan.reuse.any():
        # Rows read now and rows taken from OLD, back in the order a full run gives: the listing's.
        at = pd.Index(plan.relpaths, dtype="object").get_indexer(table.column("path").to_pandas())
        table = table.take(pa.array(np.argsort(at, kind="stable"), pa.int64()))
    frame = order_columns(frame_from_arrow(table))
    fallback_notes: list[str] = []
    if missing_patient != "error":
        frame, fallback_notes = borrow_patient_ids(frame, missing_patient)

    lenient = int(frame["lenient_read"].sum())
    summary = None
    if series:
        made = series_rows(
            frame,
            geometry={rel: g for c in chunks for rel, g in c.frames.items()},
            spacing_tolerance=spacing_tolerance,
            drop_bad_series=drop_bad_series,
            shared_columns=user_columns,
        )
        frame, summary = made.frame, made.summary
        error_rows = sorted(error_rows + made.errors)
        reasons = Counter(f"{o}:{t}" for _, o, t, _ in error_rows)
        fallback_notes += list(summary.notes)

    errors = errors_frame(error_rows)
    inputs = [listing_fingerprint(os.fspath(root), [r for c in chunks for r in c.relpaths], [z for c in chunks for z in c.sizes])]
    # Valid by construction (unique paths, a patient on every row); write_manifest checks again.
    manifest = Manifest(frame=frame, labels=(), root=root_abs, level="series" if level == "series" else "image").with_step(
        provenance_step("ingest dicom", options, inputs)
    )
    report = IngestReport(
        found=found,
        ingested=len(frame),
        skipped=sum(1 for _, o, _, _ in error_rows if o == SKIPPED),
        failed=sum(1 for _, o, _, _ in error_rows if o == FAILED),
        aggregated=summary.instances - summary.series if summary is not None else 0,
        dropped=summary.dropped_instances if summary is not None else 0,
        lenient=lenient,
        invalid_values=dict(sorted(invalid.items())),
        reasons=dict(sorted(reasons.items())),
        notes=tuple(fallback_notes) + tuple(f"{n} file(s): {note}" for note, n in sorted(notes.items())),
        update=plan.counts if plan is not None else None,
        series=summary,
    )
    return IngestResult(manifest=manifest, errors=errors, report=report, signatures=signatures)


def _check_level(level: str, drop_bad_series: bool, spacing_tolerance: float, update, record_signatures: bool) -> bool:
    """True for the series level; a UsageError for options that do not go with ``level``."""
    if level not in INGEST_LEVELS:
        raise UsageError(f"level {level!r} is not one of {', '.join(INGEST_LEVELS)}", level=level)
    if level == "series":
        check_spacing_tolerance(spacing_tolerance)
        if update is not None or record_signatures:
            raise UsageError(
                "--update and --record-signatures work at --level instance only (a series row depends on every file of "
                "its series); run the series level in full, or keep an instance-level manifest up to date",
                level=level,
            )
        return True
    given = [name for name, value in (("--drop-bad-series", drop_bad_series), ("--spacing-tolerance", spacing_tolerance != DEFAULT_SPACING_TOLERANCE)) if value]
    if given:
        raise UsageError(f"{' and '.join(given)} only {'applies' if len(given) == 1 else 'apply'} with --level series; add it, or leave them out", level=level)
    return False


def _results(chunks: Sequence[_Chunk]) -> pa.Table:
    """What reading each file of ``chunks`` gave besides its row, for the signatures (:func:`mdprep.incremental.results_table`)."""
    errors = {e[0]: e for c in chunks for e in c.errors}
    per_file = {rel: v for c in chunks for rel, v in c.per_file.items()}
    paths = [r for c in chunks for r in c.relpaths]
    outcome = [errors[r][1] if r in errors else OK for r in paths]
    return results_table(
        paths,
        [z for c in chunks for z in c.sizes],
        outcome,
        [errors[r][2] if r in errors else "" for r in paths],
        [errors[r][3] if r in errors else "" for r in paths],
        [per_file.get(r, ((), ()))[0] for r in paths],
        [per_file.get(r, ((), ()))[1] for r in paths],
    )


def _reused_chunk(plan: Plan, schema: pa.Schema, missing_patient: str) -> _Chunk:
    """The files an update does not read, as one chunk: OLD's rows, and their error rows and counts from the signatures."""
    old = plan.old_files()
    paths = old.column("path").to_pylist()
    outcome = old.column("outcome").to_pylist()
    ok = [p for p, o in zip(paths, outcome) if o == OK]
    assert plan.previous is not None
    rows = reused_rows(plan.previous, ok, schema.names).cast(schema)
    if missing_patient != "error":
        rows = _unborrowed(rows, missing_patient)
    batch = rows.combine_chunks().to_batches()[0] if len(rows) else pa.RecordBatch.from_pylist([], schema=schema)
    errors = [
        (p, o, t, m)
        for p, o, t, m in zip(paths, outcome, old.column("error_type").to_pylist(), old.column("message").to_pylist())
        if o != OK
    ]
    invalid = old.column("invalid").to_pylist()
    notes = old.column("notes").to_pylist()
    return _Chunk(
        batch,
        errors,
        dict(Counter(c for cols in invalid for c in cols)),
        paths,
        old.column("read_size").to_pylist(),
        dict(Counter(n for found in notes for n in found)),
        {p: (tuple(i), tuple(n)) for p, i, n in zip(paths, invalid, notes) if i or n},
    )


def _unborrowed(rows: pa.Table, missing_patient: str) -> pa.Table:
    """Undo :func:`borrow_patient_ids` on rows taken from OLD, which the update borrows again over the whole tree.

    A borrowed PatientID depends on the other files of the study (or series), some of
    which may have changed: the rows go back to the stand-in ``study:<UID>`` they had
    when read, as a full run has them before borrowing.
    """
    key, attribute, group = _FALLBACK_KEYS[missing_patient]
    source = rows.column(PATIENT_SOURCE_COLUMN)
    borrowed = pc.fill_null(pc.equal(source, f"{attribute} (PatientID of the {group})"), False)
    if not pc.any(borrowed).as_py():
        return rows
    stand_in = pc.binary_join_element_wise(f"{missing_patient}:", rows.column(key), "")
    at = rows.schema.get_field_index("patient_id")
    rows = rows.set_column(at, "patient_id", pc.if_else(borrowed, stand_in, rows.column(at)))
    at = rows.schema.get_field_index(PATIENT_SOURCE_COLUMN)
    return rows.set_column(at, PATIENT_SOURCE_COLUMN, pc.if_else(borrowed, attribute, source))
