"""``ingest table``: dataset label and metadata tables (NIH, CheXpert, MIMIC-CXR, any CSV/TSV/Parquet)."""

from __future__ import annotations

import os
import re
import shlex
import warnings
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from ..errors import InputError, ManifestValidationError, MdprepWarning, MissingColumnError, UsageError, Violation, examples_text
from ..labels import (
    aggregate_labels,
    apply_blank_policy,
    apply_label_map,
    apply_uncertain_policy,
    coerce_label_values,
    derive_labels,
    find_column,
    label_key,
    labels_from_lists,
    rows_text,
)
from ..choices import PRESETS  # noqa: F401 - offered here, as before
from ..manifest import CANONICAL_TYPES, REQUIRED_COLUMNS, Manifest, check, frame_from_arrow, order_columns, validate_frame
from . import UNKNOWN_SEX, IngestReport, IngestResult, empty_errors, extract_groups, normalize_sex
from ._arrow import distinct, is_text, stripped
from .table_io import read_table
from .table_spec import (
    AGGREGATE_HINT,
    CHEXPERT_HINT,
    CHEXPERT_LABELS,
    CHEXPERT_PATH,
    CHEXPERT_READ,
    CHEXPERT_RENAMES,
    CHEXPERT_TEXT,
    ID_COLUMNS,
    NIH_HINT,
    NIH_LABEL_COLUMNS,
    NIH_RENAMES,
    NIH_REQUIRED,
    NIH_TEXT,
    blank_policies,
    check_label_names,
    label_map_notes,
    label_origin,
    manifest_root,
    options_signature,
    provenance,
    require_columns,
    table_options,
)
from .table_spec import COLUMN_TARGETS, NIH_LABELS, parse_column_specs  # noqa: F401 - offered here, as before


# ----------------------------------------------------------------------------- canonical spellings

#: Usual spellings of canonical metadata in public tables. The generic preset maps a column
#: to its canonical name when the names match ignoring case, spaces, underscores and a
#: ``_DICOM`` suffix (PadChest's ``PatientSex_DICOM``), the canonical column is absent and
#: no option claims it.
CANONICAL_SPELLINGS: dict[str, tuple[str, ...]] = {
    "patient_id": ("PatientID", "patientId", "Patient ID", "subject_id"),
    "study_id": ("StudyInstanceUID", "StudyID"),
    "series_uid": ("SeriesInstanceUID",),
    "sop_uid": ("SOPInstanceUID",),
    "accession": ("AccessionNumber", "Accession Number"),
    "view": ("ViewPosition", "View Position"),
    "sex": ("PatientSex", "Patient Gender", "Sex", "gender"),
    "age": ("PatientAge", "Patient Age", "Age"),
    "study_date": ("StudyDate", "Study Date"),
}
#: Canonical columns whose source is read as text (identifiers keep their zeros; dates their digits).
_TEXT_TARGETS = ("image_id", "path", "patient_id", "study_id", "series_uid", "sop_uid", "accession", "study_date")
#: Columns an aggregated image must agree on across its rows.
_ONE_PER_IMAGE = ("patient_id", "path", "study_id")
#: Canonical columns whose source text is kept, under its own name, when some of it does not parse.
_PARSED_TARGETS = ("sex", "age", "study_date")
#: The largest fold number (``fold`` is int16).
_MAX_FOLD = np.iinfo(np.int16).max


def _spelling_key(name: str) -> str:
    """How column spellings are matched: as label names are (:func:`~mdprep.labels.label_key`), less a ``_DICOM`` suffix."""
    return label_key(re.sub(r"_dicom$", "", str(name), flags=re.IGNORECASE))


_SPELLING_INDEX = {_spelling_key(v): target for target, names in CANONICAL_SPELLINGS.items() for v in names}
_TEXT_SPELLINGS = [
    name + suffix for t in _TEXT_TARGETS for name in (t, *CANONICAL_SPELLINGS.get(t, ())) for suffix in ("", "_DICOM")
]


# ----------------------------------------------------------------------------- presets


class _Parsed(NamedTuple):
    """What a preset read, row for row.

    ``frame`` holds the canonical and other columns, ``labels`` the label columns
    (kept apart until their names are final, so a label may be named like another
    column until ``--label-map`` renames it), ``source`` the table as read (from which
    ``--label-when``, ``--col`` and ``--reader-col`` take their columns) and
    ``origins`` the source column of each canonical column that was renamed.
    """

    frame: pd.DataFrame
    labels: pd.DataFrame
    notes: list[str]
    source: pd.DataFrame
    origins: dict[str, str]


def _nih(path: str, encoding: str, sep: str | None, text_columns: Sequence[str], first_line: int | None) -> _Parsed:
    table = read_table(path, sep=sep, string_columns=[*NIH_TEXT, *text_columns], encoding=encoding)
    require_columns(table, NIH_REQUIRED, path, NIH_HINT)
    src = frame_from_arrow(table)
    labels, names, _ = labels_from_lists(
        src["Finding Labels"], sep="|", known=NIH_LABEL_COLUMNS, column="Finding Labels", path=path, first_line=first_line
    )
    frame = pd.DataFrame({"image_id": src["Image Index"], "path": src["Image Index"], "patient_id": src["Patient ID"]})
    notes = []
    extra = [n for n in names if n not in NIH_LABEL_COLUMNS]
    if extra:
        notes.append(f"labels not in the NIH list: {', '.join(extra)}")
    origins = {}
    for source, target in NIH_RENAMES.items():
        if source in src.columns:
            frame[target] = src[source]
            origins[target] = source
    return _Parsed(frame, labels, notes, src, origins)


