"""``ingest dicom --level series``: one manifest row per DICOM series, with volume checks.

:func:`series_rows` turns the rows of an instance-level ingest (one per file, read
with the geometry attributes of :data:`SERIES_TAGS`) into one row per
SeriesInstanceUID: the manifest is **series-level**. Everything is computed with
column operations over all files (and all frames of multi-frame files) at once:
one sort by series and by position along the slice normal, then group-bys. A
Python loop runs only over the frames of a multi-frame file (its functional
groups are pydicom objects, :func:`read_frame_geometry`) and over the few series
that span several folders.

Geometry
--------
Each series' orientation is the most common ImageOrientationPatient of its images
(rounded to 3 decimals); its slice normal is the cross product of the row and
column direction cosines. A slice's position is ImagePositionPatient projected on
that normal. ``orientation`` names the patient axis the normal is within
:data:`ORIENTATION_DEGREES` of (``axial``: z, ``coronal``: y, ``sagittal``: x),
else ``oblique``. ``spacing_between_slices`` is the median step between the
sorted positions (steps of duplicate positions left out): measured, not the
header's SpacingBetweenSlices, which is optional in CT and means another thing in
some MR sequences.

Checks (one boolean column each, all of them listed in ``series_problems``)
---------------------------------------------------------------------------
See :data:`PROBLEMS`. Each step between consecutive positions is compared with
the median step: a step within ``spacing_tolerance`` (a fraction of the median,
10% by default) of 1 is regular, within the tolerance of a whole number k >= 2 is
k - 1 missing slices, of at most :data:`DUPLICATE_MM` is a duplicate position,
anything else is irregular spacing. Localisers (ImageType LOCALIZER or SCOUT, or
the one image of an axial series whose normal points elsewhere) are left out of
the position checks and of ``orientation``, but count for ``mixed_orientation``
and ``mixed_size``. A series whose images do not all carry a position and an
orientation is ordered by InstanceNumber and its position checks are not run
(a note counts such series).
"""

from __future__ import annotations

import math
import posixpath
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from ..errors import MissingColumnError, UsageError
from ..manifest import frame_from_arrow, order_columns

#: Attributes read besides the preset (and any --tags) when the level is series.
SERIES_TAGS: tuple[str, ...] = (
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "SliceThickness",
    "InstanceNumber",
    "NumberOfFrames",
    "ImageType",
)
#: The instance-level columns those attributes give; used to build series rows, not kept as they are.
GEOMETRY_COLUMNS: tuple[str, ...] = (
    "image_position_patient",
    "image_orientation_patient",
    "slice_thickness",
    "instance_number",
    "number_of_frames",
    "image_type",
)
#: Two positions closer than this along the normal (millimetres) are the same position.
DUPLICATE_MM = 0.01
#: Volume problems: column name -> what flags a series.
PROBLEMS: dict[str, str] = {
    "missing_slices": "a gap of about 2 or more steps between positions, or a gap in InstanceNumber",
    "duplicate_positions": f"two images at the same position (within {DUPLICATE_MM} mm along the normal)",
    "irregular_spacing": "a step between positions off the median step by more than the tolerance, not explained by missing slices",
    "mixed_orientation": "images with different ImageOrientationPatient",
    "mixed_size": "images with different Rows or Columns",
    "mixed_sop_class": "images of different SOP classes",
    "localizer": "a localiser or scout among the images (ImageType LOCALIZER or SCOUT, or the one out-of-plane image of an axial series)",
    "mixed_patient": "images with different PatientID",
    "mixed_study": "images with different StudyInstanceUID",
}
#: Columns a series row has besides the instance-level ones it keeps.
SERIES_COLUMNS: tuple[str, ...] = (
    "instance_paths",
    "n_instances",
    "n_frames",
    "spacing_between_slices",
    "orientation",
    "multi_folder",
    *PROBLEMS,
    "series_problems",
)
DEFAULT_SPACING_TOLERANCE = 0.1
#: A normal within this angle of a patient axis names the orientation; beyond it, ``oblique``.
ORIENTATION_DEGREES = 10.0
#: Direction cosines differing by more than this are another orientation (``mixed_orientation``).
_ORIENTATION_EPS = 0.01
_LOCALIZER_WORDS = ("LOCALIZER", "SCOUT")
#: Columns taken from the first image (in slice order) that has a value.
_FIRST_VALUE = ("patient_id", "study_id", "accession", "view", "sex", "age", "study_date", "modality", "body_part", "birth_date", "patient_id_source")
#: Columns taken from the series' first image in slice order that is not a localiser.
_REPRESENTATIVE = ("sop_class_uid", "rows", "columns", "pixel_spacing", "slice_thickness", "photometric", "transfer_syntax")

