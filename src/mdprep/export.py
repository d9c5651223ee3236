"""Exports of a manifest for trainers outside mdprep: a MONAI datalist, a Hugging Face folder, CSV files.

An export is a view of the manifest, never a new dataset:

* every row lands in exactly one **part**, named after its split (``train``,
  ``validation`` for ``val``/``valid``/``dev``, ``test``; any other split keeps its
  own name, see :func:`part_name`), with its fold and its label values. Rows with no
  split form the part ``unassigned``; a manifest with folds but no split is one
  ``train`` part. Rows that have no image of their own (``synthetic`` rows of
  ``mdprep resample``) are left out and counted.
* nothing is written that the manifest does not hold (a pseudonymised manifest stays
  pseudonymised), except the image root joined to the paths: the manifest's own
  root, or the ``root`` given.
* before anything is written, the manifest passes every leakage check of
  :mod:`mdprep.audit` that reads columns only (:data:`EXPORT_CHECKS`), between
  splits and between folds; leakage refuses the export with a
  :class:`~mdprep.errors.LeakageError`, as ``mdprep train`` does, unless
  ``allow_leakage``.
* the same manifest and options give byte-identical files, written atomically.

Writing needs pyarrow only: neither MONAI nor ``datasets`` is imported.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .choices import EXPORT_FORMATS as FORMATS, EXPORT_MISSING as MISSING, EXPORT_UNCERTAIN as UNCERTAIN
from .crossval import TEST_NAMES, TRAIN_NAMES, VAL_NAMES, split_key
from .errors import EmptyInputError, LeakageError, MdprepWarning, MissingColumnError, UsageError, examples_text, short_repr
from .fileio import atomic_write, is_stdio, write_text
from .manifest import Manifest, provenance_step, to_arrow, write_table

#: Split names (after :func:`part_name`'s clean-up, any case) that loaders know under another name.
SPLIT_ALIASES: dict[str, str] = {
    **dict.fromkeys((*TRAIN_NAMES, "trainval", "train_val"), "train"),
    **dict.fromkeys(VAL_NAMES, "validation"),  # the names mdprep train reads as validation rows
    **dict.fromkeys(TEST_NAMES, "test"),
}
#: Parts come in this order, then the others by name, then :data:`UNASSIGNED`.
PART_ORDER = ("train", "validation", "test")
#: The part of the rows that have no split.
UNASSIGNED = "unassigned"
#: MONAI's list keys for the parts it knows; another part's key is its name.
MONAI_KEYS = {"train": "training", "validation": "validation", "test": "test"}
#: The top-level key of a MONAI datalist that holds the provenance (no part may take it).
MONAI_META_KEY = "mdprep"
#: The column (hf, csv) or item key (monai) holding each image's path.
IMAGE_COLUMN = "image"
#: The split name Hugging Face ``datasets`` keeps for the union of all splits.
HF_RESERVED_SPLIT = "all"
#: Extension of each folder format's data files.
DATA_SUFFIX = {"hf": ".parquet", "csv": ".csv"}
#: Name of the dataset card in a folder export.
CARD_NAME = "README.md"


def _export_checks() -> tuple[str, ...]:
    from .audit import ALL_CHECKS

    return tuple(c for c in ALL_CHECKS if c != "temporal")


#: The leakage checks every export runs: all of the audit's checks but ``temporal``
#: (which needs a chosen date column); each reads manifest columns only, and one whose
#: column is absent is skipped and said so.
EXPORT_CHECKS: tuple[str, ...] = _export_checks()


@dataclass(frozen=True)
class ExportPart:
    """One part of an export: a Hugging Face split, a CSV file, a MONAI list.

    Attributes
    ----------
    name : str
        ``train``, ``validation``, ``test``, the split's own name, or ``unassigned``.
    key : str
        Where it is written: the file name (hf, csv) or the MONAI list key (``training`` for train).
    splits : tuple of str
        The manifest's split values in it (empty for ``unassigned`` and for a manifest with no split).
    rows : int
        How many rows it holds.
    """

    name: str
    key: str
    splits: tuple[str, ...]
    rows: int


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_manifest` wrote.

    ``rows`` rows were written, one per manifest row but the ``synthetic`` ones
    (``manifest_rows == rows + synthetic``). ``verdict`` is the leakage audit's line and
    ``checks_run`` the checks that ran (``check (partition)``); ``leakage_allowed`` is
    true when the audit found leakage and ``allow_leakage`` let the export through.
    """

    format: str
    out: str
    files: tuple[str, ...]
    parts: tuple[ExportPart, ...]
    manifest_rows: int
    rows: int
    synthetic: int
    verdict: str
    checks_run: tuple[str, ...]
    leakage_allowed: bool
    provenance: dict = field(repr=False, default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        """Rows per part, in part order."""
        return {p.name: p.rows for p in self.parts}


def part_name(split: Any) -> str:
    """The part that the rows of manifest split ``split`` go to: a name loaders and file systems accept.

    Runs of characters other than letters, digits and ``_`` become one ``_`` (a split
    name may hold ``/`` or spaces, a file name may not; Hugging Face split names are
    ``\\w+``); then the names loaders know are mapped (:data:`SPLIT_ALIASES`).

    >>> part_name("val"), part_name("Train"), part_name("hold-out 2"), part_name("dev")
    ('validation', 'train', 'hold_out_2', 'validation')
    """
    name = re.sub(r"\W+", "_", str(split)).strip("_")
    return SPLIT_ALIASES.get(split_key(split), name)


def _part_key(fmt: str, name: str) -> str:
    if fmt == "monai":
        return MONAI_KEYS.get(name, name)
    return name + DATA_SUFFIX[fmt]


def _plan_parts(frame: pd.DataFrame, has_split: bool) -> tuple[list[tuple[str, tuple[str, ...]]], np.ndarray]:
    """The parts in order (name, manifest splits) and each row's part number.

    Raises :class:`UsageError` when two splits would share a part (``val`` and ``dev``,
    ``Test`` and ``test``) or a split has no usable name, every such split in one error.
    """
    if not has_split:
        return [("train", ())], np.zeros(len(frame), dtype=np.int64)
    codes, uniques = pd.factorize(frame["split"], sort=True)  # nulls: -1
    values = [str(u) for u in uniques]
    names = [part_name(v) for v in values]
    problems = [f"split {short_repr(v)} has no letter or digit to name its file" for v, n in zip(values, names) if not n]
    by_name: dict[str, list[tuple[str, str]]] = {}  # folded part name -> (part name, what goes there)
    for v, n in zip(values, names):
        if n:
            by_name.setdefault(n.casefold(), []).append((n, f"split {short_repr(v)}"))
    if (codes < 0).any():
        by_name.setdefault(UNASSIGNED, []).append((UNASSIGNED, "the rows with no split"))
    for group in by_name.values():
        if len(group) > 1:
            what = ", ".join(w for _, w in group[:10]) + (f", ... ({len(group)} in all)" if len(group) > 10 else "")
            problems.append(f"{what} would {'both' if len(group) == 2 else 'all'} be written as part {group[0][0]!r}")
    if problems:
        raise UsageError(
            "cannot name the parts of the export: " + "; ".join(problems) + ". Give each split a distinct name "
            "(the names train, training, trainval; val, valid, validation, dev; test, testing are each one part, whatever their case)",
            problems=problems,
        )
    distinct = sorted(set(names), key=lambda n: (PART_ORDER.index(n) if n in PART_ORDER else len(PART_ORDER), n))
    if (codes < 0).any():
        distinct.append(UNASSIGNED)
    number = {n: i for i, n in enumerate(distinct)}
    row_part = np.asarray([number[n] for n in names] + [number.get(UNASSIGNED, -1)], dtype=np.int64)[codes]
    splits = {n: tuple(v for v, m in zip(values, names) if m == n) for n in distinct}
    return [(n, splits.get(n, ())) for n in distinct], row_part


def _leakage_audit(frame: pd.DataFrame, has_split: bool, allow_leakage: bool):
    """The audit's column-only checks on the rows to export; refuse leakage unless allowed."""
    from .audit import DESCRIPTIONS, audit, visible

    work = frame if has_split else frame.assign(split="train")
    report = audit(work, checks=EXPORT_CHECKS, fold_col="fold")
    if not has_split:  # one part: only the folds can leak
        report = replace(report, checks=tuple(c for c in report.checks if c.partition == "fold"))
    for c in report.checks:  # findings of a warning check (same_person) are reported, never refused
        if c.verdict == "warning":
            shown = ", ".join(visible(k) for k in c.blocking["key"].head(3))
            warnings.warn(
                f"{c.check} ({c.partition}s): {len(c.blocking):,} finding(s), {DESCRIPTIONS[c.check]}: {shown}; "
                "review them with `mdprep audit-leakage MANIFEST`",
                MdprepWarning,
                stacklevel=3,
            )
    if not report.failed:
        return report, False
    first = report.failed[0]
    found = first.blocking
    shown = ", ".join(f"{short_repr(k)} ({', '.join(map(str, s))})" for k, s in zip(found["key"].head(3), found["splits"].head(3)))
    more = f", ... ({len(found):,} in all)" if len(found) > 3 else ""
    message = (
        f"the manifest leaks between the parts to export: {report.verdict}. {first.check} ({DESCRIPTIONS[first.check]}) "
        f"found {visible(shown)}{more}. Metrics on such parts are inflated. Re-split with `mdprep split` (`mdprep audit-leakage "
        "MANIFEST` lists every finding), or pass --allow-leakage to export anyway (the export records it)"
    )
    if not allow_leakage:
        raise LeakageError(message, verdict=report.verdict, failed=[c.check for c in report.failed])
    warnings.warn(message, MdprepWarning, stacklevel=3)
    return report, True


def _image_paths(manifest: Manifest, frame: pd.DataFrame, root: str | None, relative: bool) -> tuple[pa.Array, str | None]:
    """Each row's image path as written, and the absolute root joined to them (None with ``relative``).

    No file is opened: the paths are the manifest's, joined to the root as text (an
    absolute manifest path stays as it is). The root rule is the readers' to apply
    (``mdprep check``, ``hash``, ``train``).
    """
    paths = pa.array(frame["path"].astype("str").to_numpy(dtype=object), type=pa.string())
    if relative:
        if root is not None:
            raise UsageError("--relative writes the paths as the manifest holds them, so --root has no effect; drop one of them (MONAI's base_dir is where you load the export)")
        return paths, None
    root = root or manifest.root
    if root is None:
        raise UsageError(
            "the manifest records no image root, so its paths cannot be made absolute; pass --root DIR (the folder its "
            "paths are relative to), or --relative to write the paths as the manifest holds them"
        )
    root_abs = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root_abs):
        warnings.warn(
            f"the image root {root_abs!r} is not a folder on this machine; the exported paths point into it "
            "(pass --root DIR where the images are, or --relative)",
            MdprepWarning,
            stacklevel=3,
        )
    prefix = root_abs if root_abs.endswith("/") else root_abs + "/"
    joined = pc.binary_join_element_wise(pa.scalar(prefix), paths, "")
    return pc.if_else(pc.starts_with(paths, "/"), paths, joined), root_abs