def _chexpert(
    path: str, encoding: str, sep: str | None, text_columns: Sequence[str], first_line: int | None, column_map: Mapping[str, str]
) -> _Parsed:
    table = read_table(path, sep=sep, string_columns=[*CHEXPERT_TEXT, *text_columns], encoding=encoding)
    require_columns(table, ["Path", *CHEXPERT_LABELS], path, CHEXPERT_HINT)
    src = frame_from_arrow(table)
    parts, matched = extract_groups(src["Path"], CHEXPERT_PATH)
    bad = pd.Series(~matched, index=src.index)
    if bad.any():
        rows = np.flatnonzero(bad.to_numpy())
        raise InputError(
            f"{len(rows)} Path value(s) in {path} have no patientNNNNN/studyN/ part "
            f"({examples_text(src['Path'][bad].tolist(), len(rows))}; {rows_text(rows[:5], len(rows), first_line)}); "
            "fix them or use --preset generic",
            path=path,
            rows=rows[:20].tolist(),
        )
    frame = pd.DataFrame({"image_id": src["Path"], "path": src["Path"], "patient_id": parts["patient"]})
    frame["study_id"] = parts["patient"] + "/" + parts["study"]
    if "AP/PA" in src.columns:
        view = src["AP/PA"]
        if "Frontal/Lateral" in src.columns:
            view = view.where(view.notna(), src["Frontal/Lateral"].str.upper().where(src["Frontal/Lateral"] == "Lateral"))
        frame["view"] = view
    origins = {}
    for source, target in CHEXPERT_RENAMES.items():
        if source in src.columns:
            frame[target] = src[source]
            origins[target] = source
    labels = coerce_label_values(src, CHEXPERT_LABELS)
    extra = [c for c in src.columns if c not in CHEXPERT_READ]
    frame = _with_source_columns(frame, src, extra, path, "chexpert", column_map)
    return _Parsed(frame, labels, [], src, origins)


def _with_source_columns(
    frame: pd.DataFrame, source: pd.DataFrame, names: Sequence[str], path: str, preset: str, column_map: Mapping[str, str]
) -> pd.DataFrame:
    """``frame``, the columns a preset made, with the source columns ``names`` that it keeps as they are.

    A source column named like a column the preset made (a CheXpert table with a column
    ``view`` of its own) would make two columns of one name: that is bad input, unless
    ``--col NAME=NAME`` takes the manifest's column from it, replacing the preset's.
    """
    present = list(source.columns)
    taken = {t for t, s in column_map.items() if find_column(present, s) == t}
    clash = [c for c in names if c in frame.columns and c not in taken]
    if clash:
        one = len(clash) == 1
        fixable = [c for c in clash if c in COLUMN_TARGETS]
        how = (
            f", or pass {' '.join(f'--col {c}={c}' for c in fixable)} to use {'it' if len(fixable) == 1 else 'them'} "
            f"as the manifest's {', '.join(fixable)} instead of the preset's"
            if fixable
            else ""
        )
        raise InputError(
            f"{path} has {'a column' if one else 'columns'} named {examples_text(clash, len(clash))}, "
            f"{'a column' if one else 'columns'} the {preset} preset makes from other columns; "
            f"rename {'it' if one else 'them'} in the table{how}",
            path=path,
            columns=clash,
        )
    kept = [c for c in names if c not in frame.columns]
    return pd.concat([frame, source[kept]], axis=1) if kept else frame