#: Columns :func:`series_rows` reads from every instance row.
_NEEDED = ("path", "series_uid", "patient_id", "study_id", "sop_class_uid", "rows", "columns", "lenient_read", "has_pixels", *GEOMETRY_COLUMNS)

ErrorRow = tuple[str, str, str, str]


@dataclass(frozen=True)
class FrameGeometry:
    """Where each frame of a multi-frame file lies, from its functional groups.

    ``positions`` (frames x 3) and ``orientations`` (frames x 6) hold NaN where a
    frame gives none; ``pixel_spacing`` and ``slice_thickness`` come from the pixel
    measures (shared, else the first frame's), None when absent.
    """

    positions: np.ndarray
    orientations: np.ndarray
    pixel_spacing: tuple[float, float] | None = None
    slice_thickness: float | None = None


def _as_floats(value: Any, width: int) -> np.ndarray | None:
    """A DICOM value as ``width`` finite floats, or None."""
    if value is None:
        return None
    try:
        values = np.array([float(v) for v in (value if width > 1 else [value])], dtype=float)
    except (TypeError, ValueError):
        return None
    return values if values.shape == (width,) and np.isfinite(values).all() else None


def _item_value(item: Any, sequence: str, attribute: str, width: int) -> np.ndarray | None:
    """``item.sequence[0].attribute`` as ``width`` finite floats, or None."""
    seq = item.get(sequence) if item is not None else None
    return _as_floats(seq[0].get(attribute), width) if seq else None


def read_frame_geometry(fh: BinaryIO) -> FrameGeometry:
    """The positions and orientations of every frame of a multi-frame file (Enhanced CT/MR and the like).

    Read with pydicom up to the pixel data: the per-frame functional groups
    (PlanePositionSequence, PlaneOrientationSequence) first, the shared ones
    second, the top-level attributes last. Frames without a position get NaN.

    Examples
    --------
    >>> import io, tempfile, os
    >>> from mdprep.synthetic import write_ct_tree
    >>> p = write_ct_tree(tempfile.mkdtemp(), patients=1, slices=6, shape=(4, 4))
    >>> enhanced = next(s for s in p.series.values() if s["folder"].endswith("enhanced"))
    >>> with open(os.path.join(p.root, enhanced["folder"], "im0000.dcm"), "rb") as fh:
    ...     g = read_frame_geometry(fh)
    >>> g.positions[:, 2].tolist(), g.slice_thickness
    ([0.0, 2.5, 5.0, 7.5, 10.0, 12.5], 2.5)
    """
    import pydicom

    ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    per = ds.get("PerFrameFunctionalGroupsSequence") or []
    try:
        declared = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        declared = 1
    n = len(per) or max(declared, 1)
    top_position = _as_floats(ds.get("ImagePositionPatient"), 3)
    top_orientation = _as_floats(ds.get("ImageOrientationPatient"), 6)
    shared_position = _item_value(shared, "PlanePositionSequence", "ImagePositionPatient", 3)
    shared_orientation = _item_value(shared, "PlaneOrientationSequence", "ImageOrientationPatient", 6)
    positions = np.full((n, 3), np.nan)
    orientations = np.full((n, 6), np.nan)
    for i in range(n):
        item = per[i] if i < len(per) else None
        pos = _item_value(item, "PlanePositionSequence", "ImagePositionPatient", 3)
        ori = _item_value(item, "PlaneOrientationSequence", "ImageOrientationPatient", 6)
        pos = pos if pos is not None else shared_position if shared_position is not None else top_position
        ori = ori if ori is not None else shared_orientation if shared_orientation is not None else top_orientation
        if pos is not None:
            positions[i] = pos
        if ori is not None:
            orientations[i] = ori
    first = per[0] if len(per) else None
    spacing = _item_value(shared, "PixelMeasuresSequence", "PixelSpacing", 2)
    spacing = spacing if spacing is not None else _item_value(first, "PixelMeasuresSequence", "PixelSpacing", 2)
    thickness = _item_value(shared, "PixelMeasuresSequence", "SliceThickness", 1)
    thickness = thickness if thickness is not None else _item_value(first, "PixelMeasuresSequence", "SliceThickness", 1)
    return FrameGeometry(
        positions,
        orientations,
        tuple(float(v) for v in spacing) if spacing is not None else None,
        float(thickness[0]) if thickness is not None else None,
    )


