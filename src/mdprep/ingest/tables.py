"""``ingest table``: dataset label and metadata tables (NIH, CheXpert, MIMIC-CXR, any CSV/TSV/Parquet)."""

from __future__ import annotations

import os
import re
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from ..errors import InputError, ManifestValidationError, MissingColumnError, UsageError, Violation, examples_text
from ..fileio import file_fingerprint
from ..labels import UNCERTAIN_POLICIES, apply_uncertain_policy, coerce_label_values, labels_from_lists
from ..manifest import Manifest, check, frame_from_arrow, provenance_step
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


# ----------------------------------------------------------------------------- presets


def _nih(path: str, encoding: str) -> tuple[pd.DataFrame, list[str], int, list[str]]:
    table = read_table(path, string_columns=["Image Index", "Patient ID", "Finding Labels", "Patient Gender", "View Position"], encoding=encoding)
    _require(table, ["Image Index", "Finding Labels", "Patient ID"], path, "is this an NIH Data_Entry_2017 table?")
    src = frame_from_arrow(table)
    labels, names, unlabeled = labels_from_lists(src["Finding Labels"], sep="|", known=NIH_LABEL_COLUMNS)
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
    return frame, names, unlabeled, notes


_CHEXPERT_PATH = re.compile(r"(?P<patient>patient\d+)/(?P<study>study\d+)/")