def _mimic(
    path: str, metadata: str | None, encoding: str, sep: str | None, image_ext: str, text_columns: Sequence[str], column_map: Mapping[str, str]
) -> _Parsed:
    if not metadata:
        raise UsageError(
            "--preset mimic needs the metadata table too: pass --metadata mimic-cxr-2.0.0-metadata.csv.gz", preset="mimic"
        )
    keys = ["subject_id", "study_id"]
    lab = frame_from_arrow(read_table(path, sep=sep, string_columns=[*keys, *text_columns], encoding=encoding))
    require_columns(lab, keys, path, "is this a MIMIC-CXR *-chexpert.csv or *-negbio.csv table?")
    meta = frame_from_arrow(
        read_table(metadata, sep=sep, string_columns=["dicom_id", *keys, "StudyDate", "ViewPosition", *text_columns], encoding=encoding)
    )
    require_columns(meta, ["dicom_id", *keys], metadata, "is this the MIMIC-CXR metadata table?")
    label_names = [c for c in lab.columns if c not in keys]
    dup = lab.duplicated(keys, keep=False)
    if dup.any():
        pairs = lab.loc[dup, keys].drop_duplicates().astype(str).agg("/".join, axis=1).tolist()
        raise InputError(
            f"{path} lists {len(pairs)} subject/study pair(s) more than once ({examples_text(pairs, len(pairs))}); "
            "each study must have one label row",
            path=path,
        )
    labels = coerce_label_values(lab, label_names)
    lab = pd.concat([lab[keys], labels], axis=1)
    joined = meta.merge(lab, on=keys, how="left", validate="many_to_one", indicator=True, sort=False)
    unlabeled = int((joined["_merge"] == "left_only").sum())
    imaged = meta[keys].drop_duplicates()
    no_images = len(lab) - len(lab.merge(imaged, on=keys, how="inner"))
    notes = []
    if no_images:
        warnings.warn(
            f"{no_images} labelled stud{'y has' if no_images == 1 else 'ies have'} no image in {metadata} and gave no rows",
            MdprepWarning,
            stacklevel=3,
        )
    subject = joined["subject_id"].astype("str")
    study = joined["study_id"].astype("str")
    frame = pd.DataFrame({"image_id": joined["dicom_id"]})
    frame["path"] = "files/p" + subject.str[:2] + "/p" + subject + "/s" + study + "/" + joined["dicom_id"] + "." + image_ext
    frame["patient_id"] = subject
    frame["study_id"] = study
    origins = {}
    if "ViewPosition" in joined.columns:
        frame["view"] = joined["ViewPosition"]
        origins["view"] = "ViewPosition"
    if "StudyDate" in joined.columns:
        frame["study_date"] = joined["StudyDate"]
        origins["study_date"] = "StudyDate"
    rest = [c for c in meta.columns if c not in {"dicom_id", *keys, "ViewPosition", "StudyDate"}]
    frame = _with_source_columns(frame, joined, rest, os.fspath(metadata), "mimic", column_map)
    labelled = int(len(frame) - unlabeled)
    if unlabeled:
        notes.append(f"{unlabeled} image(s) belong to studies without a label row; kept with null labels ({labelled} labelled)")
    return _Parsed(frame, joined[label_names], notes, joined.drop(columns="_merge"), origins)


def _generic(
    path: str,
    *,
    encoding: str,
    sep: str | None,
    image_col: str | None,
    patient_col: str | None,
    path_col: str | None,
    study_col: str | None,
    labels_col: str | None,
    labels_sep: str,
    label_cols: Sequence[str],
    columns: Mapping[str, str],
    text_columns: Sequence[str],
    first_line: int | None,
) -> _Parsed:
    if labels_col and label_cols:
        raise UsageError("give labels either as one list column (--labels-col) or as one-hot columns (--label-cols), not both")
    explicit = [c for c in (image_col, patient_col, path_col, study_col, labels_col) if c]
    wanted_text = list(dict.fromkeys([*explicit, *columns.values(), *text_columns, *_TEXT_SPELLINGS]))
    table = read_table(path, sep=sep, string_columns=wanted_text, encoding=encoding)
    present = table.column_names
    if image_col is None:
        image_col = "image_id" if "image_id" in present else (path_col or ("path" if "path" in present else None))
    if path_col is None:
        path_col = "path" if "path" in present else image_col
    if image_col is None:
        raise UsageError(f"say which column identifies images: --image-col NAME (columns: {', '.join(map(repr, present))})")
    # Canonical metadata under its usual spellings, unless something claims it.
    taken = {image_col, path_col, patient_col, study_col, labels_col, *label_cols, *columns.values(), *text_columns}
    claimed = set(columns) | {"image_id", "path"}
    if patient_col is not None:
        claimed.add("patient_id")
    if study_col is not None:
        claimed.add("study_id")
    candidates: dict[str, list[str]] = {}
    for col in present:
        target = _SPELLING_INDEX.get(_spelling_key(col))
        if target and col not in taken and target not in present and target not in claimed:
            candidates.setdefault(target, []).append(col)
    notes: list[str] = []
    auto: dict[str, str] = {}
    for target, sources in candidates.items():
        if len(sources) == 1:
            auto[target] = sources[0]
        else:
            notes.append(
                f"columns {examples_text(sources, len(sources))} all look like {target}; none was used "
                f"(choose one with {'--patient-col' if target == 'patient_id' else '--study-col' if target == 'study_id' else '--col ' + target + '=COLUMN'})"
            )
    if patient_col is None:
        patient_col = "patient_id" if "patient_id" in present else auto.pop("patient_id", None)
        if patient_col is None:
            raise MissingColumnError(
                ["patient_id"], present, path=path, hint="say which column identifies patients with --patient-col NAME (the image column may serve)"
            )
    if study_col is None:
        study_col = "study_id" if "study_id" in present else auto.pop("study_id", None)
    wanted = [image_col, patient_col, path_col] + ([study_col] if study_col else []) + ([labels_col] if labels_col else []) + list(label_cols)
    require_columns(table, list(dict.fromkeys(wanted)), path, "choose columns with --image-col, --patient-col, --path-col, --labels-col or --label-cols")
    require_columns(table, list(dict.fromkeys(columns.values())), path, "--col CANONICAL=SOURCE names a column of the table")
    mapped = {**columns, **auto}
    # Identifiers found by their spelling may not have been read as text: read again if so.
    as_text = [image_col, path_col, patient_col, study_col] + [c for t, c in mapped.items() if t in _TEXT_TARGETS]
    not_text = [c for c in dict.fromkeys(as_text) if c and not pa.types.is_string(table.schema.field(c).type)]
    if not_text:
        table = read_table(path, sep=sep, string_columns=wanted_text + not_text, encoding=encoding)
    src = frame_from_arrow(table)
    frame = pd.DataFrame({"image_id": src[image_col].astype("str"), "path": src[path_col].astype("str"), "patient_id": src[patient_col].astype("str")})
    if study_col:
        frame["study_id"] = src[study_col].astype("str")
    for target, source in mapped.items():
        frame[target] = src[source]
    found_by_name = {"patient_id": patient_col, "study_id": study_col, **auto}
    spelled = [f"{s!r} as {t}" for t, s in found_by_name.items() if s and s not in (t, *explicit)]
    if spelled:
        notes.append(f"read {', '.join(spelled)} (recognised spellings; --col CANONICAL=SOURCE or --patient-col/--study-col choose others)")
    used = {image_col, path_col, patient_col, study_col, labels_col, *label_cols, *mapped.values()}
    label_frame = pd.DataFrame(index=src.index)
    if labels_col:
        label_frame, _, _ = labels_from_lists(src[labels_col], sep=labels_sep, column=labels_col, path=path, first_line=first_line)
    elif label_cols:
        label_frame = coerce_label_values(src, label_cols)
    rest = [c for c in src.columns if c not in used]
    shadowed = [c for c in rest if c in frame.columns]
    if shadowed:
        warnings.warn(
            f"column(s) {examples_text(shadowed, len(shadowed), limit=10)} of {path} were dropped: the columns chosen by "
            "--image-col/--path-col/--patient-col/--study-col/--col take their names",
            MdprepWarning,
            stacklevel=3,
        )
        rest = [c for c in rest if c not in shadowed]
    frame = pd.concat([frame, src[rest]], axis=1)
    return _Parsed(frame, label_frame, notes, src, {t: s for t, s in mapped.items() if s != t})