@dataclass(frozen=True)
class SeriesSummary:
    """What :func:`series_rows` made: counts per problem, and what was dropped.

    Attributes
    ----------
    series : int
        Series rows written (after ``drop_bad_series``).
    instances, frames : int
        Files, and images (frames), in those rows.
    problems : dict
        Problem -> series flagged with it (before any dropping), in :data:`PROBLEMS` order; only problems found.
    flagged : int
        Series with at least one problem (before any dropping).
    dropped_series, dropped_instances : int
        Series removed by ``drop_bad_series``, and their files.
    without_series_uid : int
        Files without SeriesInstanceUID (failed rows).
    notes : tuple of str
        Information for the report.
    """

    series: int
    instances: int
    frames: int
    problems: Mapping[str, int] = field(default_factory=dict)
    flagged: int = 0
    dropped_series: int = 0
    dropped_instances: int = 0
    without_series_uid: int = 0
    notes: tuple[str, ...] = ()

    def problems_text(self) -> str:
        """``missing_slices 1, localizer 2``: the problems found and their series counts."""
        return ", ".join(f"{k} {v}" for k, v in self.problems.items())


@dataclass(frozen=True)
class SeriesResult:
    """The series rows, the error rows the series level adds, and the summary."""

    frame: pd.DataFrame
    errors: list[ErrorRow]
    summary: SeriesSummary


def check_spacing_tolerance(value: float) -> float:
    """``value`` if it is a usable ``spacing_tolerance`` (above 0, below 0.5), else a UsageError.

    At 0.5 or more a step of 1.5 times the median would be both a regular step and
    a missing slice.
    """
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 < value < 0.5):
        raise UsageError(
            f"--spacing-tolerance {value!r} is not a fraction of the slice step above 0 and below 0.5 "
            f"(the default, {DEFAULT_SPACING_TOLERANCE}, allows 10% of the median step); give one such as 0.1",
            spacing_tolerance=value,
        )
    return float(value)


def _list_array(values: pd.Series) -> pa.Array | None:
    """A list column as one Arrow list array, or None when it is empty or not a list column."""
    if not len(values):
        return None
    arr = pa.array(values, from_pandas=True)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr if pa.types.is_list(arr.type) else None


def _fixed_lists(values: pd.Series, width: int) -> np.ndarray:
    """A list column as an ``(n, width)`` float array; NaN rows where a value is missing or not ``width`` long."""
    out = np.full((len(values), width), np.nan)
    arr = _list_array(values)
    if arr is None:
        return out
    lengths = arr.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
    ok = lengths == width
    if ok.any():
        import pyarrow.compute as pc

        flat = pc.list_flatten(arr.filter(pa.array(ok))).cast(pa.float64()).to_numpy(zero_copy_only=False)
        out[ok] = flat.reshape(-1, width)
    return out


def _any_word(values: pd.Series, words: Sequence[str]) -> np.ndarray:
    """Rows of a list<string> column holding one of ``words`` (upper case, spaces stripped)."""
    import pyarrow.compute as pc

    hit = np.zeros(len(values), dtype=bool)
    arr = _list_array(values)
    if arr is None:
        return hit
    flat = pc.utf8_upper(pc.utf8_trim_whitespace(pc.list_flatten(arr).cast(pa.string())))
    found = pc.fill_null(pc.is_in(flat, value_set=pa.array(list(words))), False).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)
    hit[parents[found]] = True
    return hit


def _floats(values: pd.Series) -> np.ndarray:
    return pd.to_numeric(values, errors="coerce").astype("float64").to_numpy(na_value=np.nan)


def _arrow(values: pd.Series) -> pa.Array:
    arr = pa.array(values, from_pandas=True)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_large_string(arr.type) or pa.types.is_string_view(arr.type) or pa.types.is_null(arr.type):
        arr = arr.cast(pa.string())
    return arr


