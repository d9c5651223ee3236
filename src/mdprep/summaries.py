"""The machine-readable summary each command can write with ``--json FILE``.

Every summary is one JSON object with ``"schema": "mdprep-summary"``, ``"version"``,
``"command"`` and the same facts the command prints on stderr (counts that reconcile,
per-label tables, what was written), as plain numbers and text: docs/cli.md gives the
fields of each command. ``split`` and the audit commands keep their own, richer
reports (``mdprep-split-report``, ``mdprep-audit-report``).

The builders here take the library's result objects and return plain dicts; nothing
here prints or writes. A summary holds only what the command already shows, so an
ingest with ``--pseudonymize`` (whose report has its raw examples removed) summarises
no raw identifier.

>>> from mdprep.summaries import jsonable
>>> jsonable({"n": float("nan"), "t": (1, 2)})
{'n': None, 't': [1, 2]}
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

SCHEMA = "mdprep-summary"
VERSION = 1


def jsonable(value: Any) -> Any:
    """``value`` as JSON-ready data: dataclasses and mappings to dicts, tuples to lists,
    numpy scalars and arrays to numbers and lists, NaN, infinities and pandas' NA and NaT to None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        return [jsonable(v) for v in items]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if type(value).__name__ in ("NAType", "NaTType"):  # pandas' missing values, without importing pandas
        return None
    if getattr(value, "ndim", 0) and hasattr(value, "tolist"):  # a numpy array
        return [jsonable(v) for v in value.tolist()]
    if hasattr(value, "item") and not isinstance(value, (int, float)):  # numpy scalar
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def document(command: str, **fields: Any) -> dict:
    """One summary: schema, version and command, then ``fields`` made JSON-ready."""
    return {"schema": SCHEMA, "version": VERSION, "command": command, **jsonable(fields)}


def _update(counts) -> dict | None:
    """An incremental run's :class:`mdprep.incremental.UpdateCounts`, with the files read (None for a full run)."""
    return None if counts is None else {**jsonable(counts), "read": counts.read}


def manifest_facts(summary) -> dict:
    """Rows, patients, images per patient and per-label counts of a :class:`mdprep.manifest.ManifestSummary`."""
    return {
        "rows": summary.rows,
        "patients": summary.patients,
        "images_per_patient": {"median": summary.images_per_patient_median, "max": summary.images_per_patient_max},
        "unlabeled_rows": summary.unlabeled_rows,
        "labels": [
            {
                "label": c.label, "positive": c.positive, "negative": c.negative, "uncertain": c.uncertain,
                "not_mentioned": c.missing, "prevalence": c.prevalence,
            }
            for c in summary.labels
        ],
    }


def ingest_summary(command: str, report, output: str, summary=None, warnings: Iterable[str] = ()) -> dict:
    """``ingest dicom|images|table``: the reconciled counts, why inputs gave no row, warnings, notes and the manifest's facts.

    ``report`` is an :class:`mdprep.ingest.IngestReport`; ``summary`` the written manifest's
    :class:`mdprep.manifest.ManifestSummary` (None leaves the manifest facts out);
    ``warnings`` the text of the library's warnings the command printed (a labelled
    study without images, say), as printed.
    """
    counts = {k: getattr(report, k) for k in ("found", "ingested", "skipped", "failed", "aggregated", "dropped", "lenient", "unlabeled")}
    return document(
        command,
        output=output,
        counts=counts,
        reconciles=report.reconciles,
        not_ingested={k: v for k, v in sorted(report.reasons.items())},
        invalid_values=dict(sorted(report.invalid_values.items())),
        invalid_examples={k: [str(v) for v in vs] for k, vs in sorted(report.invalid_examples.items())},
        notes=list(report.notes),
        warnings=list(warnings),
        update=_update(report.update),
        series=report.series,
        manifest=manifest_facts(summary) if summary is not None else None,
    )


def hash_summary(result, images: int, output: str) -> dict:
    """``hash``: images = hashed + failed, and what an update reused."""
    return document("hash", output=output, images=images, hashed=result.hashed, failed=result.failed, update=_update(result.update))


def validate_summary(checked: Iterable[tuple[str, Any, list]]) -> dict:
    """``validate``: per manifest (path, manifest or None, violations) whether it is valid, its size, and every violation."""
    manifests = []
    for path, manifest, violations in checked:
        entry = {"path": path, "valid": not violations, "violations": [{"check": v.check, "message": v.message} for v in violations]}
        entry.update(rows=None, labels=None) if manifest is None else entry.update(rows=len(manifest.frame), labels=len(manifest.labels))
        manifests.append(entry)
    return document("validate", valid=all(m["valid"] for m in manifests), manifests=manifests)


def weights_summary(result, *, scheme: str, rows_from: str, output: str) -> dict:
    """``weights``: the rows counted and, per label, the counts and weights of the stderr table."""
    return document(
        "weights",
        output=output,
        scheme=scheme,
        rows_from=rows_from,
        rows=result.rows,
        labels=[
            {"label": w.label, "positive": w.n_pos, "negative": w.n_neg, "ignored": w.n_ignored, "w_pos": w.w_pos, "w_neg": w.w_neg, "neutral": w.neutral}
            for w in result.weights
        ],
        notes=list(result.notes),
    )


def _balance(stats) -> dict:
    return {
        "rows": stats.rows,
        "patients": stats.patients,
        "mean_ir": stats.mean_ir,
        "labels": [{"label": k, "positives": stats.positives[k], "irlbl": stats.irlbl[k]} for k in stats.positives],
    }


def resample_summary(result, *, strategy: str, split: str, output: str) -> dict:
    """``resample``: the split before and after (rows, patients, MeanIR, per-label positives and IRLbl), rows removed, and
    (ml-ros, ml-rus) the percentage of the split cloned or removed and why it stopped short of ``--percent``, if it did."""
    return document(
        "resample", output=output, strategy=strategy, split=split, before=_balance(result.before), after=_balance(result.after),
        removed=len(result.removed), percent_reached=result.percent_reached, stop_reason=result.stop_reason,
    )


def export_summary(result, output: str) -> dict:
    """``export``: the leakage verdict, and rows per part (manifest rows = rows written + synthetic rows left out)."""
    return document(
        "export",
        output=output,
        format=result.format,
        files=list(result.files),
        manifest_rows=result.manifest_rows,
        rows=result.rows,
        synthetic=result.synthetic,
        verdict=result.verdict,
        leakage_allowed=result.leakage_allowed,
        parts=[{"part": p.name, "written_as": p.key, "rows": p.rows, "splits": list(p.splits)} for p in result.parts],
    )


def pseudonymize_summary(result, output: str) -> dict:
    """``pseudonymize``: the key's fingerprint and every column's treatment and reason (names only, never values)."""
    t = result.treatments
    return document(
        "pseudonymize",
        output=output,
        key_fingerprint=result.fingerprint,
        rows=len(result.manifest.frame),
        columns=[{"column": c, "treatment": tr, "reason": r} for c, tr, r in t[["column", "treatment", "reason"]].itertuples(index=False)],
    )