# ----------------------------------------------------------------------------- canonical types


def _parse_ages(values: pd.Series) -> pd.Series:
    """Ages in years: plain numbers, or DICOM AS text (``058Y``, ``006M``) parsed once per distinct value."""
    from ..dicom_header import parse_age

    age = pd.to_numeric(values, errors="coerce").astype("float64")
    failed = age.isna() & values.notna()
    if failed.any():
        text = values[failed].astype("str")
        parsed = {u: parse_age(u) for u in pd.unique(text)}
        age[failed] = text.map(parsed).astype("float64")
    return age


def _parse_dates(values: pd.Series) -> pd.Series:
    """Dates from ``YYYYMMDD`` integers or date text in the formats :func:`mdprep.dates.read_dates` reads."""
    from ..dates import parse_dates

    if pd.api.types.is_datetime64_any_dtype(values):
        return values
    if pd.api.types.is_numeric_dtype(values):
        whole = values.where(values.isna() | (values % 1 == 0))
        values = whole.astype("Int64").astype("str").where(whole.notna())
    return parse_dates(values.astype("str").where(values.notna()))


def _bad_values(raw: pd.Series, bad: pd.Series) -> list:
    """A few distinct values of ``raw`` where ``bad``, for messages."""
    return list(pd.unique(raw[bad].astype("str")))[:5]


def _coerce_canonical(
    frame: pd.DataFrame, origins: Mapping[str, str], labels: Sequence[str]
) -> tuple[pd.DataFrame, dict[str, int], dict[str, tuple], list[str]]:
    """Bring canonical metadata columns to their contract types.

    Values of ``sex``, ``age`` and ``study_date`` that do not parse become null and
    are counted, with a few of them quoted. When such a column was renamed from a
    source column (``StudyDate``, ``Patient Gender``, ``--col``), that column is kept
    under its own name beside the canonical one, so the original text is not lost.
    Returns the frame, the counts, the examples and notes.
    """
    invalid: dict[str, int] = {}
    examples: dict[str, tuple] = {}
    notes: list[str] = []
    raw = {c: frame[c] for c in _PARSED_TARGETS if c in frame.columns}
    if "sex" in frame.columns:
        frame["sex"], n = normalize_sex(frame["sex"])
        if n:
            text = raw["sex"].astype("str").str.strip()
            bad = frame["sex"].isna() & raw["sex"].notna() & ~text.str.upper().isin(UNKNOWN_SEX)
            invalid["sex"], examples["sex"] = n, tuple(_bad_values(text, bad))
    if "age" in frame.columns and not pd.api.types.is_float_dtype(frame["age"]):
        age = _parse_ages(frame["age"])
        bad = age.isna() & frame["age"].notna()
        if bad.any():
            invalid["age"], examples["age"] = int(bad.sum()), tuple(_bad_values(frame["age"], bad))
        frame["age"] = age.astype("float32")
    elif "age" in frame.columns:
        frame["age"] = frame["age"].astype("float32")
    if "study_date" in frame.columns and not isinstance(frame["study_date"].dtype, pd.ArrowDtype):
        dates = _parse_dates(frame["study_date"])
        bad = dates.isna() & frame["study_date"].notna()
        if bad.any():
            invalid["study_date"], examples["study_date"] = int(bad.sum()), tuple(_bad_values(frame["study_date"], bad))
        frame["study_date"] = pd.array(dates.dt.date.where(dates.notna(), None), dtype=pd.ArrowDtype(pa.date32()))
    kept = []
    for target in invalid:
        source = origins.get(target)
        if source and source != target and source not in frame.columns and source not in labels:
            frame[source] = raw[target]
            kept.append(f"{source!r} ({target})")
    if kept:
        notes.append(
            f"kept the source column(s) {', '.join(kept)} beside the canonical column(s): some of their values did not "
            "parse, and the source keeps the original text"
        )
    if "fold" in frame.columns:
        frame["fold"] = pd.to_numeric(frame["fold"], errors="coerce").astype("Int16")  # checked by _check_folds
    for col in ("split", "view", "accession", "series_uid", "sop_uid", "study_id"):
        if col in frame.columns:
            frame[col] = frame[col].astype("str")
    if "view" in frame.columns:
        # PadChest writes a missing ViewPosition as the text 'nan' (Python's str of NaN).
        frame["view"] = frame["view"].mask(frame["view"].isin(("nan", "None")))
    return frame, invalid, examples, notes


