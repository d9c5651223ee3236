"""``ingest table``: dataset label and metadata tables (NIH, CheXpert, MIMIC-CXR, any CSV/TSV/Parquet)."""

from __future__ import annotations

import os
import re
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from ..errors import InputError, ManifestValidationError, MissingColumnError, UsageError, Violation, examples_text
from ..fileio import file_fingerprint
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
    labels_from_lists,
    load_label_map,
    parse_blank_specs,
    parse_label_rules,
    resolve_label_names,
)
from ..manifest import CANONICAL_TYPES, REQUIRED_COLUMNS, Manifest, check, frame_from_arrow, provenance_step, validate_frame
from . import IngestReport, IngestResult, empty_errors, extract_groups, normalize_sex
from ..manifest import order_columns
from .table_io import read_table

PRESETS = {
    "nih": "NIH ChestX-ray14 Data_Entry_2017*.csv: pipe-separated 'Finding Labels' into 15 label columns",
    "chexpert": "CheXpert train.csv/valid.csv: patient and study from 'Path', 14 labels with 1/0/-1/blank",
    "mimic": "MIMIC-CXR *-chexpert.csv joined with *-metadata.csv (--metadata) on subject and study",
    "generic": "any CSV/TSV/Parquet: choose the columns with --image-col, --patient-col, --labels-col or --label-cols",
}
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


def _spelling_key(name: str) -> str:
    return re.sub(r"[\s_]+", "", re.sub(r"_dicom$", "", str(name), flags=re.IGNORECASE)).casefold()


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
#
# Each preset returns the row-level frame (canonical columns, label columns, other columns),
# the label names, notes, and the source frame aligned with it row for row, from which
# --label-when, --col and --reader-col take their columns.

_Parsed = tuple[pd.DataFrame, list[str], list[str], pd.DataFrame]


def _nih(path: str, encoding: str, text_columns: Sequence[str]) -> _Parsed:
    table = read_table(
        path, string_columns=["Image Index", "Patient ID", "Finding Labels", "Patient Gender", "View Position", *text_columns], encoding=encoding
    )
    _require(table, ["Image Index", "Finding Labels", "Patient ID"], path, "is this an NIH Data_Entry_2017 table?")
    src = frame_from_arrow(table)
    labels, names, _ = labels_from_lists(src["Finding Labels"], sep="|", known=NIH_LABEL_COLUMNS)
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
    for source, target in renames.items():
        if source in src.columns:
            frame[target] = src[source]
    frame = pd.concat([frame, labels], axis=1)
    return frame, names, notes, src


_CHEXPERT_PATH = re.compile(r"(?P<patient>patient\d+)/(?P<study>study\d+)/")