def _finite(arr: pa.Array) -> pa.Array:
    """Floats (and lists of floats) with NaN and infinities as nulls: JSON has neither.

    >>> _finite(pa.array([1.5, float("nan")])).to_pylist(), _finite(pa.array([[float("inf"), 2.0], None])).to_pylist()
    ([1.5, None], [[None, 2.0], None])
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_floating(arr.type):
        return pc.if_else(pc.is_finite(arr), arr, pa.scalar(None, type=arr.type))
    if (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)) and pa.types.is_floating(arr.type.value_type):
        if arr.offset:  # a slice: rebuild from a copy that starts at 0
            arr = arr.take(pa.array(np.arange(len(arr))))
        return type(arr).from_arrays(arr.offsets, _finite(arr.values), mask=arr.is_null())
    return arr


def _label_lists(frame: pd.DataFrame, labels: Sequence[str], uncertain: str, missing: str) -> tuple[pa.Array, pa.Array]:
    """MONAI's ``label`` and ``label_mask`` lists: floats in manifest label order, coded by the two policies."""
    raw = frame[list(labels)].to_numpy(dtype="float64", na_value=np.nan) if labels else np.zeros((len(frame), 0))
    is_unc, is_miss = raw == -1, np.isnan(raw)
    value = (raw == 1).astype("float64")
    mask = ((raw == 1) | (raw == 0)).astype("float64")
    if uncertain != "ignore":
        mask[is_unc] = 1.0
        value[is_unc] = 1.0 if uncertain == "ones" else 0.0
    if missing == "negative":
        mask[is_miss] = 1.0
    offsets = pa.array(np.arange(len(frame) + 1, dtype=np.int32) * len(labels))
    return pa.ListArray.from_arrays(offsets, pa.array(value.ravel())), pa.ListArray.from_arrays(offsets, pa.array(mask.ravel()))


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _monai_items(table: pa.Table) -> list[dict]:
    """Items of one MONAI list; an item whose row has no fold has no ``fold`` key (a None would break collation)."""
    if "fold" not in table.column_names or table["fold"].null_count == 0:
        return table.to_pylist()
    has = table["fold"].is_valid().to_numpy(zero_copy_only=False)
    items = np.empty(len(table), dtype=object)
    items[has] = table.filter(pa.array(has)).to_pylist()
    items[~has] = table.drop_columns(["fold"]).filter(pa.array(~has)).to_pylist()
    return items.tolist()


