"""``ingest images``: PNG/JPEG trees where patient, study and view come from the path."""

from __future__ import annotations

import functools
import os
import re
import stat
import warnings
from collections import Counter
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from ..errors import EmptyInputError, UsageError, examples_text
from ..executor import map_chunks
from ..fileio import listing_fingerprint, special_file_kind
from ..manifest import Manifest, check, provenance_step
from . import IngestReport, IngestResult, errors_frame, extract_groups
from ..manifest import order_columns
from .files import collect_files, escaped_path

#: File name endings read as images (case-insensitive).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: Named groups that map to canonical columns.
_GROUP_COLUMNS = {"patient": "patient_id", "study": "study_id", "view": "view"}


def compile_path_regex(pattern: str) -> re.Pattern:
    """Compile ``pattern`` and insist on a named group ``patient``.

    >>> compile_path_regex(r"(?P<patient>patient\\d+)/").groupindex["patient"]
    1
    """
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise UsageError(f"--patient-regex {pattern!r} is not a valid regular expression: {exc}", pattern=pattern) from exc
    if "patient" not in regex.groupindex:
        raise UsageError(
            f"--patient-regex {pattern!r} has no named group 'patient'; write it as (?P<patient>...), for example "
            r"'(?P<patient>patient\d+)/(?P<study>study\d+)/'",
            pattern=pattern,
        )
    return regex


def _read_image_headers(relpaths: Sequence[str], *, root: str) -> list[tuple]:
    """Width, height, mode and format from each image's header; no pixels are decoded.

    An image whose size PIL considers a decompression bomb (more than
    ``PIL.Image.MAX_IMAGE_PIXELS`` pixels, warning or error alike) fails with
    ``DecompressionBomb``: every later step that decodes it would run out of memory.
    FIFOs, sockets and devices are skipped without being read; any other error is
    the file's error row, never the run's.
    """
    from PIL import Image

    out = []
    for rel in relpaths:
        path = os.path.join(root, rel)
        size = 0
        try:
            # Non-blocking, so that a FIFO listed by mistake is seen for what it is instead of hanging.
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            with open(fd, "rb") as fh:
                st = os.fstat(fd)
                if stat.S_ISDIR(st.st_mode):
                    out.append(("failed", 0, None, None, None, None, "IsADirectoryError", "a folder, not a file"))
                    continue
                if not stat.S_ISREG(st.st_mode):
                    kind = special_file_kind(st.st_mode)
                    out.append(("skipped", 0, None, None, None, None, kind, f"not a regular file ({kind}); not read"))
                    continue
                size = st.st_size
                with warnings.catch_warnings():
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    with Image.open(fh) as im:
                        out.append(("ok", size, im.size[0], im.size[1], im.mode, im.format, "", ""))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            out.append(("failed", size, None, None, None, None, "DecompressionBomb", str(exc)))
        except Exception as exc:  # noqa: BLE001 - any reader failure is this file's error row
            out.append(("failed", size, None, None, None, None, type(exc).__name__, str(exc) or repr(exc)))
    return out


def _no_match_error(regex: re.Pattern, images: pd.Series) -> UsageError:
    examples = examples_text(images.head(3).tolist(), len(images), limit=3)
    return UsageError(
        f"--patient-regex {regex.pattern!r} matches none of the {len(images)} image paths, for example {examples}; "
        "it is searched in each path relative to ROOT, so write it for paths like these",
        pattern=regex.pattern,
        examples=images.head(3).tolist(),
    )