def _check_folds(frame: pd.DataFrame, source: str, path: str, first_line: int | None) -> None:
    """A ``fold`` column holds cross-validation fold numbers 0..K-1 (whole, >= 0, int16) or blanks.

    Raises :class:`~mdprep.errors.InputError` quoting the values that are not; a
    column of names (``train``, ``test``) gets the advice to read it as ``split``.
    """
    values = frame["fold"]
    if pd.api.types.is_bool_dtype(values):
        numbers = pd.Series(np.nan, index=values.index)
        blank = values.isna()
    elif pd.api.types.is_numeric_dtype(values):
        numbers = values.astype("float64")
        blank = values.isna()
    else:
        text = values.astype("str").str.strip()
        blank = text.isna() | (text == "")
        numbers = pd.to_numeric(text.where(~blank), errors="coerce").astype("float64")
    ok = blank | (numbers.notna() & (numbers % 1 == 0) & (numbers >= 0) & (numbers <= _MAX_FOLD))
    if ok.all():
        return
    bad = ~ok.to_numpy()
    rows = np.flatnonzero(bad)
    shown = _bad_values(values, pd.Series(bad, index=values.index))
    column = f"column {source!r} (read as fold)" if source != "fold" else "column 'fold'"
    where = rows_text(rows[:5], len(rows), first_line)
    if numbers[~blank].isna().all():
        raise InputError(
            f"{column} of {path} holds names ({examples_text(shown, len(shown))}; {where}), but fold is a "
            f"cross-validation fold number 0..K-1; for train/val/test names use --col {shlex.quote('split=' + source)}",
            path=path,
            column=source,
            values=shown,
        )
    raise InputError(
        f"{column} of {path} has {len(rows)} value(s) that are not whole numbers from 0 to {_MAX_FOLD}: "
        f"{examples_text(shown, len(shown))} ({where}); folds are numbered 0..K-1 (docs/manifest.md)",
        path=path,
        column=source,
        values=shown,
    )


def _stripped_already(values: pd.Series) -> bool:
    """Whether no value of the text column ``values`` has white space around it (False: look closer).

    The test of :meth:`pandas.Series.str.strip` (pyarrow's ``utf8_trim_whitespace``),
    run on the Arrow array without building a pandas column on the way.

    >>> _stripped_already(pd.Series(["a", None], dtype="str")), _stripped_already(pd.Series(["a "], dtype="str"))
    (True, False)
    """
    arr = pa.array(values, from_pandas=True)
    return is_text(arr) and stripped(arr)


def _strip_identifiers(frame: pd.DataFrame) -> pd.DataFrame:
    """Identifiers without surrounding white space (``' p1'``, ``'p1 '`` and ``'p1'`` are one patient).

    An identifier that is only white space becomes null. What changed is counted per
    column in a :class:`~mdprep.errors.MdprepWarning`.
    """
    changed: list[str] = []
    examples: list[str] = []
    for col in ID_COLUMNS:
        if col not in frame.columns:
            continue
        values = frame[col].astype("str")
        if _stripped_already(values):
            continue
        stripped = values.str.strip()
        differs = (values.notna() & (values != stripped)).to_numpy(dtype=bool)
        if differs.any():
            frame[col] = stripped.mask(stripped == "")
            changed.append(f"{int(differs.sum())} {col}")
            examples += [v for v in pd.unique(values[differs]) if v not in examples][:3]
    if changed:
        warnings.warn(
            f"removed white space around identifiers: {', '.join(changed)} value(s), for example "
            f"{examples_text(examples, len(examples), limit=3)}; ids that differed only in it are now one",
            MdprepWarning,
            stacklevel=3,
        )
    return frame


# ----------------------------------------------------------------------------- several rows per image