def _chexpert(path: str, encoding: str) -> tuple[pd.DataFrame, list[str], int, list[str]]:
    table = read_table(path, string_columns=["Path", "Sex", "Frontal/Lateral", "AP/PA"], encoding=encoding)
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
    unlabeled = int(labels.isna().all(axis=1).sum())
    extra = [c for c in src.columns if c not in {"Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS}]
    frame = pd.concat([frame, labels, src[extra]], axis=1)
    return frame, list(CHEXPERT_LABELS), unlabeled, []


def _mimic(path: str, metadata: str | None, encoding: str, image_ext: str) -> tuple[pd.DataFrame, list[str], int, list[str]]:
    if not metadata:
        raise UsageError(
            "--preset mimic needs the metadata table too: pass --metadata mimic-cxr-2.0.0-metadata.csv.gz", preset="mimic"
        )
    keys = ["subject_id", "study_id"]
    lab = frame_from_arrow(read_table(path, string_columns=keys, encoding=encoding))
    _require(lab, keys, path, "is this a MIMIC-CXR *-chexpert.csv or *-negbio.csv table?")
    meta = frame_from_arrow(read_table(metadata, string_columns=["dicom_id", *keys, "StudyDate", "ViewPosition"], encoding=encoding))
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
        frame["study_date"] = pd.to_datetime(joined["StudyDate"], format="%Y%m%d", errors="coerce").dt.date
    rest = [c for c in meta.columns if c not in {"dicom_id", *keys, "ViewPosition", "StudyDate"}]
    frame = pd.concat([frame, joined[label_names], joined[rest]], axis=1)
    labelled = int(len(frame) - unlabeled)
    if unlabeled:
        notes.append(f"{unlabeled} image(s) belong to studies without a label row; kept with null labels ({labelled} labelled)")
    return frame, label_names, unlabeled, notes


def _generic(
    path: str,
    *,
    encoding: str,
    sep: str | None,
    image_col: str | None,
    patient_col: str,
    path_col: str | None,
    study_col: str | None,
    labels_col: str | None,
    labels_sep: str,
    label_cols: Sequence[str],
) -> tuple[pd.DataFrame, list[str], int, list[str]]:
    if labels_col and label_cols:
        raise UsageError("give labels either as one list column (--labels-col) or as one-hot columns (--label-cols), not both")
    id_cols = [c for c in (image_col, patient_col, path_col, study_col, labels_col) if c]
    table = read_table(path, sep=sep, string_columns=id_cols, encoding=encoding)
    present = table.column_names
    if image_col is None:
        image_col = "image_id" if "image_id" in present else (path_col or ("path" if "path" in present else None))
    if path_col is None:
        path_col = "path" if "path" in present else image_col
    if study_col is None and "study_id" in present:
        study_col = "study_id"
    if image_col is None:
        raise UsageError(f"say which column identifies images: --image-col NAME (columns: {', '.join(map(repr, present))})")
    wanted = [image_col, patient_col, path_col] + ([study_col] if study_col else []) + ([labels_col] if labels_col else []) + list(label_cols)
    _require(table, list(dict.fromkeys(wanted)), path, "choose columns with --image-col, --patient-col, --path-col, --labels-col or --label-cols")
    src = frame_from_arrow(table)
    frame = pd.DataFrame({"image_id": src[image_col].astype("str"), "path": src[path_col].astype("str"), "patient_id": src[patient_col].astype("str")})
    if study_col:
        frame["study_id"] = src[study_col].astype("str")
    used = {image_col, path_col, patient_col, study_col, labels_col, *label_cols}
    notes: list[str] = []
    names: list[str] = []
    unlabeled = 0
    label_frame = pd.DataFrame(index=src.index)
    if labels_col:
        label_frame, names, unlabeled = labels_from_lists(src[labels_col], sep=labels_sep)
    elif label_cols:
        label_frame = coerce_label_values(src, label_cols)
        names = list(label_cols)
        unlabeled = int(label_frame.isna().all(axis=1).sum())
    clash = [n for n in names if n in src.columns and n not in used]
    if clash:
        raise UsageError(f"label names {examples_text(clash, len(clash))} are also column names of {path}; rename those columns")
    rest = [c for c in src.columns if c not in used]
    shadowed = [c for c in rest if c in frame.columns]
    if shadowed:
        notes.append(f"column(s) {', '.join(shadowed)} of the table were replaced by the chosen --*-col columns")
        rest = [c for c in rest if c not in shadowed]
    frame = pd.concat([frame, label_frame, src[rest]], axis=1)
    return frame, names, unlabeled, notes


def _coerce_canonical(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Bring canonical metadata columns to their contract types; count values that do not fit."""
    invalid: dict[str, int] = {}
    if "sex" in frame.columns:
        frame["sex"], n = normalize_sex(frame["sex"])
        if n:
            invalid["sex"] = n
    if "age" in frame.columns and not pd.api.types.is_float_dtype(frame["age"]):
        age = pd.to_numeric(frame["age"], errors="coerce")
        n = int((age.isna() & frame["age"].notna()).sum())
        if n:
            invalid["age"] = n
        frame["age"] = age.astype("float32")
    elif "age" in frame.columns:
        frame["age"] = frame["age"].astype("float32")
    if "study_date" in frame.columns and not isinstance(frame["study_date"].dtype, pd.ArrowDtype):
        dates = pd.to_datetime(frame["study_date"], errors="coerce", format="mixed")
        n = int((dates.isna() & frame["study_date"].notna()).sum())
        if n:
            invalid["study_date"] = n
        frame["study_date"] = pd.array(dates.dt.date.where(dates.notna(), None), dtype=pd.ArrowDtype(pa.date32()))
    if "fold" in frame.columns:
        frame["fold"] = pd.to_numeric(frame["fold"], errors="coerce").astype("Int16")
    for col in ("split", "view", "accession", "series_uid", "sop_uid", "study_id"):
        if col in frame.columns:
            frame[col] = frame[col].astype("str")
    return frame, invalid


def ingest_table(
    path: str | os.PathLike,
    *,
    preset: str = "generic",
    metadata: str | os.PathLike | None = None,
    uncertain: str = "keep",
    image_col: str | None = None,
    patient_col: str = "patient_id",
    path_col: str | None = None,
    study_col: str | None = None,
    labels_col: str | None = None,
    labels_sep: str = "|",
    label_cols: Sequence[str] = (),
    sep: str | None = None,
    encoding: str = "utf-8",
    image_ext: str = "jpg",
    root: str | None = None,
) -> IngestResult:
    """Turn a dataset's label/metadata table into a manifest.

    Parameters
    ----------
    path : path
        The table: CSV, TSV (plain or compressed) or Parquet.
    preset : {"nih", "chexpert", "mimic", "generic"}
        How to read it (see :data:`PRESETS`).
    metadata : path, optional
        MIMIC-CXR only: the ``*-metadata.csv`` table joined on subject and study.
    uncertain : {"keep", "ones", "zeros", "ignore"}
        What to do with uncertain (-1) labels.
    image_col, patient_col, path_col, study_col, labels_col, labels_sep, label_cols
        Generic preset only: which columns hold what.
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
    generic_opts = dict(image_col=image_col, path_col=path_col, study_col=study_col, labels_col=labels_col, label_cols=list(label_cols))
    if preset != "generic" and any(v for v in generic_opts.values()):
        given = ", ".join(f"--{k.replace('_', '-')}" for k, v in generic_opts.items() if v)
        raise UsageError(f"{given} only apply to --preset generic; preset {preset!r} knows its columns")
    if preset == "nih":
        frame, labels, unlabeled, notes = _nih(spath, encoding)
    elif preset == "chexpert":
        frame, labels, unlabeled, notes = _chexpert(spath, encoding)
    elif preset == "mimic":
        frame, labels, unlabeled, notes = _mimic(spath, os.fspath(metadata) if metadata else None, encoding, image_ext)
    else:
        frame, labels, unlabeled, notes = _generic(
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
        )
    frame = apply_uncertain_policy(frame, labels, uncertain)
    frame, invalid = _coerce_canonical(frame)
    frame = order_columns(frame.reset_index(drop=True), labels)
    inputs = [file_fingerprint(spath)] + ([file_fingerprint(metadata)] if metadata else [])
    options = {"preset": preset, "uncertain": uncertain, "encoding": encoding}
    if preset == "generic":
        options.update(patient_col=patient_col, labels_sep=labels_sep, sep=sep, **generic_opts)
    if preset == "mimic":
        options["image_ext"] = image_ext
    manifest = Manifest(frame=frame, labels=tuple(labels), root=os.path.abspath(root) if root else None)
    manifest = manifest.with_step(provenance_step("ingest table", options, inputs))
    try:
        check(manifest, path=spath)
    except ManifestValidationError as exc:
        raise _explain_table_violations(exc, spath) from None
    report = IngestReport(
        found=len(frame),
        ingested=len(frame),
        unlabeled=unlabeled,
        invalid_values=invalid,
        notes=tuple(notes),
    )
    return IngestResult(manifest=manifest, errors=empty_errors(), report=report)


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