def _take(arr: pa.Array, index: np.ndarray) -> pa.Array:
    """``arr`` at ``index``; null where the index is -1."""
    return arr.take(pa.array(np.maximum(index, 0), type=pa.int64(), mask=index < 0))


def _first_where(mask_sorted: np.ndarray, codes_sorted: np.ndarray, order: np.ndarray, n_series: int) -> np.ndarray:
    """Per series, the instance (index before sorting) of its first sorted row where ``mask_sorted``; -1 if none."""
    out = np.full(n_series, -1, dtype=np.int64)
    at = np.flatnonzero(mask_sorted)
    if len(at):
        series, first = np.unique(codes_sorted[at], return_index=True)
        out[series] = order[at[first]]
    return out


def _per_series_any(codes: np.ndarray, mask: np.ndarray, n_series: int) -> np.ndarray:
    return np.bincount(codes[mask], minlength=n_series) > 0


def _distinct_per_series(codes: np.ndarray, keys: pd.DataFrame, n_series: int) -> np.ndarray:
    """How many distinct rows of ``keys`` (nulls not counted) each series has."""
    frame = keys.assign(_s=codes).dropna().drop_duplicates()
    return np.bincount(frame["_s"].to_numpy(dtype=np.int64), minlength=n_series)


def _unit(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 1e-6, v / norm, np.nan)


@dataclass(frozen=True)
class _Frames:
    """One row per image: a single-frame file, or one frame of a multi-frame file whose geometry was read."""

    file: np.ndarray  # the file (instance row) each frame belongs to
    series: np.ndarray  # its series code
    position: np.ndarray  # (frames, 3), NaN where unknown
    orientation: np.ndarray  # (frames, 6), NaN where unknown


def _frames(inst: pd.DataFrame, paths: np.ndarray, codes: np.ndarray, geometry: Mapping[str, FrameGeometry]) -> tuple[_Frames, list]:
    """The frame table, and the (file, geometry) pairs of the multi-frame files."""
    n = len(inst)
    position = _fixed_lists(inst["image_position_patient"], 3)
    orientation = _fixed_lists(inst["image_orientation_patient"], 6)
    multi = [(i, geometry[p]) for i, p in enumerate(paths) if p in geometry]
    k = np.ones(n, dtype=np.int64)
    for i, g in multi:
        k[i] = max(len(g.positions), 1)
    starts = np.concatenate([[0], np.cumsum(k)[:-1]]).astype(np.int64)
    file = np.repeat(np.arange(n), k)
    f_pos, f_ori = np.repeat(position, k, axis=0), np.repeat(orientation, k, axis=0)
    for i, g in multi:  # a loop over multi-frame files only
        at = slice(starts[i], starts[i] + k[i])
        f_pos[at] = np.where(np.isfinite(g.positions), g.positions, f_pos[at])
        f_ori[at] = np.where(np.isfinite(g.orientations), g.orientations, f_ori[at])
    return _Frames(file, codes[file], f_pos, f_ori), multi


@dataclass(frozen=True)
class _Orientation:
    """Per series: the modal orientation's unit normal, its name and whether images differ; per frame: localisers."""

    normal: np.ndarray  # (series, 3), NaN without an orientation
    name: np.ndarray  # axial, coronal, sagittal, oblique or None
    mixed: np.ndarray  # series with images of another orientation
    localizer_frame: np.ndarray  # frames that are localisers


