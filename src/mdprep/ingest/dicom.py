"""``ingest dicom``: a tree of DICOM files into a manifest, one row per file, headers only."""

from __future__ import annotations

import functools
import os
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import pyarrow as pa

from ..dicom_header import FAILED, OK, SKIPPED, TagColumn, header_columns, read_header
from ..errors import EmptyInputError
from ..executor import map_chunks
from ..fileio import listing_fingerprint
from ..manifest import CANONICAL_TYPES, Manifest, frame_from_arrow, provenance_step
from . import IngestReport, IngestResult, canonical_sex, errors_frame
from ..manifest import order_columns
from .files import check_root, collect_files, iter_tree


@dataclass(frozen=True)
class _Chunk:
    """What one worker hands back for a chunk of files: rows already in Arrow form."""

    batch: pa.RecordBatch
    errors: list[tuple[str, str, str, str]]
    invalid: dict[str, int]
    relpaths: list[str]
    sizes: list[int]


def _schema(columns: Sequence[TagColumn]) -> pa.Schema:
    fields = [pa.field("image_id", pa.string()), pa.field("path", pa.string())]
    fields += [pa.field(c.column, CANONICAL_TYPES.get(c.column, c.arrow_type)) for c in columns]
    fields += [pa.field("lenient_read", pa.bool_()), pa.field("has_pixels", pa.bool_())]
    return pa.schema(fields)


def _read_chunk(relpaths: Sequence[str], *, root: str, columns: Sequence[TagColumn]) -> _Chunk:
    """Read a chunk of files and build its rows as one Arrow record batch (in the worker)."""
    ok_paths, rows, lenient, pixels, errors, sizes = [], [], [], [], [], []
    invalid: Counter[str] = Counter()
    sex_at = next((i for i, c in enumerate(columns) if c.column == "sex"), None)
    for rel in relpaths:
        res = read_header(os.path.join(root, rel), columns)
        sizes.append(res.size)
        if res.outcome == OK:
            ok_paths.append(rel)
            values = res.values
            if sex_at is not None:
                code, known = canonical_sex(values[sex_at])
                values = values[:sex_at] + (code,) + values[sex_at + 1 :]
                if not known:
                    invalid["sex"] += 1
            rows.append(values)
            lenient.append(res.lenient)
            pixels.append(res.has_pixels)
            for i in res.invalid:
                invalid[columns[i].column] += 1
        else:
            errors.append((rel, res.outcome, res.error_type, res.message))
    schema = _schema(columns)
    values = list(zip(*rows)) if rows else [()] * len(columns)
    arrays = [pa.array(ok_paths, pa.string()), pa.array(ok_paths, pa.string())]
    arrays += [pa.array(list(v), type=schema.field(i + 2).type) for i, v in enumerate(values)]
    arrays += [pa.array(lenient, pa.bool_()), pa.array(pixels, pa.bool_())]
    return _Chunk(pa.RecordBatch.from_arrays(arrays, schema=schema), errors, dict(invalid), list(relpaths), sizes)


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
    workers: int | None = None,
    on_found: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> IngestResult:
    """Read the headers of every DICOM file under ``root`` into a manifest.

    Parameters
    ----------
    root : path
        Folder walked recursively; manifest paths are relative to it.
    files : iterable of str, optional
        Read these files (absolute or relative to ``root``) instead of walking.
    tags : sequence of str
        Extra attributes (keywords or ``GGGG,EEEE``) besides the preset.
    workers : int, optional
        Processes; all cores by default.
    on_found, on_progress : callable, optional
        Told the number of files found, then the number read after each chunk.

    Returns
    -------
    IngestResult
        Rows for readable DICOM files; non-DICOM files (skipped) and unreadable or
        incomplete ones (failed) in ``errors``; counts in ``report``.

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
    columns = header_columns(tags)
    if files is None:
        # Stream the walk into the workers: reading starts while the walk goes on.
        root_abs, refused = check_root(root), []
        source: Iterable[str] = _counted(iter_tree(root_abs), on_found)
    else:
        listing = collect_files(root, files)
        root_abs, refused, source = listing.root, listing.refused, listing.relpaths
        if on_found:
            on_found(len(listing.relpaths))
    chunks: list[_Chunk] = map_chunks(
        functools.partial(_read_chunk, root=root_abs, columns=columns),
        source,
        workers=workers,
        on_progress=on_progress,
    )
    found = sum(len(c.relpaths) for c in chunks) + len(refused)
    if found == 0:
        raise EmptyInputError(f"no files found under {os.fspath(root)}; check the path", path=os.fspath(root))
    error_rows = sorted(list(refused) + [e for c in chunks for e in c.errors])
    invalid: Counter[str] = Counter()
    for c in chunks:
        invalid.update(c.invalid)
    # Chunks come back in the order the walk (or the sorted list) gave the files.
    table = pa.Table.from_batches([c.batch for c in chunks], schema=_schema(columns))
    frame = order_columns(frame_from_arrow(table))

    errors = errors_frame(error_rows)
    reasons = Counter(f"{o}:{t}" for _, o, t, _ in error_rows)
    inputs = [listing_fingerprint(os.fspath(root), [r for c in chunks for r in c.relpaths], [z for c in chunks for z in c.sizes])]
    options = {"tags": list(tags), "file_list": files is not None}
    # Valid by construction (unique paths, a patient on every row); write_manifest checks again.
    manifest = Manifest(frame=frame, labels=(), root=root_abs).with_step(
        provenance_step("ingest dicom", options, inputs)
    )
    report = IngestReport(
        found=found,
        ingested=len(frame),
        skipped=sum(1 for _, o, _, _ in error_rows if o == SKIPPED),
        failed=sum(1 for _, o, _, _ in error_rows if o == FAILED),
        lenient=int(frame["lenient_read"].sum()),
        invalid_values=dict(sorted(invalid.items())),
        reasons=dict(sorted(reasons.items())),
    )
    return IngestResult(manifest=manifest, errors=errors, report=report)