def _monai_text(lists: Sequence[tuple[str, pa.Table]], provenance: dict) -> str:
    """The datalist: the provenance first, then one list per part, one item per line."""
    meta = json.dumps(provenance, indent=1, sort_keys=True, default=_json_default, allow_nan=False).replace("\n", "\n ")
    blocks = [f" {json.dumps(MONAI_META_KEY)}: {meta}"]
    encode = json.JSONEncoder(default=_json_default, allow_nan=False).encode
    for key, table in lists:
        items = _monai_items(table)
        body = ",\n  ".join(map(encode, items))
        blocks.append(f" {json.dumps(key)}: [\n  {body}\n ]" if items else f" {json.dumps(key)}: []")
    return "{\n" + ",\n".join(blocks) + "\n}\n"


def _fence(text: str) -> str:
    """A Markdown code fence longer than any run of backticks in ``text``."""
    runs = [len(r) for r in re.findall(r"`+", text)]
    return "`" * max(3, max(runs, default=0) + 1)


def _card(fmt: str, parts: Sequence[ExportPart], provenance: dict, column_notes: Sequence[tuple[str, str]]) -> str:
    """README.md of a folder export: YAML front matter declaring the splits (hf), then what is in the files and where they came from."""
    from .audit import markdown_text

    lines = []
    if fmt == "hf":
        lines += ["---", "configs:", "- config_name: default", "  data_files:"]
        for p in parts:  # quoted: a split named 2021 or no is text, not a YAML number or boolean
            lines += [f"  - split: {json.dumps(p.name)}", f"    path: {json.dumps(p.key)}"]
        lines += ["tags:", "- mdprep", "---", ""]
    export = provenance["export"]
    manifest = next(iter(export["inputs"]), None)
    origin = f" (sha256 `{manifest['sha256']}`, {manifest['size']:,} bytes)" if manifest and "sha256" in manifest else ""
    audit = provenance["leakage_audit"]
    rows = provenance["rows"]
    lines += [
        "# Dataset exported by mdprep",
        "",
        f"Exported by `mdprep export --format {fmt}` (mdprep {export['mdprep_version']}) from an mdprep manifest{origin}: "
        f"{rows['exported']:,} of its {rows['manifest']:,} rows, one per image"
        + (f"; {rows['synthetic_left_out']:,} synthetic rows (no image of their own) were left out." if rows["synthetic_left_out"] else "."),
        "",
        "| split | file | rows | manifest split values |",
        "|---|---|---:|---|",
    ]
    for p in parts:
        shown = ", ".join(markdown_text(s) for s in p.splits) or ("(none)" if p.name == UNASSIGNED else "(no split column)")
        lines.append(f"| {p.name} | {p.key} | {p.rows:,} | {shown} |")
    lines += ["", "## Columns", ""]
    lines += [f"* {names}: {note}" for names, note in column_notes]
    lines += ["", "## Loading", ""]
    if fmt == "hf":
        lines += [
            "```python",
            "from datasets import load_dataset",
            'ds = load_dataset("path/to/this/folder")  # the splits declared above',
            'ds = load_dataset("parquet", data_files={"train": "path/to/this/folder/train.parquet"})',
            "```",
            "",
            "The image column holds paths; for PNG or JPEG files `ds.cast_column(\"image\", datasets.Image())` decodes them.",
        ]
    else:
        lines += [
            "Read identifiers as text, for example with pandas:",
            "",
            "```python",
            "import pandas as pd",
            'train = pd.read_csv("train.csv", dtype={"image_id": str, "patient_id": str, "split": str}, keep_default_na=False, na_values=[""])',
            "```",
            "",
            "For Hugging Face `datasets`, export with `--format hf`: its CSV reader guesses types and turns id `001` into `1`.",
        ]
    lines += [
        "",
        "## Leakage audit",
        "",
        f"{markdown_text(audit['verdict'])}. Checks that ran: {', '.join(audit['checks_run']) or 'none'}."
        + (" **Leakage was found and allowed (`--allow-leakage`).**" if audit["leakage_allowed"] else ""),
        "",
        "## Provenance",
        "",
        "The export's options, label coding, parts and the manifest's history (every mdprep command that made it):",
        "",
    ]
    body = json.dumps(provenance, indent=2, sort_keys=True, default=_json_default, allow_nan=False)
    fence = _fence(body)
    lines += [fence + "json", body, fence, ""]
    return "\n".join(lines)