def _orientations(frames: _Frames, typed_localizer: np.ndarray, n_series: int) -> _Orientation:
    """Each series' most common ImageOrientationPatient (rounded to 3 decimals), its normal and name, and the localisers."""
    s, ori = frames.series, frames.orientation
    has_ori = np.isfinite(ori).all(axis=1)
    names = [f"o{j}" for j in range(6)]
    tally = pd.DataFrame(np.round(ori[has_ori], 3) + 0.0, columns=names).assign(s=s[has_ori])
    tally = tally.groupby(["s", *names], sort=True).size().rename("n").reset_index()
    tally = tally.sort_values(["s", "n"], ascending=[True, False], kind="stable").drop_duplicates("s")
    modal = np.full((n_series, 6), np.nan)
    modal[tally["s"].to_numpy(dtype=np.int64)] = tally[names].to_numpy(dtype=float)
    normal = _unit(np.cross(modal[:, :3], modal[:, 3:]))
    cos_named = math.cos(math.radians(ORIENTATION_DEGREES))
    magnitude = np.abs(np.nan_to_num(normal))
    axis = np.argmax(magnitude, axis=1)
    name = np.where(magnitude[np.arange(n_series), axis] >= cos_named, np.array(["sagittal", "coronal", "axial"], dtype=object)[axis], "oblique")
    name = np.where(np.isfinite(normal).all(axis=1), name, None)
    differs = has_ori & (np.abs(ori - modal[s]).max(axis=1, initial=0.0) > _ORIENTATION_EPS)
    with np.errstate(invalid="ignore"):
        out_of_plane = has_ori & (np.abs((_unit(np.cross(ori[:, :3], ori[:, 3:])) * normal[s]).sum(axis=1)) < cos_named)
    single = (np.bincount(s[out_of_plane], minlength=n_series) == 1) & (np.bincount(s[has_ori], minlength=n_series) >= 3) & (name == "axial")
    localizer = typed_localizer[frames.file] | (out_of_plane & single[s])
    return _Orientation(normal, name, _per_series_any(s, differs, n_series), localizer)