def ingest_images(
    root: str | os.PathLike,
    *,
    patient_regex: str,
    files: Iterable[str] | None = None,
    workers: int | None = None,
    on_found: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> IngestResult:
    """Index a folder of PNG/JPEG images into a manifest.

    Patient, study and view come from the named groups ``patient`` (required),
    ``study`` and ``view`` of ``patient_regex``, searched in each file's path
    relative to ``root``; any other named group becomes a column of its own. A
    study id is qualified by its patient (``patient00001/study1``) because public
    sets number studies per patient. Width and height come from the image header.

    Files with other endings are skipped; images whose path does not match the
    regex, or whose header cannot be read (decompression bombs included), fail with
    a row in ``errors``. Special entries of the tree are counted as in
    :func:`mdprep.ingest.files.iter_tree`.

    Raises
    ------
    UsageError
        When ``patient_regex`` is invalid, has no ``patient`` group, or matches none
        of the image paths (the message shows some of them).
    EmptyInputError
        When no file under ``root`` is an image.

    Examples
    --------
    >>> import tempfile
    >>> from mdprep.synthetic import write_image_tree
    >>> root = tempfile.mkdtemp()
    >>> _ = write_image_tree(root, patients=2, studies=1)
    >>> r = ingest_images(root, patient_regex=r"(?P<patient>patient\\d+)/(?P<study>study\\d+)/", workers=1)
    >>> sorted(r.manifest.frame["patient_id"].unique())
    ['patient00000', 'patient00001']
    """
    regex = compile_path_regex(patient_regex)
    listing = collect_files(root, files)
    rels = pd.Series(listing.relpaths, dtype="str")
    is_image = rels.str.lower().str.endswith(IMAGE_EXTENSIONS).to_numpy(dtype=bool) if len(rels) else np.zeros(0, bool)
    if not is_image.any():
        shown = escaped_path(os.fspath(root))
        others = rels.tolist() + [row[0] for row in listing.refused]
        raise EmptyInputError(
            f"none of the {listing.found} entries under {shown} is an image ({', '.join(IMAGE_EXTENSIONS)}), for example "
            f"{examples_text(others[:3], len(others), limit=3)}; for DICOM files use `mdprep ingest dicom`",
            path=shown,
        )
    groups_all, matched = extract_groups(rels, regex)
    if not matched[is_image].any():
        raise _no_match_error(regex, rels[is_image])
    to_read = rels[is_image & matched].tolist()
    if on_found:
        on_found(len(to_read))
    parts = map_chunks(functools.partial(_read_image_headers, root=listing.root), to_read, workers=workers, on_progress=on_progress)
    headers = [h for part in parts for h in part]

    error_rows = list(listing.refused)
    error_rows += [(r, "skipped", "NotImage", f"not one of {', '.join(IMAGE_EXTENSIONS)}") for r in rels[~is_image]]
    error_rows += [
        (r, "failed", "PatternMismatch", f"the path does not match --patient-regex {regex.pattern!r}")
        for r in rels[is_image & ~matched]
    ]
    ok_mask = np.array([h[0] == "ok" for h in headers], dtype=bool)
    error_rows += [(rel, h[0], h[6], h[7]) for rel, h in zip(to_read, headers) if h[0] != "ok"]

    read_ok = np.zeros(len(rels), dtype=bool)
    read_ok[np.flatnonzero(is_image & matched)[ok_mask]] = True
    ok_paths = rels[read_ok].reset_index(drop=True)
    groups = groups_all[read_ok].reset_index(drop=True)
    frame = pd.DataFrame({"image_id": ok_paths, "path": ok_paths})
    for name in regex.groupindex:
        frame[_GROUP_COLUMNS.get(name, name)] = groups[name]
    if "study_id" in frame.columns:
        frame["study_id"] = (frame["patient_id"] + "/" + frame["study_id"]).where(frame["study_id"].notna())
    ok_headers = [h for h in headers if h[0] == "ok"]
    frame["width"] = pd.array([h[2] for h in ok_headers], dtype="Int32")
    frame["height"] = pd.array([h[3] for h in ok_headers], dtype="Int32")
    frame["color_mode"] = pd.Series([h[4] for h in ok_headers], dtype="str")
    frame["format"] = pd.Series([h[5] for h in ok_headers], dtype="str")
    frame = order_columns(frame.reset_index(drop=True))

    empty_patient = frame["patient_id"].isna() | (frame["patient_id"] == "")
    if empty_patient.any():
        bad = frame.loc[empty_patient, "image_id"].tolist()
        error_rows += [(r, "failed", "PatternMismatch", "the 'patient' group matched an empty string") for r in bad]
        frame = frame.loc[~empty_patient].reset_index(drop=True)

    sizes = [h[1] for h in headers]
    inputs = [listing_fingerprint(os.fspath(root), to_read, sizes)]
    options = {"patient_regex": regex.pattern, "file_list": files is not None}
    manifest = Manifest(frame=frame, labels=(), root=listing.root).with_step(provenance_step("ingest images", options, inputs))
    check(manifest)
    reasons = Counter(f"{o}:{t}" for _, o, t, _ in error_rows)
    report = IngestReport(
        found=listing.found,
        ingested=len(frame),
        skipped=sum(1 for _, o, _, _ in error_rows if o == "skipped"),
        failed=sum(1 for _, o, _, _ in error_rows if o == "failed"),
        reasons=dict(sorted(reasons.items())),
    )
    return IngestResult(manifest=manifest, errors=errors_frame(sorted(error_rows)), report=report)