def _check_folder(out: str, fmt: str, keep: Sequence[str]) -> None:
    """Refuse a folder that holds data files of this format that the export would not replace (a loader would mix them in)."""
    if not os.path.isdir(out):
        return
    suffix = DATA_SUFFIX[fmt]
    stale = sorted(e.name for e in os.scandir(out) if e.name.endswith(suffix) and e.name not in keep and not e.name.startswith("."))
    if stale:
        raise UsageError(
            f"the output folder {out!r} already holds {examples_text(stale, len(stale))}, which this export would not replace; "
            f"a loader reading the folder would mix {'them' if len(stale) > 1 else 'it'} in: remove {'them' if len(stale) > 1 else 'it'}, "
            "or choose an empty folder",
            path=out,
            stale=stale,
        )


def export_files(manifest: Manifest, fmt: str) -> tuple[str, ...]:
    """The file names a folder export (hf, csv) of ``manifest`` writes in its folder; empty for monai (one file).

    For :func:`mdprep.fileio.check_outputs`, before anything is written.
    """
    if fmt == "monai" or fmt not in FORMATS:
        return ()
    frame = manifest.frame
    has_split = "split" in frame.columns
    if not has_split and not ("fold" in frame.columns and frame["fold"].notna().any()):
        return (CARD_NAME,)
    parts, _ = _plan_parts(frame, has_split)
    return tuple(_part_key(fmt, name) for name, _ in parts) + (CARD_NAME,)