def _positions(frames: _Frames, looks: _Orientation, n_series: int, tolerance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Positions along the normal (NaN for localisers), unmeasured series, the median step, and the step checks per series."""
    s = frames.series
    kept = ~looks.localizer_frame
    with np.errstate(invalid="ignore"):
        d = (frames.position * looks.normal[s]).sum(axis=1)
    d = np.where(kept & np.isfinite(d), d, np.nan)
    unmeasured = _per_series_any(s, kept & ~np.isfinite(d), n_series) | ~_per_series_any(s, kept, n_series)
    measured = np.isfinite(d) & ~unmeasured[s]
    m_series, m_d = s[measured], d[measured]
    by_position = np.lexsort((m_d, m_series))
    ss, dd = m_series[by_position], m_d[by_position]
    same = ss[1:] == ss[:-1]
    step, step_series = (dd[1:] - dd[:-1])[same], ss[1:][same]
    duplicate = step <= DUPLICATE_MM
    spacing = np.full(n_series, np.nan)
    if (~duplicate).any():
        medians = pd.Series(step[~duplicate]).groupby(step_series[~duplicate]).median()
        spacing[medians.index.to_numpy(dtype=np.int64)] = medians.to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = step / spacing[step_series]
    whole = np.rint(ratio)
    near = np.abs(ratio - whole) <= tolerance
    checks = {
        "duplicate_positions": _per_series_any(step_series, duplicate, n_series),
        "missing_slices": _per_series_any(step_series, ~duplicate & near & (whole >= 2), n_series),
        "irregular_spacing": _per_series_any(step_series, ~duplicate & ~(near & (whole >= 1)), n_series),
    }
    return d, unmeasured, spacing, checks


def _number_gaps(codes: np.ndarray, number: np.ndarray, localizer: np.ndarray, n_series: int) -> np.ndarray:
    """Series whose InstanceNumbers (localisers left out) skip a number."""
    numbered = np.isfinite(number) & ~localizer
    by_number = np.lexsort((number[numbered], codes[numbered]))
    ns, nn = codes[numbered][by_number], number[numbered][by_number]
    gap = (ns[1:] == ns[:-1]) & (nn[1:] - nn[:-1] > 1)
    return _per_series_any(ns[1:], gap, n_series)


def _folders(paths: np.ndarray, codes: np.ndarray, first: np.ndarray, n_series: int) -> tuple[np.ndarray, np.ndarray]:
    """Each series' folder (the longest common one when its files lie in several), and how many folders it spans."""
    text = pd.Series(paths, dtype="str")
    folder = text.str.replace(r"/[^/]*$", "", regex=True).where(text.str.contains("/", regex=False), ".").replace("", ".")
    folders = pd.DataFrame({"s": codes, "f": folder.to_numpy(dtype=object)}).drop_duplicates()
    n_folders = np.bincount(folders["s"].to_numpy(dtype=np.int64), minlength=n_series)
    series_folder = folder.to_numpy(dtype=object)[first] if len(paths) else np.array([], dtype=object)
    for s in np.flatnonzero(n_folders > 1):  # a loop over the (few) series spread over several folders
        parts = folders.loc[folders["s"] == s, "f"].tolist()
        series_folder[s] = posixpath.commonpath(["" if f == "." else f for f in parts]) or "."
    return series_folder, n_folders


def series_rows(
    instances: pd.DataFrame,
    *,
    geometry: Mapping[str, FrameGeometry] | None = None,
    spacing_tolerance: float = DEFAULT_SPACING_TOLERANCE,
    drop_bad_series: bool = False,
    shared_columns: Sequence[str] = (),
) -> SeriesResult:
    """One series-level manifest row per SeriesInstanceUID, from instance-level rows.

    The result is a **series-level** manifest frame (the manifest's level is
    ``series``): ``image_id`` is the SeriesInstanceUID, ``path`` the series' folder
    relative to the root (the longest common folder when its files lie in several,
    with ``multi_folder`` true), ``instance_paths`` its files in slice order, and
    ``n_instances``, ``n_frames``, ``spacing_between_slices``, ``orientation``, one
    boolean column per :data:`PROBLEMS` entry and ``series_problems`` (the list of
    the problems found). Patient and study columns are the first value the series'
    images carry in slice order (images that disagree on patient or study flag
    ``mixed_patient`` or ``mixed_study``); ``rows``, ``columns``, ``pixel_spacing``,
    ``slice_thickness``, ``sop_class_uid``, ``photometric`` and ``transfer_syntax``
    are the first non-localiser image's. ``lenient_read`` is true when any file was
    read leniently, ``has_pixels`` when every file has pixel data.

    Parameters
    ----------
    instances : DataFrame
        Rows of ``ingest_dicom`` at instance level, with the columns of
        :data:`GEOMETRY_COLUMNS` (see :data:`SERIES_TAGS`), in a fixed order (the
        walk's): series come out in the order of their first file.
    geometry : mapping, optional
        ``path`` -> :class:`FrameGeometry` of the multi-frame files (whose
        positions are in functional groups the header reader does not read).
    spacing_tolerance : float
        How far a step between positions may be from the median step (or from a
        whole multiple of it, for missing slices), as a fraction of the median.
    drop_bad_series : bool
        Leave out every series with a problem; each of its files becomes an error
        row with outcome ``dropped`` (``BadSeries``).
    shared_columns : sequence of str
        Other columns to keep (``--tags``): the value every image of the series
        shares, null where they differ (a note counts such series).

    Returns
    -------
    SeriesResult
        The frame, error rows (files without SeriesInstanceUID fail with
        ``MissingSeriesUID``; files of dropped series), and a :class:`SeriesSummary`.

    Examples
    --------
    >>> import tempfile
    >>> from mdprep.synthetic import write_ct_tree
    >>> from mdprep.ingest import ingest_dicom
    >>> p = write_ct_tree(tempfile.mkdtemp(), patients=1, slices=6, shape=(4, 4), plant_problems=False)
    >>> r = ingest_dicom(p.root, level="series", workers=1)
    >>> row = r.manifest.frame.iloc[0]
    >>> int(row["n_instances"]), float(row["spacing_between_slices"]), row["orientation"], list(row["series_problems"])
    (6, 2.5, 'axial', [])
    """
    check_spacing_tolerance(spacing_tolerance)
    missing = [c for c in _NEEDED if c not in instances.columns]
    if missing:
        raise MissingColumnError(missing, list(instances.columns), hint="series_rows takes the rows ingest_dicom reads with SERIES_TAGS")
    geometry = geometry or {}
    uid = instances["series_uid"]
    has_uid = uid.notna().to_numpy(dtype=bool)
    errors: list[ErrorRow] = [
        (
            p,
            "failed",
            "MissingSeriesUID",
            "the file has no SeriesInstanceUID (0020,000E), by which --level series groups files; "
            "ingest it with --level instance",
        )
        for p in instances.loc[~has_uid, "path"].astype("str")
    ]
    inst = instances.loc[has_uid].reset_index(drop=True)
    n = len(inst)
    codes, uniques = pd.factorize(inst["series_uid"].astype("str"))
    codes = codes.astype(np.int64)
    n_series = len(uniques)
    paths = inst["path"].astype("str").to_numpy(dtype=object)

    frames, multi = _frames(inst, paths, codes, geometry)
    looks = _orientations(frames, _any_word(inst["image_type"], _LOCALIZER_WORDS), n_series)
    inst_localizer = np.bincount(frames.file[looks.localizer_frame], minlength=n) > 0
    d, unmeasured, spacing, steps = _positions(frames, looks, n_series, spacing_tolerance)
    number = _floats(inst["instance_number"])
    size_keys = pd.DataFrame({"r": _floats(inst["rows"]), "c": _floats(inst["columns"])})
    flags = {
        "missing_slices": steps["missing_slices"] | _number_gaps(codes, number, inst_localizer, n_series),
        "duplicate_positions": steps["duplicate_positions"],
        "irregular_spacing": steps["irregular_spacing"],
        "mixed_orientation": looks.mixed,
        "mixed_size": _distinct_per_series(codes, size_keys, n_series) > 1,
        "mixed_sop_class": _distinct_per_series(codes, inst[["sop_class_uid"]].astype("str"), n_series) > 1,
        "localizer": _per_series_any(frames.series, looks.localizer_frame, n_series),
        "mixed_patient": _distinct_per_series(codes, inst[["patient_id"]].astype("str"), n_series) > 1,
        "mixed_study": _distinct_per_series(codes, inst[["study_id"]].astype("str"), n_series) > 1,
    }
    matrix = np.column_stack([flags[p] for p in PROBLEMS]) if n_series else np.zeros((0, len(PROBLEMS)), dtype=bool)
    flagged = matrix.any(axis=1)

    # ---- slice order of the files: position (a multi-frame file by its first frame), then InstanceNumber, then the walk
    d_file = pd.Series(d).groupby(frames.file).min().reindex(range(n)).to_numpy(dtype=float)
    d_file = np.where(inst_localizer | unmeasured[codes], np.nan, d_file)
    order = np.lexsort((
        np.arange(n),
        np.nan_to_num(number), ~np.isfinite(number),
        np.nan_to_num(d_file), ~np.isfinite(d_file),
        inst_localizer,
        codes,
    ))
    codes_sorted = codes[order]
    counts = np.bincount(codes, minlength=n_series)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    first = _first_where(np.ones(n, dtype=bool), codes_sorted, order, n_series)
    representative = _first_where(~inst_localizer[order], codes_sorted, order, n_series)
    representative = np.where(representative >= 0, representative, first)
    series_folder, n_folders = _folders(paths, codes, first, n_series)
    frames_per_file = _floats(inst["number_of_frames"])
    frames_per_file = np.where(np.isfinite(frames_per_file) & (frames_per_file >= 1), frames_per_file, 1).astype(np.int64)

    # ---- columns
    columns: dict[str, pa.Array] = {}
    uids = pa.array(np.asarray(uniques, dtype=object), type=pa.string())
    columns["image_id"] = uids
    columns["path"] = pa.array(series_folder, type=pa.string())
    columns["series_uid"] = uids
    for col in _FIRST_VALUE:
        if col in inst.columns:
            valid = inst[col].notna().to_numpy(dtype=bool)[order]
            columns[col] = _take(_arrow(inst[col]), _first_where(valid, codes_sorted, order, n_series))
    for col in _REPRESENTATIVE:
        if col in inst.columns:
            columns[col] = _take(_arrow(inst[col]), representative)
    _fill_from_geometry(columns, representative, multi)
    columns["instance_paths"] = pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), pa.array(paths[order], type=pa.string()))
    columns["n_instances"] = pa.array(counts, type=pa.int64())
    columns["n_frames"] = pa.array(np.bincount(codes, weights=frames_per_file, minlength=n_series).astype(np.int64), type=pa.int64())
    columns["spacing_between_slices"] = pa.array(spacing, type=pa.float64(), from_pandas=True)
    columns["orientation"] = pa.array(looks.name, type=pa.string())
    lenient = inst["lenient_read"].fillna(False).to_numpy(dtype=bool)
    pixels = inst["has_pixels"].fillna(False).to_numpy(dtype=bool)
    columns["lenient_read"] = pa.array(_per_series_any(codes, lenient, n_series))
    columns["has_pixels"] = pa.array(~_per_series_any(codes, ~pixels, n_series))
    columns["multi_folder"] = pa.array(n_folders > 1)
    for j, problem in enumerate(PROBLEMS):
        columns[problem] = pa.array(matrix[:, j])
    names = np.array(list(PROBLEMS), dtype=object)
    problem_offsets = np.concatenate([[0], np.cumsum(matrix.sum(axis=1))]).astype(np.int32)
    columns["series_problems"] = pa.ListArray.from_arrays(
        pa.array(problem_offsets, type=pa.int32()), pa.array(np.tile(names, n_series)[matrix.ravel()], type=pa.string())
    )
    notes: list[str] = []
    for col in shared_columns:
        if col in inst.columns:
            arr, differ = _shared_value(inst[col], codes, first, n_series)
            columns[col] = arr
            if differ:
                notes.append(f"{col!r} differs between the images of {differ} series: null there (a series row holds a value all its images share)")

    table = pa.table(columns)
    frame = order_columns(frame_from_arrow(table))

    problem_counts = {p: int(flags[p].sum()) for p in PROBLEMS if flags[p].any()}
    if unmeasured.any():
        notes.append(
            f"{int(unmeasured.sum())} series whose images do not all carry ImagePositionPatient and ImageOrientationPatient: "
            "slices ordered by InstanceNumber, spacing_between_slices not measured, no position checks"
        )
    if (n_folders > 1).any():
        notes.append(f"{int((n_folders > 1).sum())} series have files in several folders: path is their common folder (multi_folder)")
    if multi:
        notes.append(f"{len(multi)} multi-frame file(s): frame positions read from their functional groups")
    dropped_series = dropped_instances = 0
    if drop_bad_series and flagged.any():
        why = np.array([", ".join(names[row]) for row in matrix], dtype=object)  # one text per series
        dropped_file = flagged[codes]
        errors += [
            (p, "dropped", "BadSeries", f"its series was dropped by --drop-bad-series ({w})")
            for p, w in zip(paths[dropped_file], why[codes[dropped_file]])
        ]
        dropped_series, dropped_instances = int(flagged.sum()), int(dropped_file.sum())
        frame = frame.loc[~flagged].reset_index(drop=True)
    kept = ~flagged if drop_bad_series else np.ones(n_series, dtype=bool)
    summary = SeriesSummary(
        series=len(frame),
        instances=int(counts[kept].sum()),
        frames=int(frame["n_frames"].sum()) if len(frame) else 0,
        problems=problem_counts,
        flagged=int(flagged.sum()),
        dropped_series=dropped_series,
        dropped_instances=dropped_instances,
        without_series_uid=int((~has_uid).sum()),
        notes=tuple(notes),
    )
    return SeriesResult(frame, errors, summary)


