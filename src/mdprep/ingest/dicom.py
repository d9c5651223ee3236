"""``ingest dicom``: a tree of DICOM files into a manifest, one row per file, headers only."""

from __future__ import annotations

import functools
import os
from collections import Counter
from typing import Callable, Iterable, Sequence

import pyarrow as pa

from ..dicom_header import FAILED, OK, SKIPPED, HeaderResult, TagColumn, header_columns, read_header
from ..executor import map_chunks
from ..fileio import listing_fingerprint
from ..manifest import CANONICAL_TYPES, Manifest, check, frame_from_arrow, provenance_step
from . import IngestReport, IngestResult, errors_frame, normalize_sex, order_columns
from .files import collect_files


def _read_chunk(relpaths: Sequence[str], *, root: str, columns: Sequence[TagColumn]) -> list[HeaderResult]:
    return [read_header(os.path.join(root, rel), columns) for rel in relpaths]


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
    listing = collect_files(root, files)
    if on_found:
        on_found(len(listing.relpaths))
    results: list[HeaderResult] = map_chunks(
        functools.partial(_read_chunk, root=listing.root, columns=columns),
        listing.relpaths,
        workers=workers,
        on_progress=on_progress,
    )
    ok_rows, ok_paths, lenient, has_pixels = [], [], [], []
    error_rows = list(listing.refused)
    invalid: Counter[str] = Counter()
    for rel, res in zip(listing.relpaths, results):
        if res.outcome == OK:
            ok_rows.append(res.values)
            ok_paths.append(rel)
            lenient.append(res.lenient)
            has_pixels.append(res.has_pixels)
            for i in res.invalid:
                invalid[columns[i].column] += 1
        else:
            error_rows.append((rel, res.outcome, res.error_type, res.message))

    arrays = {"image_id": pa.array(ok_paths, pa.string()), "path": pa.array(ok_paths, pa.string())}
    for i, col in enumerate(columns):
        values = [row[i] for row in ok_rows]
        arrays[col.column] = pa.array(values, type=CANONICAL_TYPES.get(col.column, col.arrow_type))
    arrays["lenient_read"] = pa.array(lenient, pa.bool_())
    arrays["has_pixels"] = pa.array(has_pixels, pa.bool_())
    frame = frame_from_arrow(pa.table(arrays))
    frame["sex"], bad_sex = normalize_sex(frame["sex"])
    if bad_sex:
        invalid["sex"] += bad_sex
    frame = order_columns(frame)

    errors = errors_frame(error_rows)
    reasons = Counter(f"{o}:{t}" for _, o, t, _ in error_rows)
    sizes = [r.size for r in results]
    inputs = [listing_fingerprint(os.fspath(root), listing.relpaths, sizes)]
    options = {"tags": list(tags), "file_list": files is not None}
    manifest = Manifest(frame=frame, labels=(), root=listing.root).with_step(
        provenance_step("ingest dicom", options, inputs)
    )
    check(manifest)
    report = IngestReport(
        found=listing.found,
        ingested=len(frame),
        skipped=sum(1 for _, o, _, _ in error_rows if o == SKIPPED),
        failed=sum(1 for _, o, _, _ in error_rows if o == FAILED),
        lenient=int(sum(lenient)),
        invalid_values=dict(sorted(invalid.items())),
        reasons=dict(sorted(reasons.items())),
    )
    return IngestResult(manifest=manifest, errors=errors, report=report)