def _distinct_text(values: pd.Series) -> bool:
    """Whether ``values`` is text whose non-null values are all different (False: look closer).

    One hash pass of pyarrow's ``unique``, about half the cost of
    :meth:`pandas.Series.duplicated`; anything that is not text answers False.

    >>> _distinct_text(pd.Series(["a", "b", None, None], dtype="str")), _distinct_text(pd.Series(["a", "a"], dtype="str"))
    (True, False)
    """
    if not pd.api.types.is_string_dtype(values.dtype) or values.dtype == object:
        return False
    arr = pa.array(values, from_pandas=True)
    return is_text(arr) and distinct(arr)


def _check_rows(frame: pd.DataFrame, path: str, aggregate: str, first_line: int | None) -> None:
    """Before aggregating, the row-level identifiers: nulls by line, and repeats when not aggregating."""
    if aggregate == "error" and "image_id" in frame.columns and _distinct_text(frame["image_id"]):
        return  # no repeats; nulls are reported with everything else by the final check
    violations = validate_frame(frame[[c for c in REQUIRED_COLUMNS if c in frame.columns]])
    repeats = [v for v in violations if v.check == "duplicate_image_id"]
    others = [v for v in violations if v.check != "duplicate_image_id"]
    if aggregate == "error":
        if not repeats:
            return  # nulls are reported with everything else by the final check
        ids = frame["image_id"]
        repeated = ids[ids.duplicated(keep=False) & ids.notna()]
        n_images, n_rows = int(repeated.nunique()), len(repeated)
        examples = list(pd.unique(repeated)[:5])
        message = (
            f"{n_images} image id(s) of {path} occur on more than one row ({n_rows} rows), for example "
            f"{examples_text(examples, n_images)}; {AGGREGATE_HINT}"
        )
        if not others:
            raise InputError(message, path=path, repeated_images=n_images, rows=n_rows, examples=examples)
        others = others + [Violation("duplicate_image_id", "image_id", n_rows, tuple(examples), message)]
    if others:
        raise _explain_table_violations(ManifestValidationError(others), path, first_line)


def _varying_columns(frame: pd.DataFrame, columns: Sequence[str], groups: np.ndarray) -> list[str]:
    """Columns whose values (null counting as a value) differ between rows of one group."""
    if not len(columns) or not len(frame):
        return []
    sub = frame[list(columns)]
    hashable = {c: (sub[c].astype("str") if isinstance(sub[c].dtype, pd.ArrowDtype) and not pa.types.is_primitive(sub[c].dtype.pyarrow_dtype) else sub[c]) for c in columns}
    distinct = pd.DataFrame(hashable, index=sub.index).groupby(groups, sort=False).nunique(dropna=False).max()
    return [c for c in columns if distinct[c] > 1]


def _aggregate(
    frame: pd.DataFrame, labels: Sequence[str], policy: str, readers: pd.Series | None, path: str
) -> tuple[pd.DataFrame, list[str]]:
    """One row per image: label votes combined by ``policy``, other columns kept where constant."""
    codes, uniques = pd.factorize(frame["image_id"])
    n = len(uniques)
    counts = np.bincount(codes, minlength=n)
    first = np.unique(codes, return_index=True)[1]
    multi = counts[codes] > 1
    others = [c for c in frame.columns if c not in labels and c != "image_id"]
    varying = _varying_columns(frame.loc[multi], others, codes[multi])
    notes: list[str] = []
    conflicting = [c for c in _ONE_PER_IMAGE if c in varying]
    if conflicting:
        sub = frame.loc[multi]
        problems = []
        for col in conflicting:
            per_image = sub.groupby(codes[multi], sort=False)[col].nunique(dropna=False)
            bad = uniques[per_image.index[per_image > 1].to_numpy()]
            problems.append(f"{col} differs between rows of {len(bad)} image(s), for example {examples_text(list(bad), len(bad))}")
        raise InputError(
            f"{path}: {'; '.join(problems)}; one image has one {', one '.join(conflicting)}: check --image-col and the "
            "other --*-col options",
            path=path,
            columns=conflicting,
        )
    if varying:
        warnings.warn(
            f"column(s) {examples_text(varying, len(varying), limit=10)} differ between rows of one image (readers, boxes, "
            "masks) and were dropped",
            MdprepWarning,
            stacklevel=3,
        )
    kept = [c for c in others if c not in varying]
    out = frame.iloc[first][["image_id", *kept]].reset_index(drop=True)
    reader_codes = None
    if readers is not None:
        reader_codes = pd.factorize(readers, use_na_sentinel=True)[0]
    voted = aggregate_labels(frame[list(labels)], codes, n, policy, reader_codes)
    out = pd.concat([out, voted], axis=1)
    out["source_rows"] = counts.astype(np.int32)
    repeated = int((counts > 1).sum())
    notes.append(
        f"{len(frame)} rows aggregated into {n} images ({repeated} image(s) had more than one row; labels combined by {policy!r}"
        + (", each reader's rows first combined by 'any'" if readers is not None else "")
        + ")"
    )
    return out, notes


# ----------------------------------------------------------------------------- the command