def _fill_from_geometry(columns: dict[str, pa.Array], representative: np.ndarray, multi: Sequence[tuple[int, FrameGeometry]]) -> None:
    """Pixel spacing and slice thickness of multi-frame representatives from their pixel measures, where the header had none."""
    if not multi:
        return
    by_instance = dict(multi)
    for name, attr in (("pixel_spacing", "pixel_spacing"), ("slice_thickness", "slice_thickness")):
        if name not in columns:
            continue
        values = columns[name].to_pylist()
        changed = False
        for s, i in enumerate(representative):  # a loop over series, only when multi-frame files are present
            g = by_instance.get(int(i))
            if g is not None and values[s] is None and getattr(g, attr) is not None:
                values[s] = list(getattr(g, attr)) if name == "pixel_spacing" else getattr(g, attr)
                changed = True
        if changed:
            columns[name] = pa.array(values, type=columns[name].type)


def _shared_value(values: pd.Series, codes: np.ndarray, first: np.ndarray, n_series: int) -> tuple[pa.Array, int]:
    """The value all images of each series share (null where they differ), and how many series differ."""
    key = values.astype("str").where(values.notna(), "\x00null")
    distinct = pd.DataFrame({"s": codes, "k": key.to_numpy(dtype=object)}).drop_duplicates()
    differ = np.bincount(distinct["s"].to_numpy(dtype=np.int64), minlength=n_series) > 1
    pick = np.where(differ, -1, first)
    return _take(_arrow(values), pick), int(differ.sum())


__all__ = [
    "DEFAULT_SPACING_TOLERANCE",
    "FrameGeometry",
    "GEOMETRY_COLUMNS",
    "PROBLEMS",
    "SERIES_COLUMNS",
    "SERIES_TAGS",
    "SeriesResult",
    "SeriesSummary",
    "check_spacing_tolerance",
    "read_frame_geometry",
    "series_rows",
]
