"""What both ways of ``ingest table`` share: the presets' columns, the options, label names and provenance.

:func:`mdprep.ingest.ingest_table` (pandas, every preset) and
:func:`mdprep.ingest.table_arrow.ingest_table_arrow` (Arrow, the nih and chexpert presets)
check their options, name their columns and labels and record what they did through the
functions here, so the two cannot drift apart. Nothing here imports a data library.
"""

from __future__ import annotations

import inspect
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..choices import AGGREGATE_POLICIES, PRESETS, UNCERTAIN_POLICIES
from ..errors import MissingColumnError, UsageError, examples_text
from ..fileio import file_fingerprint
from ..labels import LabelRule, label_key, load_label_map, parse_blank_specs, parse_label_rules, resolve_label_names
from ..manifest import CANONICAL_TYPES, provenance_step
from .table_io import is_parquet_table

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
#: NIH columns read as text, besides those the options name.
NIH_TEXT = ("Image Index", "Patient ID", "Finding Labels", "Patient Gender", "View Position")
#: NIH columns the preset needs.
NIH_REQUIRED = ("Image Index", "Finding Labels", "Patient ID")
NIH_HINT = "is this an NIH Data_Entry_2017 table?"
#: NIH source columns kept under canonical or plainer names, in the order they are added.
NIH_RENAMES = {
    "Patient Age": "age",
    "Patient Gender": "sex",
    "View Position": "view",
    "Follow-up #": "follow_up",
    "OriginalImage[Width]": "width",
    "OriginalImage[Height]": "height",
    "OriginalImagePixelSpacing[x]": "pixel_spacing_x",
    "OriginalImagePixelSpacing[y]": "pixel_spacing_y",
}
#: CheXpert columns read as text, besides those the options name.
CHEXPERT_TEXT = ("Path", "Sex", "Frontal/Lateral", "AP/PA")
CHEXPERT_HINT = "is this a CheXpert train.csv or valid.csv?"
#: CheXpert source columns kept under canonical or plainer names, in the order they are added.
CHEXPERT_RENAMES = {"Sex": "sex", "Age": "age", "Frontal/Lateral": "frontal_lateral"}
#: CheXpert columns the preset reads; the others are kept as they are.
CHEXPERT_READ = frozenset({"Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS})
#: Patient and study in a CheXpert path (``.../patient00001/study1/view1_frontal.jpg``).
CHEXPERT_PATH = re.compile(r"(?P<patient>patient\d+)/(?P<study>study\d+)/")

#: Canonical columns ``--col CANONICAL=SOURCE`` may set; the others have options of their own.
COLUMN_TARGETS = tuple(c for c in CANONICAL_TYPES if c not in ("image_id", "path", "patient_id", "study_id"))
#: Identifier columns whose values are stripped of surrounding white space (``' p1'`` is ``p1``).
ID_COLUMNS = ("image_id", "path", "patient_id", "study_id", "series_uid", "sop_uid", "accession")
#: Column names a label may not take: the canonical columns and what ``--aggregate`` adds.
RESERVED_COLUMNS = (*CANONICAL_TYPES, "source_rows")
AGGREGATE_HINT = "pass --aggregate any|majority|all (one row per reader or box)"


def require_columns(table_or_frame: Any, columns: Sequence[str], path: str, hint: str = "") -> None:
    """Raise :class:`~mdprep.errors.MissingColumnError` naming every one of ``columns`` that an Arrow table or a frame lacks."""
    names = getattr(table_or_frame, "column_names", None)
    present = list(names if names is not None else table_or_frame.columns)
    missing = [c for c in columns if c not in present]
    if missing:
        raise MissingColumnError(missing, present, path=path, hint=hint)


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


@dataclass(frozen=True)
class TableOptions:
    """The options of one ``ingest table`` run, checked, with what they parse into.

    Made by :func:`table_options`; the raw values are kept as given (they are recorded
    in the provenance), the parsed ones beside them.
    """

    path: str
    preset: str
    metadata: str | os.PathLike | None
    uncertain: str
    patient_col: str | None
    labels_sep: str
    generic: dict[str, Any]  # image_col, path_col, study_col, labels_col, label_cols (and patient_col off the generic preset)
    label_map: str | os.PathLike | Mapping[str, str] | None
    aggregate: str
    reader_col: str | None
    sep: str | None
    encoding: str
    image_ext: str
    root: str | None
    rules: tuple[LabelRule, ...]
    blank_default: str
    blank_per: dict[str, str]
    column_map: dict[str, str]
    label_mapping: dict[str, str] | None
    text_columns: tuple[str, ...]
    first_line: int | None  # the line of the first row (2 below the header), None for Parquet (rows are counted)


def table_options(
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
) -> TableOptions:
    """Check the options of :func:`mdprep.ingest.ingest_table` (which documents them) and parse them.

    Raises :class:`~mdprep.errors.UsageError` for the first option that is wrong, in
    the order the command has always checked them; the table is looked at only to
    know whether it is Parquet (rows) or text (lines).
    """
    spath = os.fspath(path)
    if preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}", preset=preset)
    if uncertain not in UNCERTAIN_POLICIES:
        raise UsageError(f"unknown --uncertain policy {uncertain!r}; choose one of {', '.join(UNCERTAIN_POLICIES)}")
    if aggregate not in AGGREGATE_POLICIES:
        raise UsageError(f"unknown --aggregate policy {aggregate!r}; choose one of {', '.join(AGGREGATE_POLICIES)}", aggregate=aggregate)
    if reader_col and aggregate == "error":
        raise UsageError(f"--reader-col {reader_col!r} only matters when rows are aggregated: {AGGREGATE_HINT}")
    if sep == "\\t":
        sep = "\t"  # --sep '\t' as typed in a shell: one tab, recorded as one
    if not labels_sep:
        raise UsageError("--labels-sep is empty; give the character between the findings of a cell, for example --labels-sep '|' or --labels-sep ','")
    generic = dict(image_col=image_col, path_col=path_col, study_col=study_col, labels_col=labels_col, label_cols=list(label_cols))
    if preset != "generic" and patient_col not in (None, "patient_id"):
        generic["patient_col"] = patient_col
    if preset != "generic" and any(v for v in generic.values()):
        given = ", ".join(f"--{k.replace('_', '-')}" for k, v in generic.items() if v)
        raise UsageError(f"{given}: only for --preset generic; preset {preset!r} knows its columns")
    if metadata is not None and preset != "mimic":
        raise UsageError(f"--metadata joins MIMIC-CXR's metadata table: only for --preset mimic, not {preset!r}")
    rules = parse_label_rules(label_when)
    blank_default, blank_per = parse_blank_specs(blank)
    column_map = parse_column_specs(columns)
    label_mapping = load_label_map(label_map) if label_map is not None else None
    text_columns = list(dict.fromkeys([r.column for r in rules] + list(column_map.values()) + ([reader_col] if reader_col else [])))
    # Rows are lines of a text table (header on line 1) and counted rows of Parquet.
    first_line = None if is_parquet_table(spath) else 2
    return TableOptions(
        path=spath,
        preset=preset,
        metadata=metadata,
        uncertain=uncertain,
        patient_col=patient_col,
        labels_sep=labels_sep,
        generic=generic,
        label_map=label_map,
        aggregate=aggregate,
        reader_col=reader_col,
        sep=sep,
        encoding=encoding,
        image_ext=image_ext,
        root=root,
        rules=tuple(rules),
        blank_default=blank_default,
        blank_per=blank_per,
        column_map=column_map,
        label_mapping=label_mapping,
        text_columns=tuple(text_columns),
        first_line=first_line,
    )


def options_signature(returns: Any) -> inspect.Signature:
    """The signature of a function that takes a table and the options of :func:`table_options`, returning ``returns``."""
    return inspect.signature(table_options).replace(return_annotation=returns)


def label_map_notes(renamed: Sequence[tuple[str, str]], merged: Mapping[str, Sequence[str]]) -> list[str]:
    """The notes that say what ``--label-map`` merged and renamed.

    >>> label_map_notes([("Effusion", "Pleural Effusion")], {})
    ["label map renamed 'Effusion' to 'Pleural Effusion'"]
    """
    notes = []
    if merged:
        notes.append("label map merged " + "; ".join(f"{', '.join(map(repr, s))} into {t!r}" for t, s in merged.items()))
    if renamed:
        notes.append("label map renamed " + ", ".join(f"{s!r} to {t!r}" for s, t in renamed))
    return notes


def blank_policies(opts: TableOptions, labels: Sequence[str]) -> dict[str, str]:
    """``--blank LABEL=POLICY`` as ``{label column: policy}``, names resolved through the label map.

    Raises :class:`~mdprep.errors.UsageError` for a name that is no label, and for two
    names of one label given different policies.
    """
    per_label = resolve_label_names(opts.blank_per, labels, opts.label_mapping, option="--blank")
    chosen: dict[str, tuple[str, str]] = {}
    for name, label in per_label.items():
        first = chosen.setdefault(label, (name, opts.blank_per[name]))
        if first[1] != opts.blank_per[name]:
            raise UsageError(
                f"--blank gives label {label!r} two policies: {first[0]}={first[1]} and {name}={opts.blank_per[name]} "
                "(both names mean that label); give it one policy"
            )
    return {label: policy for label, (_, policy) in chosen.items()}


def label_origin(preset: str, labels_col: str | None, label_cols: Sequence[str]) -> str:
    if labels_col:
        return f"found in --labels-col {labels_col!r}"
    if label_cols:
        return "given by --label-cols"
    return f"read by preset {preset!r}"


def check_label_names(
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


def provenance(opts: TableOptions) -> dict:
    """The manifest's history step for this run: the options that change the output, and the inputs' fingerprints."""
    inputs = [file_fingerprint(opts.path)] + ([file_fingerprint(opts.metadata)] if opts.metadata else [])
    label_map = opts.label_map
    if label_map is not None and not isinstance(label_map, Mapping) and os.path.isfile(os.fspath(label_map)):
        inputs.append(file_fingerprint(label_map))
    options: dict = {"preset": opts.preset, "uncertain": opts.uncertain, "encoding": opts.encoding, "sep": opts.sep}
    if opts.preset == "generic":
        options.update(patient_col=opts.patient_col, labels_sep=opts.labels_sep, **opts.generic)
    if opts.preset == "mimic":
        options["image_ext"] = opts.image_ext
    if opts.rules:
        options["label_when"] = [str(r) for r in opts.rules]
    if opts.blank_default != "missing" or opts.blank_per:
        options["blank"] = {"default": opts.blank_default, "labels": dict(sorted(opts.blank_per.items()))}
    if label_map is not None:
        options["label_map"] = dict(sorted(opts.label_mapping.items())) if isinstance(label_map, Mapping) else os.fspath(label_map)
    if opts.aggregate != "error":
        options.update(aggregate=opts.aggregate, reader_col=opts.reader_col)
    if opts.column_map:
        options["columns"] = dict(sorted(opts.column_map.items()))
    return provenance_step("ingest table", options, inputs)


def manifest_root(root: str | None) -> str | None:
    """The image root as the manifest records it (absolute, or a URL without credentials)."""
    if not root:
        return None
    from ..storage import canonical_root

    return canonical_root(root)