def export_manifest(
    manifest: Manifest,
    fmt: str,
    out: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    relative: bool = False,
    uncertain: str | None = None,
    missing: str | None = None,
    columns: Sequence[str] = (),
    allow_leakage: bool = False,
    inputs: Sequence[Mapping[str, Any]] = (),
) -> ExportResult:
    """Write ``manifest`` for a trainer outside mdprep, one part per split.

    Parameters
    ----------
    manifest : Manifest
        A valid manifest with a ``split`` column, a ``fold`` column, or both.
    fmt : {"monai", "hf", "csv"}
        ``monai``: ``out`` is a JSON datalist (``-``: standard output) with one list per
        part (``training``, ``validation``, ``test``, other splits under their own name)
        of items ``{"image", "label", "label_mask", "fold"}``. ``hf``: ``out`` is a folder
        with one Parquet per part (``train.parquet``, ``validation.parquet``, ...) and a
        ``README.md`` dataset card whose front matter declares them, so
        ``datasets.load_dataset(out)`` loads every split. ``csv``: the same folder with
        CSV files and a card without front matter.
    out : str or path
        The file (monai) or folder (hf, csv) to write.
    root : str or path, optional
        The folder the manifest's paths are relative to [default: the recorded root].
    relative : bool
        Write the paths as the manifest holds them (relative to the root: MONAI's
        ``base_dir``) instead of joined to the absolute root.
    uncertain, missing : str, optional
        monai only: how a -1 and a null label are written (:data:`UNCERTAIN`,
        :data:`MISSING`; default ``ignore``: masked out). hf and csv keep the
        manifest's coding (1, 0, -1, null) and refuse these options.
    columns : sequence of str
        More manifest columns to carry (``view``, ``sex``, ``age``, ...).
    allow_leakage : bool
        Export even when the leakage checks find something (warned, recorded).
    inputs : sequence of dict
        Fingerprints of the manifest file, recorded in the provenance (a file's
        path is not recorded: it could name a patient; see :func:`mdprep.fileio.file_fingerprint`).

    Returns
    -------
    ExportResult
        The files written and the rows per part.

    Raises
    ------
    UsageError
        Unknown format or policy, a policy with hf/csv, no split and no fold column,
        splits that would share a part, a column name twice, an output folder holding
        other data files, a root needed but unknown.
    LeakageError
        The leakage checks found leakage and ``allow_leakage`` is false.
    InputError
        Columns that do not exist (:class:`~mdprep.errors.MissingColumnError`), no rows.
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt != "monai":
        given = [n for n, v in (("--uncertain", uncertain), ("--missing", missing)) if v is not None]
        if given:
            raise UsageError(f"{' and '.join(given)} {'applies' if len(given) == 1 else 'apply'} to --format monai only; {fmt} keeps the manifest's label coding (1, 0, -1, null)")
    uncertain, missing = uncertain or "ignore", missing or "ignore"
    if uncertain not in UNCERTAIN:
        raise UsageError(f"unknown --uncertain {uncertain!r}; choose one of {', '.join(UNCERTAIN)}")
    if missing not in MISSING:
        raise UsageError(f"unknown --missing {missing!r}; choose one of {', '.join(MISSING)}")
    out = os.fspath(out)
    if fmt != "monai" and is_stdio(out):
        raise UsageError(f"--format {fmt} writes a folder; give a folder path, not '-'")
    frame = manifest.frame
    labels = list(manifest.labels)
    absent = [c for c in dict.fromkeys(columns) if c not in frame.columns]
    if absent:
        raise MissingColumnError(absent, list(frame.columns), hint="--columns names manifest columns to carry")
    if frame.empty:
        raise EmptyInputError("the manifest has no rows; there is nothing to export")
    has_split = "split" in frame.columns
    has_fold = "fold" in frame.columns
    if not has_split and not (has_fold and frame["fold"].notna().any()):
        raise UsageError("the manifest has no 'split' column (and no fold): run `mdprep split` first, so that every row is in a train, val or test part")
    manifest_rows = len(frame)
    synthetic = frame["synthetic"].fillna(False).astype(bool).to_numpy() if "synthetic" in frame.columns else np.zeros(len(frame), dtype=bool)
    if synthetic.any():
        frame = frame[~synthetic]
        warnings.warn(f"{int(synthetic.sum())} synthetic row(s) (mdprep resample: no image of their own) left out of the export", MdprepWarning, stacklevel=2)
        if frame.empty:
            raise EmptyInputError("every row of the manifest is synthetic (no image of its own); there is nothing to export")

    # The columns of each format; a name twice would be ambiguous.
    base = [IMAGE_COLUMN, "label", "label_mask"] if fmt == "monai" else ["image_id", IMAGE_COLUMN, "patient_id"] + (["split"] if has_split else [])
    base += ["fold"] if has_fold else []
    if fmt != "monai":
        base += labels
    generated = (IMAGE_COLUMN, "label", "label_mask") if fmt == "monai" else (IMAGE_COLUMN,)
    extras = [c for c in dict.fromkeys(columns) if c not in base or c in generated]
    clash = sorted({c for c in base if base.count(c) > 1} | {c for c in extras if c in base})
    if clash:
        raise UsageError(
            f"column name(s) {examples_text(clash, len(clash))} would appear twice in the export (the {fmt} format writes "
            f"{', '.join(dict.fromkeys(base))}); rename the manifest column or leave it out of --columns",
            clash=clash,
        )
    parts_plan, row_part = _plan_parts(frame, has_split)
    keys = [_part_key(fmt, name) for name, _ in parts_plan]
    if fmt == "monai" and MONAI_META_KEY in keys:
        raise UsageError(f"a split named {MONAI_META_KEY!r} would take the datalist's provenance key; rename that split")
    reserved = [name for name, _ in parts_plan if name.casefold() == HF_RESERVED_SPLIT]
    if fmt == "hf" and reserved:
        raise UsageError(
            f"a split named {reserved[0]!r} cannot be a Hugging Face split ({HF_RESERVED_SPLIT!r} means every split there); "
            "rename that split, or export it with --format csv or monai"
        )
    if fmt != "monai":
        _check_folder(out, fmt, keys)
    image, root_abs = _image_paths(manifest, frame, None if root is None else os.fspath(root), relative)
    report, allowed = _leakage_audit(frame, has_split, allow_leakage)

    table = to_arrow(manifest.with_frame(frame)).replace_schema_metadata(None)
    generated_arrays: dict[str, Any] = {IMAGE_COLUMN: image}
    if fmt == "monai":
        generated_arrays["label"], generated_arrays["label_mask"] = _label_lists(frame, labels, uncertain, missing)
    arrays = {c: generated_arrays[c] if c in generated_arrays else table[c] for c in base}
    arrays.update({c: (_finite(table[c]) if fmt == "monai" else table[c]) for c in extras})
    data = pa.table(arrays)
    if fmt == "csv":
        nested = [c for c in extras if pa.types.is_nested(data.schema.field(c).type)]
        if nested:
            raise UsageError(f"--columns {examples_text(nested, len(nested))} hold lists, which a CSV cell cannot; leave them out or use --format hf")

    parts = tuple(
        ExportPart(name, key, splits, int((row_part == k).sum())) for k, ((name, splits), key) in enumerate(zip(parts_plan, keys))
    )
    options = {
        "format": fmt,
        "relative": bool(relative),
        "root": root_abs,
        "uncertain": uncertain if fmt == "monai" else None,
        "missing": missing if fmt == "monai" else None,
        "columns": list(extras),
        "allow_leakage": bool(allow_leakage),
    }
    checks_run = tuple(f"{c.check} ({c.partition}s)" for c in report.checks if c.status != "skipped")
    if fmt == "monai":
        coding = {
            "label": f"one float per label, in the order of 'labels': 1 positive, 0 negative; uncertain (-1): {UNCERTAIN[uncertain]}; missing (null): {MISSING[missing]}",
            "label_mask": "1 where the label counts in the loss, 0 where it does not",
        }
    else:
        coding = {"1": "positive", "0": "negative", "-1": "uncertain", "null": "not mentioned (empty cell in CSV)"}
    provenance = {
        "export": provenance_step("export", options, [{k: v for k, v in i.items() if k != "path"} for i in inputs]),
        "labels": labels,
        "label_coding": coding,
        "leakage_audit": {
            "verdict": report.verdict,
            "checks_run": list(checks_run),
            "failed": [f"{c.check} ({c.partition}s)" for c in report.failed],
            "leakage_allowed": allowed,
        },
        "parts": [{"name": p.name, "key": p.key, "rows": p.rows, "splits": list(p.splits)} for p in parts],
        "rows": {"manifest": manifest_rows, "exported": len(frame), "synthetic_left_out": int(synthetic.sum())},
        "manifest_history": [dict(h) for h in manifest.history],
    }
    tables = [(p, data.filter(pa.array(row_part == k))) for k, p in enumerate(parts)]
    if fmt == "monai":
        write_text(out, _monai_text([(p.key, t) for p, t in tables], provenance))
        files: tuple[str, ...] = (out,)
    else:
        files = tuple(os.path.join(out, p.key) for p in parts) + (os.path.join(out, CARD_NAME),)
        for (p, t), path in zip(tables, files):
            if fmt == "hf":
                write_table(t, path)
            else:
                import pyarrow.csv as pcsv

                with atomic_write(path) as tmp:
                    pcsv.write_csv(t, str(tmp))
        notes = _column_notes(fmt, has_split, has_fold, labels, extras, relative)
        write_text(files[-1], _card(fmt, parts, provenance, notes))
    return ExportResult(fmt, out, files, parts, manifest_rows, len(frame), int(synthetic.sum()), report.verdict, checks_run, allowed, provenance)


def _code(name: str) -> str:
    """A column name as Markdown inline code, or escaped text when code cannot hold it literally."""
    from .audit import markdown_text, visible

    return f"`{name}`" if "`" not in name and visible(name) == name and name.strip() == name and name else markdown_text(name)


def _column_notes(fmt: str, has_split: bool, has_fold: bool, labels: Sequence[str], extras: Sequence[str], relative: bool) -> list[tuple[str, str]]:
    """(column names as Markdown, meaning) for the card of a folder export."""
    where = "relative to the manifest's image root, as the manifest holds it" if relative else "absolute: the image root joined to the manifest's path"
    notes = [("image_id", "the manifest's image id (text)"), (IMAGE_COLUMN, f"the image file's path, {where}"), ("patient_id", "the manifest's patient id (text)")]
    if has_split:
        notes.append(("split", "the manifest's split value (null in the unassigned part)"))
    if has_fold:
        notes.append(("fold", "the manifest's fold (null where the row has none, such as a held-out test row)"))
    rendered = [(_code(c), note) for c, note in notes]
    if labels:
        coding = "1 positive, 0 negative, -1 uncertain, null not mentioned" + (" (an empty cell)" if fmt == "csv" else "")
        rendered.append((", ".join(_code(c) for c in labels), f"the label columns (int8), in the manifest's order: {coding}"))
    rendered += [(_code(c), "carried from the manifest (`--columns`)") for c in extras]
    return rendered
