"""``ingest table``: dataset label and metadata tables (NIH, CheXpert, MIMIC-CXR, any CSV/TSV/Parquet)."""

from __future__ import annotations

import os
import re
import shlex
import warnings
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InputError, ManifestValidationError, MdprepWarning, MissingColumnError, UsageError, Violation, examples_text
from ..fileio import file_fingerprint
from ..storage import canonical_root
from ..labels import (
    AGGREGATE_POLICIES,
    UNCERTAIN_POLICIES,
    aggregate_labels,
    apply_blank_policy,
    apply_label_map,
    apply_uncertain_policy,
    coerce_label_values,
    derive_labels,
    find_column,
    label_key,
    labels_from_lists,
    load_label_map,
    parse_blank_specs,
    parse_label_rules,
    resolve_label_names,
    rows_text,
)
from ..choices import PRESETS
from ..manifest import CANONICAL_TYPES, REQUIRED_COLUMNS, Manifest, check, frame_from_arrow, order_columns, provenance_step, validate_frame
from . import UNKNOWN_SEX, IngestReport, IngestResult, empty_errors, extract_groups, normalize_sex
from .table_io import is_parquet_table, read_table

#: The 14 findings of NIH ChestX-ray14, in the dataset's customary order.
NIH_LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
#: The 14 observations of CheXpert and MIMIC-CXR's CheXpert labeler, in file order.
CHEXPERT_LABELS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
#: NIH label columns: the findings and "No Finding".
NIH_LABEL_COLUMNS = NIH_LABELS + ("No Finding",)

# ----------------------------------------------------------------------------- reading


def _require(table_or_frame, columns: Sequence[str], path: str, hint: str = "") -> None:
    present = list(table_or_frame.column_names if isinstance(table_or_frame, pa.Table) else table_or_frame.columns)
    missing = [c for c in columns if c not in present]
    if missing:
        raise MissingColumnError(missing, present, path=path, hint=hint)


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
#: Canonical columns ``--col CANONICAL=SOURCE`` may set; the others have options of their own.
COLUMN_TARGETS = tuple(c for c in CANONICAL_TYPES if c not in ("image_id", "path", "patient_id", "study_id"))
#: Canonical columns whose source is read as text (identifiers keep their zeros; dates their digits).
_TEXT_TARGETS = ("image_id", "path", "patient_id", "study_id", "series_uid", "sop_uid", "accession", "study_date")
#: Columns an aggregated image must agree on across its rows.
_ONE_PER_IMAGE = ("patient_id", "path", "study_id")
#: Identifier columns whose values are stripped of surrounding white space (``' p1'`` is ``p1``).
ID_COLUMNS = ("image_id", "path", "patient_id", "study_id", "series_uid", "sop_uid", "accession")
#: Column names a label may not take: the canonical columns and what ``--aggregate`` adds.
RESERVED_COLUMNS = (*CANONICAL_TYPES, "source_rows")
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