def ingest_table(path: str | os.PathLike, **options: Any) -> IngestResult:
    """Turn a dataset's label/metadata table into a manifest.

    Labels go through these steps, in order: read (preset, ``labels_col``,
    ``label_cols``) and derived (``label_when``); renamed and merged (``label_map``);
    blank cells of the source made negative where ``blank`` says so; rows of one
    image combined (``aggregate``); uncertain values mapped (``uncertain``).

    Parameters
    ----------
    path : path
        The table: CSV, TSV (plain or compressed) or Parquet.
    **options
        The keywords below (their defaults are those of :func:`~mdprep.ingest.table_spec.table_options`,
        which checks them and whose signature this function shows).
    preset : {"nih", "chexpert", "mimic", "generic"}
        How to read it (see :data:`PRESETS`).
    metadata : path, optional
        MIMIC-CXR only: the ``*-metadata.csv`` table joined on subject and study.
    uncertain : {"keep", "ones", "zeros", "ignore"}
        What to do with uncertain (-1) labels, applied last (after ``aggregate``).
    image_col, patient_col, path_col, study_col, labels_col, labels_sep, label_cols
        Generic preset only: which columns hold what. Without ``patient_col`` the
        patient is ``patient_id``, else a column spelled like one
        (:data:`CANONICAL_SPELLINGS`); ``path_col`` defaults to ``path``, else the image column.
    label_when : sequence of str
        Derived binary labels, ``NAME:COLUMN==VALUE`` or ``NAME:COLUMN!=VALUE``
        (see :func:`mdprep.labels.parse_label_rules`); the column read is not kept.
    blank : str or sequence of str
        ``missing`` (default) or ``negative`` for every label, and/or ``LABEL=POLICY``
        for one; applies to label cells that were blank in the source, in rows with
        at least one label value.
    label_map : "cxr", path or mapping, optional
        Rename label names (matched ignoring case, spaces, underscores) and merge
        those that meet (1 > -1 > 0 > null); ``cxr`` is the built-in map of public
        chest X-ray names (:data:`mdprep.labels.CXR_LABEL_MAP`).
    aggregate : {"error", "any", "majority", "all"}
        Several rows per image: refuse them (``error``) or combine them into one row
        (see :func:`mdprep.labels.combine_votes`); adds ``source_rows``.
    reader_col : str, optional
        With ``aggregate``: the reader of each row; one reader's rows are combined
        with ``any`` before the readers vote.
    columns : mapping or sequence of "CANONICAL=SOURCE", optional
        Canonical columns taken from the named source columns (:data:`COLUMN_TARGETS`).
    sep, encoding
        Delimiter (detected when omitted) and text encoding.
    image_ext : str
        MIMIC-CXR only: file ending of the built paths (``jpg`` for MIMIC-CXR-JPG, ``dcm``).
    root : str, optional
        The folder the table's paths are relative to, recorded in the manifest (absolute),
        or a URL (``s3://bucket/prefix``, recorded without credentials; see :mod:`mdprep.storage`).

    Returns
    -------
    IngestResult
        ``manifest`` (one row per image, label columns in ``manifest.labels``),
        ``errors`` (rows that did not become images, with why) and ``report``
        (counts that reconcile: found == ingested + skipped + failed + aggregated).

    Raises
    ------
    UsageError
        Unknown or contradicting options (a preset, a policy, generic-only options
        with another preset, a bad ``columns`` or ``label_when`` spec, label names that
        clash with canonical columns).
    InputError
        The table cannot be read (missing, not text in ``encoding``, no header, an
        unbalanced quote); :class:`~mdprep.errors.MissingColumnError` for a column the
        preset or an option needs.
    ManifestValidationError
        The rows break the contract (duplicate image ids, missing patients, ...),
        with the line numbers of the table.

    Examples
    --------
    >>> import tempfile, os
    >>> from mdprep.synthetic import write_nih_table
    >>> p = os.path.join(tempfile.mkdtemp(), "Data_Entry_2017.csv")
    >>> n = write_nih_table(p, patients=5)
    >>> r = ingest_table(p, preset="nih")
    >>> len(r.manifest.labels), r.report.ingested == n
    (15, True)
    >>> r.manifest.frame[r.manifest.labels[:2]].dtypes.astype(str).tolist()
    ['Int8', 'Int8']
    """
    opts = table_options(path, **options)
    spath, preset, sep, encoding, aggregate = opts.path, opts.preset, opts.sep, opts.encoding, opts.aggregate
    rules, column_map, label_mapping = opts.rules, opts.column_map, opts.label_mapping
    text_columns, first_line = list(opts.text_columns), opts.first_line
    labels_col, label_cols = opts.generic["labels_col"], opts.generic["label_cols"]

    if preset == "nih":
        parsed = _nih(spath, encoding, sep, text_columns, first_line)
    elif preset == "chexpert":
        parsed = _chexpert(spath, encoding, sep, text_columns, first_line, column_map)
    elif preset == "mimic":
        parsed = _mimic(spath, os.fspath(opts.metadata) if opts.metadata else None, encoding, sep, opts.image_ext, text_columns, column_map)
        first_line = None  # rows of the metadata table, joined
    else:
        parsed = _generic(
            spath,
            encoding=encoding,
            sep=sep,
            image_col=opts.generic["image_col"],
            patient_col=opts.patient_col,
            path_col=opts.generic["path_col"],
            study_col=opts.generic["study_col"],
            labels_col=labels_col,
            labels_sep=opts.labels_sep,
            label_cols=label_cols,
            columns=column_map,
            text_columns=text_columns,
            first_line=first_line,
        )
    frame, label_frame, notes, source, origins = parsed
    origins = dict(origins)
    if preset != "generic" and column_map:
        frame = _apply_column_map(frame, source, column_map, spath, notes, origins)
    derived_names: list[str] = []
    if rules:
        derived = derive_labels(source, rules, path=spath)
        read = {find_column(list(source.columns), r.column) for r in rules}
        frame = frame.drop(columns=[c for c in read if c in frame.columns and c not in CANONICAL_TYPES])
        again = [n for n in derived.columns if n in label_frame.columns]
        if again:
            raise UsageError(
                f"--label-when names {examples_text(again, len(again))}, already a label read from the table; choose another name",
                names=again,
            )
        label_frame = pd.concat([label_frame, derived], axis=1)
        derived_names = list(derived.columns)
    labels = list(label_frame.columns)
    merged: dict[str, list[str]] = {}
    if label_mapping is not None:
        label_frame, labels, renamed, merged = apply_label_map(label_frame, labels, label_mapping)
        notes += label_map_notes(renamed, merged)
    check_label_names(
        labels, frame.columns, spath, derived=derived_names, mapped=label_mapping, origin=label_origin(preset, labels_col, label_cols)
    )
    frame = pd.concat([frame, label_frame], axis=1)
    frame, filled = apply_blank_policy(frame, labels, opts.blank_default, blank_policies(opts, labels))
    if filled:
        notes.append(f"{filled} blank label cell(s) of labelled rows counted as negative (--blank)")

    frame = _strip_identifiers(frame)
    found = len(frame)
    _check_rows(frame, spath, aggregate, first_line)
    if "fold" in frame.columns:
        _check_folds(frame, origins.get("fold", "fold"), spath, first_line)
    if aggregate != "error":
        if "source_rows" in frame.columns:
            raise UsageError(
                f"{spath} has a column named 'source_rows', which --aggregate writes (rows per image); rename that column first",
                path=spath,
            )
        readers = None
        if opts.reader_col:
            hit = find_column(list(source.columns), opts.reader_col)
            if hit is None:
                raise MissingColumnError([opts.reader_col], list(source.columns), path=spath, hint="--reader-col names the column of each row's reader")
            readers = source[hit]
        frame, more = _aggregate(frame.reset_index(drop=True), labels, aggregate, readers.reset_index(drop=True) if readers is not None else None, spath)
        notes += more
    frame = apply_uncertain_policy(frame, labels, opts.uncertain)
    # Counted after --uncertain: `ignore` leaves a row whose labels were all uncertain with none.
    unlabeled = int(frame[list(labels)].isna().all(axis=1).sum()) if labels else 0
    frame, invalid, invalid_examples, more = _coerce_canonical(frame, origins, labels)
    notes += more
    frame = order_columns(frame.reset_index(drop=True), labels)
    step = provenance(opts)
    manifest = Manifest(frame=frame, labels=tuple(labels), root=manifest_root(opts.root)).with_step(step)
    try:
        check(manifest, path=spath)
    except ManifestValidationError as exc:
        raise _explain_table_violations(exc, spath, first_line) if aggregate == "error" else exc from None
    report = IngestReport(
        found=found,
        ingested=len(frame),
        aggregated=found - len(frame),
        unlabeled=unlabeled,
        invalid_values=invalid,
        invalid_examples=invalid_examples,
        notes=tuple(notes),
    )
    return IngestResult(manifest=manifest, errors=empty_errors(), report=report)