def _chexpert(path: str, encoding: str, text_columns: Sequence[str]) -> _Parsed:
    table = read_table(path, string_columns=["Path", "Sex", "Frontal/Lateral", "AP/PA", *text_columns], encoding=encoding)
    _require(table, ["Path", *CHEXPERT_LABELS], path, "is this a CheXpert train.csv or valid.csv?")
    src = frame_from_arrow(table)
    parts, matched = extract_groups(src["Path"], _CHEXPERT_PATH)
    bad = pd.Series(~matched, index=src.index)
    if bad.any():
        rows = (np.flatnonzero(bad.to_numpy()) + 2).tolist()  # +1 header, +1 one-based
        raise InputError(
            f"{int(bad.sum())} Path value(s) in {path} have no patientNNNNN/studyN/ part (lines "
            f"{examples_text(rows, len(rows))}); fix them or use --preset generic",
            path=path,
            lines=rows[:20],
        )
    frame = pd.DataFrame({"image_id": src["Path"], "path": src["Path"], "patient_id": parts["patient"]})
    frame["study_id"] = parts["patient"] + "/" + parts["study"]
    if "AP/PA" in src.columns:
        view = src["AP/PA"]
        if "Frontal/Lateral" in src.columns:
            view = view.where(view.notna(), src["Frontal/Lateral"].str.upper().where(src["Frontal/Lateral"] == "Lateral"))
        frame["view"] = view
    for source, target in (("Sex", "sex"), ("Age", "age"), ("Frontal/Lateral", "frontal_lateral")):
        if source in src.columns:
            frame[target] = src[source]
    labels = coerce_label_values(src, CHEXPERT_LABELS)
    extra = [c for c in src.columns if c not in {"Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS}]
    frame = pd.concat([frame, labels, src[extra]], axis=1)
    return frame, list(CHEXPERT_LABELS), [], src


def _mimic(path: str, metadata: str | None, encoding: str, image_ext: str, text_columns: Sequence[str]) -> _Parsed:
    if not metadata:
        raise UsageError(
            "--preset mimic needs the metadata table too: pass --metadata mimic-cxr-2.0.0-metadata.csv.gz", preset="mimic"
        )
    keys = ["subject_id", "study_id"]
    lab = frame_from_arrow(read_table(path, string_columns=[*keys, *text_columns], encoding=encoding))
    _require(lab, keys, path, "is this a MIMIC-CXR *-chexpert.csv or *-negbio.csv table?")
    meta = frame_from_arrow(read_table(metadata, string_columns=["dicom_id", *keys, "StudyDate", "ViewPosition", *text_columns], encoding=encoding))
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
        notes.append(f"{no_images} labelled stud{'y has' if no_images == 1 else 'ies have'} no image in the metadata table and gave no rows")
    subject = joined["subject_id"].astype("str")
    study = joined["study_id"].astype("str")
    frame = pd.DataFrame({"image_id": joined["dicom_id"]})
    frame["path"] = "files/p" + subject.str[:2] + "/p" + subject + "/s" + study + "/" + joined["dicom_id"] + "." + image_ext
    frame["patient_id"] = subject
    frame["study_id"] = study
    if "ViewPosition" in joined.columns:
        frame["view"] = joined["ViewPosition"]
    if "StudyDate" in joined.columns:
        frame["study_date"] = joined["StudyDate"]
    rest = [c for c in meta.columns if c not in {"dicom_id", *keys, "ViewPosition", "StudyDate"}]
    frame = pd.concat([frame, joined[label_names], joined[rest]], axis=1)
    labelled = int(len(frame) - unlabeled)
    if unlabeled:
        notes.append(f"{unlabeled} image(s) belong to studies without a label row; kept with null labels ({labelled} labelled)")
    return frame, label_names, notes, joined.drop(columns="_merge")


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
    names: list[str] = []
    label_frame = pd.DataFrame(index=src.index)
    if labels_col:
        label_frame, names, _ = labels_from_lists(src[labels_col], sep=labels_sep)
    elif label_cols:
        label_frame = coerce_label_values(src, label_cols)
        names = list(label_cols)
    clash = [n for n in names if n in src.columns and n not in used]
    if clash:
        raise UsageError(f"label names {examples_text(clash, len(clash))} are also column names of {path}; rename those columns")
    rest = [c for c in src.columns if c not in used]
    shadowed = [c for c in rest if c in frame.columns]
    if shadowed:
        notes.append(f"column(s) {', '.join(shadowed)} of the table were replaced by the chosen --*-col columns")
        rest = [c for c in rest if c not in shadowed]
    frame = pd.concat([frame, label_frame, src[rest]], axis=1)
    return frame, names, notes, src


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
    """Dates from ``YYYYMMDD`` (text or integer) first, then ISO 8601 text."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return values
    if pd.api.types.is_numeric_dtype(values):
        whole = values.where(values.isna() | (values % 1 == 0))
        values = whole.astype("Int64").astype("str").where(whole.notna())
    text = values.astype("str").str.strip()
    dates = pd.to_datetime(text, format="%Y%m%d", errors="coerce")
    rest = dates.isna() & text.notna()
    if rest.any():
        dates[rest] = pd.to_datetime(text[rest], format="ISO8601", errors="coerce")
    return dates


def _coerce_canonical(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Bring canonical metadata columns to their contract types; count values that do not fit."""
    invalid: dict[str, int] = {}
    if "sex" in frame.columns:
        frame["sex"], n = normalize_sex(frame["sex"])
        if n:
            invalid["sex"] = n
    if "age" in frame.columns and not pd.api.types.is_float_dtype(frame["age"]):
        age = _parse_ages(frame["age"])
        n = int((age.isna() & frame["age"].notna()).sum())
        if n:
            invalid["age"] = n
        frame["age"] = age.astype("float32")
    elif "age" in frame.columns:
        frame["age"] = frame["age"].astype("float32")
    if "study_date" in frame.columns and not isinstance(frame["study_date"].dtype, pd.ArrowDtype):
        dates = _parse_dates(frame["study_date"])
        n = int((dates.isna() & frame["study_date"].notna()).sum())
        if n:
            invalid["study_date"] = n
        frame["study_date"] = pd.array(dates.dt.date.where(dates.notna(), None), dtype=pd.ArrowDtype(pa.date32()))
    if "fold" in frame.columns:
        frame["fold"] = pd.to_numeric(frame["fold"], errors="coerce").astype("Int16")
    for col in ("split", "view", "accession", "series_uid", "sop_uid", "study_id"):
        if col in frame.columns:
            frame[col] = frame[col].astype("str")
    if "view" in frame.columns:
        # PadChest writes a missing ViewPosition as the text 'nan' (Python's str of NaN).
        frame["view"] = frame["view"].mask(frame["view"].isin(("nan", "None")))
    return frame, invalid


# ----------------------------------------------------------------------------- several rows per image

_AGGREGATE_HINT = "pass --aggregate any|majority|all (one row per reader or box)"


def _check_rows(frame: pd.DataFrame, path: str, aggregate: str) -> None:
    """Before aggregating, the row-level identifiers: nulls by line, and repeats when not aggregating."""
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
        raise _explain_table_violations(ManifestValidationError(others), path)


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
        notes.append(
            f"column(s) {', '.join(map(repr, varying))} differ between rows of one image (readers, boxes, masks) and were dropped"
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
        The folder the table's paths are relative to, recorded in the manifest.

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

    if preset == "nih":
        frame, labels, notes, source = _nih(spath, encoding, text_columns)
    elif preset == "chexpert":
        frame, labels, notes, source = _chexpert(spath, encoding, text_columns)
    elif preset == "mimic":
        frame, labels, notes, source = _mimic(spath, os.fspath(metadata) if metadata else None, encoding, image_ext, text_columns)
    else:
        frame, labels, notes, source = _generic(
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
        )
    if preset != "generic" and column_map:
        frame = _apply_column_map(frame, labels, source, column_map, spath, notes)
    if rules:
        derived = derive_labels(source, rules, path=spath)
        read = {find_column(list(source.columns), r.column) for r in rules}
        frame = frame.drop(columns=[c for c in read if c in frame.columns and c not in CANONICAL_TYPES and c not in labels])
        clash = [n for n in derived.columns if n in frame.columns]
        if clash:
            raise UsageError(f"--label-when names {examples_text(clash, len(clash))}, already a column of the table; choose another name")
        frame = pd.concat([frame, derived], axis=1)
        labels = list(labels) + list(derived.columns)
    if label_mapping is not None:
        frame, labels, renamed, merged = apply_label_map(frame, labels, label_mapping)
        if merged:
            notes.append("label map merged " + "; ".join(f"{', '.join(map(repr, s))} into {t!r}" for t, s in merged.items()))
        if renamed:
            notes.append("label map renamed " + ", ".join(f"{s!r} to {t!r}" for s, t in renamed))
    per_label = resolve_label_names(blank_per, labels, label_mapping, option="--blank")
    frame, filled = apply_blank_policy(frame, labels, blank_default, {per_label[k]: v for k, v in blank_per.items()})
    if filled:
        notes.append(f"{filled} blank label cell(s) of labelled rows counted as negative (--blank)")

    found = len(frame)
    _check_rows(frame, spath, aggregate)
    if aggregate != "error":
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
    frame, invalid = _coerce_canonical(frame)
    frame = order_columns(frame.reset_index(drop=True), labels)
    inputs = [file_fingerprint(spath)] + ([file_fingerprint(metadata)] if metadata else [])
    if label_map is not None and not isinstance(label_map, Mapping) and os.path.isfile(os.fspath(label_map)):
        inputs.append(file_fingerprint(label_map))
    options: dict = {"preset": preset, "uncertain": uncertain, "encoding": encoding}
    if preset == "generic":
        options.update(patient_col=patient_col, labels_sep=labels_sep, sep=sep, **generic_opts)
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
    manifest = Manifest(frame=frame, labels=tuple(labels), root=os.path.abspath(root) if root else None)
    manifest = manifest.with_step(provenance_step("ingest table", options, inputs))
    try:
        check(manifest, path=spath)
    except ManifestValidationError as exc:
        raise _explain_table_violations(exc, spath) if aggregate == "error" else exc from None
    report = IngestReport(
        found=found,
        ingested=len(frame),
        aggregated=found - len(frame),
        unlabeled=unlabeled,
        invalid_values=invalid,
        notes=tuple(notes),
    )
    return IngestResult(manifest=manifest, errors=empty_errors(), report=report)


def _apply_column_map(
    frame: pd.DataFrame, labels: Sequence[str], source: pd.DataFrame, column_map: Mapping[str, str], path: str, notes: list[str]
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
    read = [c for c in found.values() if c in frame.columns and c not in CANONICAL_TYPES and c not in labels]
    return frame.drop(columns=read)


def _explain_table_violations(exc: ManifestValidationError, path: str) -> ManifestValidationError:
    """Row numbers in a table are line numbers for the user (header is line 1)."""
    fixed = []
    for v in exc.violations:
        if v.check == "null_value":
            lines = [r + 2 for r in v.examples]
            fixed.append(
                Violation(v.check, v.column, v.count, tuple(lines), f"{v.count} row(s) have no {v.column} (lines {examples_text(lines, v.count)}); every image needs one")
            )
        else:
            fixed.append(v)
    return ManifestValidationError(fixed, path=path)