def parse_column_specs(columns: Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    """``--col CANONICAL=SOURCE`` values (or a mapping) as ``{canonical: source}``, checked.

    Raises :class:`~mdprep.errors.UsageError` for a malformed spec, an unknown canonical
    name (listing the valid ones) or a canonical name given twice.

    >>> parse_column_specs(["split=Set Id", "sex = Gender"])
    {'split': 'Set Id', 'sex': 'Gender'}
    """
    if columns is None:
        return {}
    if isinstance(columns, Mapping):
        pairs = [(str(k), str(v)) for k, v in columns.items()]
        bad: list[str] = []
    else:
        specs = [columns] if isinstance(columns, str) else list(columns)
        bad = [c for c in specs if "=" not in c or not c.split("=", 1)[0].strip() or not c.split("=", 1)[1].strip()]
        pairs = [(c.split("=", 1)[0], c.split("=", 1)[1]) for c in specs if c not in bad]
    if bad:
        raise UsageError(f"--col {examples_text(bad, len(bad))} is not CANONICAL=SOURCE (for example --col 'split=Set Id')", specs=bad)
    out: dict[str, str] = {}
    unknown: list[str] = []
    for target, source in pairs:
        target, source = target.strip(), source.strip()
        if target not in COLUMN_TARGETS:
            unknown.append(target)
        elif out.setdefault(target, source) != source:
            raise UsageError(f"--col gives {target} twice ({out[target]!r} and {source!r}); give it once")
    if unknown:
        own = {"image_id": "--image-col", "path": "--path-col", "patient_id": "--patient-col", "study_id": "--study-col"}
        hint = "; ".join(f"{c}: use {own[c]}" for c in unknown if c in own)
        raise UsageError(
            f"--col names {examples_text(unknown, len(unknown))}, not a canonical column it can set; choose one of "
            f"{', '.join(COLUMN_TARGETS)}{' (' + hint + ')' if hint else ''}",
            names=unknown,
        )
    return out


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
    table = read_table(
        path,
        sep=sep,
        string_columns=["Image Index", "Patient ID", "Finding Labels", "Patient Gender", "View Position", *text_columns],
        encoding=encoding,
    )
    _require(table, ["Image Index", "Finding Labels", "Patient ID"], path, "is this an NIH Data_Entry_2017 table?")
    src = frame_from_arrow(table)
    labels, names, _ = labels_from_lists(
        src["Finding Labels"], sep="|", known=NIH_LABEL_COLUMNS, column="Finding Labels", path=path, first_line=first_line
    )
    frame = pd.DataFrame({"image_id": src["Image Index"], "path": src["Image Index"], "patient_id": src["Patient ID"]})
    notes = []
    extra = [n for n in names if n not in NIH_LABEL_COLUMNS]
    if extra:
        notes.append(f"labels not in the NIH list: {', '.join(extra)}")
    renames = {
        "Patient Age": "age",
        "Patient Gender": "sex",
        "View Position": "view",
        "Follow-up #": "follow_up",
        "OriginalImage[Width]": "width",
        "OriginalImage[Height]": "height",
        "OriginalImagePixelSpacing[x]": "pixel_spacing_x",
        "OriginalImagePixelSpacing[y]": "pixel_spacing_y",
    }
    origins = {}
    for source, target in renames.items():
        if source in src.columns:
            frame[target] = src[source]
            origins[target] = source
    return _Parsed(frame, labels, notes, src, origins)


_CHEXPERT_PATH = re.compile(r"(?P<patient>patient\d+)/(?P<study>study\d+)/")


def _chexpert(path: str, encoding: str, sep: str | None, text_columns: Sequence[str], first_line: int | None) -> _Parsed:
    table = read_table(path, sep=sep, string_columns=["Path", "Sex", "Frontal/Lateral", "AP/PA", *text_columns], encoding=encoding)
    _require(table, ["Path", *CHEXPERT_LABELS], path, "is this a CheXpert train.csv or valid.csv?")
    src = frame_from_arrow(table)
    parts, matched = extract_groups(src["Path"], _CHEXPERT_PATH)
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
    for source, target in (("Sex", "sex"), ("Age", "age"), ("Frontal/Lateral", "frontal_lateral")):
        if source in src.columns:
            frame[target] = src[source]
            origins[target] = source
    labels = coerce_label_values(src, CHEXPERT_LABELS)
    extra = [c for c in src.columns if c not in {"Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS}]
    frame = pd.concat([frame, src[extra]], axis=1)
    return _Parsed(frame, labels, [], src, origins)


def _mimic(path: str, metadata: str | None, encoding: str, sep: str | None, image_ext: str, text_columns: Sequence[str]) -> _Parsed:
    if not metadata:
        raise UsageError(
            "--preset mimic needs the metadata table too: pass --metadata mimic-cxr-2.0.0-metadata.csv.gz", preset="mimic"
        )
    keys = ["subject_id", "study_id"]
    lab = frame_from_arrow(read_table(path, sep=sep, string_columns=[*keys, *text_columns], encoding=encoding))
    _require(lab, keys, path, "is this a MIMIC-CXR *-chexpert.csv or *-negbio.csv table?")
    meta = frame_from_arrow(
        read_table(metadata, sep=sep, string_columns=["dicom_id", *keys, "StudyDate", "ViewPosition", *text_columns], encoding=encoding)
    )
    _require(meta, ["dicom_id", *keys], metadata, "is this the MIMIC-CXR metadata table?")
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
    frame = pd.concat([frame, joined[rest]], axis=1)
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
    _require(table, list(dict.fromkeys(wanted)), path, "choose columns with --image-col, --patient-col, --path-col, --labels-col or --label-cols")
    _require(table, list(dict.fromkeys(columns.values())), path, "--col CANONICAL=SOURCE names a column of the table")
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
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return False
    return not pc.any(pc.not_equal(arr, pc.utf8_trim_whitespace(arr))).as_py()


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

_AGGREGATE_HINT = "pass --aggregate any|majority|all (one row per reader or box)"


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
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return False
    distinct = pc.unique(arr)
    return len(distinct) - distinct.null_count == len(arr) - arr.null_count


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
            f"{examples_text(examples, n_images)}; {_AGGREGATE_HINT}"
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


def ingest_table(
    path: str | os.PathLike,
    *,
    preset: str = "generic",
    metadata: str | os.PathLike | None = None,
    uncertain: str = "keep",
    image_col: str | None = None,
    patient_col: str | None = None,
    path_col: str | None = None,
    study_col: str | None = None,
    labels_col: str | None = None,
    labels_sep: str = "|",
    label_cols: Sequence[str] = (),
    label_when: Sequence[str] | str = (),
    blank: Sequence[str] | str = "missing",
    label_map: str | os.PathLike | Mapping[str, str] | None = None,
    aggregate: str = "error",
    reader_col: str | None = None,
    columns: Mapping[str, str] | Sequence[str] | None = None,
    sep: str | None = None,
    encoding: str = "utf-8",
    image_ext: str = "jpg",
    root: str | None = None,
) -> IngestResult:
    """Turn a dataset's label/metadata table into a manifest.

    Labels go through these steps, in order: read (preset, ``labels_col``,
    ``label_cols``) and derived (``label_when``); renamed and merged (``label_map``);
    blank cells of the source made negative where ``blank`` says so; rows of one
    image combined (``aggregate``); uncertain values mapped (``uncertain``).

    Parameters
    ----------
    path : path
        The table: CSV, TSV (plain or compressed) or Parquet.
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

    Examples
    --------
    >>> import tempfile, os
    >>> from mdprep.synthetic import write_nih_table
    >>> p = os.path.join(tempfile.mkdtemp(), "Data_Entry_2017.csv")
    >>> n = write_nih_table(p, patients=5)
    >>> r = ingest_table(p, preset="nih")
    >>> len(r.manifest.labels), r.report.ingested == n
    (15, True)
    """
    spath = os.fspath(path)
    if preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}", preset=preset)
    if uncertain not in UNCERTAIN_POLICIES:
        raise UsageError(f"unknown --uncertain policy {uncertain!r}; choose one of {', '.join(UNCERTAIN_POLICIES)}")
    if aggregate not in AGGREGATE_POLICIES:
        raise UsageError(f"unknown --aggregate policy {aggregate!r}; choose one of {', '.join(AGGREGATE_POLICIES)}", aggregate=aggregate)
    if reader_col and aggregate == "error":
        raise UsageError(f"--reader-col {reader_col!r} only matters when rows are aggregated: {_AGGREGATE_HINT}")
    if sep == "\\t":
        sep = "\t"  # --sep '\t' as typed in a shell: one tab, recorded as one
    if not labels_sep:
        raise UsageError("--labels-sep is empty; give the character between the findings of a cell, for example --labels-sep '|' or --labels-sep ','")
    generic_opts = dict(image_col=image_col, path_col=path_col, study_col=study_col, labels_col=labels_col, label_cols=list(label_cols))
    if preset != "generic" and patient_col not in (None, "patient_id"):
        generic_opts["patient_col"] = patient_col
    if preset != "generic" and any(v for v in generic_opts.values()):
        given = ", ".join(f"--{k.replace('_', '-')}" for k, v in generic_opts.items() if v)
        raise UsageError(f"{given} only apply to --preset generic; preset {preset!r} knows its columns")
    rules = parse_label_rules(label_when)
    blank_default, blank_per = parse_blank_specs(blank)
    column_map = parse_column_specs(columns)
    label_mapping = load_label_map(label_map) if label_map is not None else None
    text_columns = list(dict.fromkeys([r.column for r in rules] + list(column_map.values()) + ([reader_col] if reader_col else [])))
    # Rows are lines of a text table (header on line 1) and counted rows of Parquet.
    first_line = None if is_parquet_table(spath) else 2

    if preset == "nih":
        parsed = _nih(spath, encoding, sep, text_columns, first_line)
    elif preset == "chexpert":
        parsed = _chexpert(spath, encoding, sep, text_columns, first_line)
    elif preset == "mimic":
        parsed = _mimic(spath, os.fspath(metadata) if metadata else None, encoding, sep, image_ext, text_columns)
        first_line = None  # rows of the metadata table, joined
    else:
        parsed = _generic(
            spath,
            encoding=encoding,
            sep=sep,
            image_col=image_col,
            patient_col=patient_col,
            path_col=path_col,
            study_col=study_col,
            labels_col=labels_col,
            labels_sep=labels_sep,
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
        if merged:
            notes.append("label map merged " + "; ".join(f"{', '.join(map(repr, s))} into {t!r}" for t, s in merged.items()))
        if renamed:
            notes.append("label map renamed " + ", ".join(f"{s!r} to {t!r}" for s, t in renamed))
    _check_label_names(
        labels, frame.columns, spath, derived=derived_names, mapped=label_mapping, origin=_label_origin(preset, labels_col, label_cols)
    )
    frame = pd.concat([frame, label_frame], axis=1)
    per_label = resolve_label_names(blank_per, labels, label_mapping, option="--blank")
    blank_labels: dict[str, tuple[str, str]] = {}
    for name, label in per_label.items():
        first = blank_labels.setdefault(label, (name, blank_per[name]))
        if first[1] != blank_per[name]:
            raise UsageError(
                f"--blank gives label {label!r} two policies: {first[0]}={first[1]} and {name}={blank_per[name]} "
                "(both names mean that label); give it one policy"
            )
    frame, filled = apply_blank_policy(frame, labels, blank_default, {lab: policy for lab, (_, policy) in blank_labels.items()})
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
        if reader_col:
            hit = find_column(list(source.columns), reader_col)
            if hit is None:
                raise MissingColumnError([reader_col], list(source.columns), path=spath, hint="--reader-col names the column of each row's reader")
            readers = source[hit]
        frame, more = _aggregate(frame.reset_index(drop=True), labels, aggregate, readers.reset_index(drop=True) if readers is not None else None, spath)
        notes += more
    unlabeled = int(frame[list(labels)].isna().all(axis=1).sum()) if labels else 0
    frame = apply_uncertain_policy(frame, labels, uncertain)
    frame, invalid, invalid_examples, more = _coerce_canonical(frame, origins, labels)
    notes += more
    frame = order_columns(frame.reset_index(drop=True), labels)
    inputs = [file_fingerprint(spath)] + ([file_fingerprint(metadata)] if metadata else [])
    if label_map is not None and not isinstance(label_map, Mapping) and os.path.isfile(os.fspath(label_map)):
        inputs.append(file_fingerprint(label_map))
    options: dict = {"preset": preset, "uncertain": uncertain, "encoding": encoding, "sep": sep}
    if preset == "generic":
        options.update(patient_col=patient_col, labels_sep=labels_sep, **generic_opts)
    if preset == "mimic":
        options["image_ext"] = image_ext
    if rules:
        options["label_when"] = [str(r) for r in rules]
    if blank_default != "missing" or blank_per:
        options["blank"] = {"default": blank_default, "labels": dict(sorted(blank_per.items()))}
    if label_map is not None:
        options["label_map"] = dict(sorted(label_mapping.items())) if isinstance(label_map, Mapping) else os.fspath(label_map)
    if aggregate != "error":
        options.update(aggregate=aggregate, reader_col=reader_col)
    if column_map:
        options["columns"] = dict(sorted(column_map.items()))
    manifest = Manifest(frame=frame, labels=tuple(labels), root=canonical_root(root) if root else None)
    manifest = manifest.with_step(provenance_step("ingest table", options, inputs))
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


def _label_origin(preset: str, labels_col: str | None, label_cols: Sequence[str]) -> str:
    if labels_col:
        return f"found in --labels-col {labels_col!r}"
    if label_cols:
        return "given by --label-cols"
    return f"read by preset {preset!r}"


def _check_label_names(
    labels: Sequence[str],
    columns: Sequence[str],
    path: str,
    *,
    derived: Sequence[str],
    mapped: Mapping[str, str] | None,
    origin: str,
) -> None:
    """Label names, final after ``--label-map``, must not be manifest or table column names.

    Raises one :class:`~mdprep.errors.UsageError` that names every clash and says,
    for each kind of label (read, ``--label-when``, a map target), how to rename it.
    """
    reserved = [n for n in labels if n in RESERVED_COLUMNS]
    taken = [n for n in labels if n not in RESERVED_COLUMNS and n in set(columns)]
    if not reserved and not taken:
        return
    targets = set(mapped.values()) if mapped else set()

    def kind(name: str) -> str:
        if name in derived:
            return "derived"
        if name in targets and label_key(name) not in (mapped or {}):
            return "mapped"
        return "read"

    problems: list[str] = []
    for names, what in (
        (reserved, "names of manifest columns (canonical columns and source_rows cannot be labels)"),
        (taken, f"names of other columns of {path}"),
    ):
        groups: dict[str, list[str]] = {}
        for n in names:
            groups.setdefault(kind(n), []).append(n)
        for k, group in groups.items():
            shown = examples_text(group, len(group), limit=10)
            if k == "derived":
                problems.append(f"--label-when names {shown}, {what}; choose another NAME")
            elif k == "mapped":
                problems.append(f"the label map gives labels {shown}, {what}; map them to other names")
            else:
                problems.append(
                    f"label(s) {shown} {origin} are {what}; rename them with --label-map, a CSV file with the header "
                    f"source,target and a line such as {group[0]},{group[0]} finding"
                )
    raise UsageError("; ".join(problems), names=reserved + taken)


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