ingest_table.__signature__ = options_signature(IngestResult)  # what help() and editors show: the options and their defaults


def _apply_column_map(
    frame: pd.DataFrame, source: pd.DataFrame, column_map: Mapping[str, str], path: str, notes: list[str], origins: dict[str, str]
) -> pd.DataFrame:
    """``--col`` for the presets: canonical columns from source columns, replacing the preset's."""
    present = list(source.columns)
    found = {t: find_column(present, s) for t, s in column_map.items()}
    missing = [column_map[t] for t, hit in found.items() if hit is None]
    if missing:
        raise MissingColumnError(missing, present, path=path, hint="--col CANONICAL=SOURCE names a column of the table")
    replaced = [t for t in found if t in frame.columns]
    if replaced:
        notes.append(f"--col replaced the preset's {', '.join(replaced)}")
    frame = frame.copy()
    for target, col in found.items():
        frame[target] = source[col].to_numpy()
        origins[target] = col
    read = [c for c in found.values() if c in frame.columns and c not in CANONICAL_TYPES]
    return frame.drop(columns=read)


def _explain_table_violations(exc: ManifestValidationError, path: str, first_line: int | None) -> ManifestValidationError:
    """Row numbers as the user finds them: lines of a text table (header is line 1), rows of Parquet."""
    fixed = []
    for v in exc.violations:
        if v.check == "null_value":
            fixed.append(
                Violation(
                    v.check,
                    v.column,
                    v.count,
                    v.examples,
                    f"{v.count} row(s) have no {v.column} ({rows_text(v.examples, v.count, first_line)}); every image needs one",
                )
            )
        else:
            fixed.append(v)
    return ManifestValidationError(fixed, path=path)
