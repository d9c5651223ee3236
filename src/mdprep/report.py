"""A self-contained HTML report of a manifest: splits, label prevalence, patients, quality, leakage.

Touches DataFrames and strings only; the page needs no network access (inline CSS
and SVG, no external scripts or fonts).
"""

from __future__ import annotations

import html
import json
from typing import Sequence

import numpy as np
import pandas as pd

from . import __version__
from .manifest import POSITIVE, Manifest
from .splitting import split_quality

PALETTE = ("#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04")
BINS = ((1, 1), (2, 2), (3, 5), (6, 10), (11, 20), (21, 50), (51, None))

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#111827;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #e5e7eb;padding-bottom:.3rem}
.muted{color:#6b7280;font-size:.9rem}table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #e5e7eb;padding:.3rem .6rem;text-align:right}th{background:#f9fafb}td:first-child,th:first-child,table.audit td:last-child{text-align:left}
.cards{display:flex;gap:1rem;flex-wrap:wrap}.card{border:1px solid #e5e7eb;border-radius:.5rem;padding:.6rem 1rem;min-width:8rem}
.card b{display:block;font-size:1.4rem}.passed{color:#16a34a}.failed{color:#dc2626;font-weight:600}.warning{color:#ca8a04}.skipped{color:#6b7280}
.legend span{display:inline-block;margin-right:1rem}.legend i{display:inline-block;width:.8rem;height:.8rem;margin-right:.3rem;vertical-align:middle}
svg text{font-size:11px;fill:#374151}
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _table(headers: Sequence[str], rows: Sequence[Sequence], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def prevalence_chart(prevalence: pd.DataFrame) -> str:
    """Horizontal grouped bars: one group per label, one bar per split (``prevalence``: labels x splits)."""
    labels, splits = list(prevalence.index), list(prevalence.columns)
    bar, gap, left, width = 9, 8, 190, 520
    height = len(labels) * (len(splits) * bar + gap) + 30
    top = float(prevalence.to_numpy().max()) if prevalence.size else 0.0
    scale = width / top if top > 0 else 0.0
    parts = [f'<svg role="img" aria-label="label prevalence by split" width="{left + width + 80}" height="{height}" class="chart">']
    y = 10
    for label in labels:
        parts.append(f'<text x="{left - 8}" y="{y + len(splits) * bar / 2 + 4}" text-anchor="end">{_e(label)}</text>')
        for k, split in enumerate(splits):
            v = float(prevalence.loc[label, split])
            w = max(v * scale, 0.5 if v > 0 else 0)
            parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar - 1}" fill="{PALETTE[k % len(PALETTE)]}"><title>{_e(split)}: {v:.2%}</title></rect>')
            parts.append(f'<text x="{left + w + 4:.1f}" y="{y + bar - 2}">{v:.1%}</text>')
            y += bar
        y += gap
    parts.append("</svg>")
    legend = "".join(f'<span><i style="background:{PALETTE[k % len(PALETTE)]}"></i>{_e(s)}</span>' for k, s in enumerate(splits))
    return f'<div class="legend">{legend}</div>' + "".join(parts)


def histogram_chart(counts: pd.Series) -> str:
    """Vertical bars of patients per images-per-patient bin."""
    labels = [f"{a}" if a == b else (f"{a}-{b}" if b else f"{a}+") for a, b in BINS]
    values = []
    for a, b in BINS:
        mask = counts >= a if b is None else (counts >= a) & (counts <= b)
        values.append(int(mask.sum()))
    top = max(values) or 1
    w, h, gap = 60, 160, 12
    parts = [f'<svg role="img" aria-label="images per patient" width="{len(values) * (w + gap) + 20}" height="{h + 60}" class="chart">']
    for i, (label, v) in enumerate(zip(labels, values)):
        bh = h * v / top
        x = 10 + i * (w + gap)
        parts.append(f'<rect x="{x}" y="{20 + h - bh:.1f}" width="{w}" height="{bh:.1f}" fill="{PALETTE[0]}"><title>{v} patients</title></rect>')
        parts.append(f'<text x="{x + w / 2}" y="{h + 36}" text-anchor="middle">{_e(label)}</text>')
        parts.append(f'<text x="{x + w / 2}" y="{20 + h - bh - 4:.1f}" text-anchor="middle">{v:,}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _intended_ratios(history: Sequence[dict], names: Sequence[str], col: str) -> np.ndarray | None:
    """The ratios ``mdprep split`` was asked for, when its step is in the history."""
    for step in reversed(history):
        opts = step.get("options", {})
        if step.get("command") != "split" or not isinstance(opts, dict):
            continue
        folds, ratios, split_names = opts.get("folds"), opts.get("ratios"), opts.get("names")
        if col == "fold" and isinstance(folds, int) and not isinstance(folds, bool) and folds >= 2:
            return np.full(len(names), 1.0 / folds)
        if col != "fold" and isinstance(ratios, list) and isinstance(split_names, list) and len(ratios) == len(split_names):
            if not all(isinstance(n, str) for n in split_names) or not all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in ratios):
                return None
            wanted = dict(zip(split_names, ratios))
            if set(wanted) == set(names):
                return np.array([wanted[n] for n in names], dtype=float)
        return None
    return None


def _quality_section(frame: pd.DataFrame, labels: Sequence[str], col: str, title: str, history: Sequence[dict]) -> str:
    sub = frame[frame[col].notna()]
    if sub.empty:
        return ""
    names = sorted(map(str, sub[col].unique()))
    parts = pd.Categorical(sub[col].astype("str"), categories=names).codes
    intended = _intended_ratios(history, names, col)
    sizes = intended if intended is not None else np.bincount(parts, minlength=len(names)) / len(sub)
    pos = sub[list(labels)].to_numpy(dtype="float64", na_value=np.nan) == POSITIVE if labels else np.zeros((len(sub), 0), bool)
    codes = pd.factorize(sub["patient_id"])[0]
    q = split_quality(pos, parts.astype(np.int64), codes, names, sizes, list(labels), kind=col)
    rows = [
        ["Label distribution (LD)", f"{q.label_distribution:.5f}"],
        ["Examples distribution (ED), images", f"{q.examples_distribution:.1f}" if intended is not None else "n/a (intended ratios unknown)"],
        ["Largest prevalence deviation, points", f"{q.max_prevalence_deviation * 100:.2f}"],
        ["(part, label) pairs without positives", f"{q.zero_positive_pairs}"],
        ["Patients in more than one part", f'<span class="{"failed" if q.group_overlap else "passed"}">{q.group_overlap:,}</span>'],
    ]
    per = [[_e(p.name), f"{p.images:,}", f"{p.groups:,}"] for p in q.parts]
    return f"<h3>{_e(title)}</h3>" + _table(["measure", "value"], rows) + _table([col, "images", "patients"], per)


def _audit_section(audit: dict | None) -> str:
    if not audit:
        return '<p class="muted">No audit given. Run <code>mdprep audit-leakage MANIFEST --json audit.json</code> and pass <code>--audit audit.json</code>.</p>'
    verdict = audit.get("result", "?")
    rows = []
    for c in audit.get("checks", []):
        status = c.get("verdict", c.get("status"))
        examples = "; ".join(f"{_e(f['key'])} ({_e(' / '.join(f['splits']))})" for f in c.get("findings", [])[:3])
        more = len(c.get("findings", [])) - 3
        if more > 0:
            examples += f"; … {more} more"
        rows.append([f"<code>{_e(c['check'])}</code>", _e(c["partition"]), f'<span class="{_e(status)}">{_e(status)}</span>', f"{len(c.get('findings', [])):,}", f"{c.get('unchecked_rows', 0):,}", examples or _e(c.get("reason", ""))])
    head = f'<p>Verdict: <span class="{"failed" if verdict == "failed" else "passed"}">{_e(verdict)}</span></p>'
    return head + _table(["check", "between", "result", "findings", "unchecked rows", "examples"], rows, cls="audit")


def build_report(manifest: Manifest, *, audit: dict | None = None, title: str = "mdprep report", split_col: str = "split") -> str:
    """The HTML page as one string (see the module docstring)."""
    frame = manifest.frame
    labels = list(manifest.labels)
    per_patient = frame.groupby("patient_id", sort=False).size()
    has_split = split_col in frame.columns and frame[split_col].notna().any()
    groups = frame[split_col].astype("str").fillna("(none)") if has_split else pd.Series("all rows", index=frame.index)
    pos = frame[labels].to_numpy(dtype="float64", na_value=np.nan) == POSITIVE if labels else np.zeros((len(frame), 0), bool)
    prev = pd.DataFrame(pos, columns=labels, index=frame.index).groupby(groups.to_numpy()).mean().T if labels else pd.DataFrame()
    if labels and has_split:
        prev["all rows"] = pos.mean(axis=0)
    split_rows = [[_e(name), f"{len(g):,}", f"{g['patient_id'].nunique():,}"] for name, g in frame.groupby(groups.to_numpy(), sort=True)]
    cards = "".join(
        f'<div class="card"><span class="muted">{_e(k)}</span><b>{v}</b></div>'
        for k, v in (("images", f"{len(frame):,}"), ("patients", f"{per_patient.size:,}"), ("labels", len(labels)), ("images per patient, median", f"{per_patient.median():g}" if per_patient.size else "0"))
    )
    history = _table(["step", "command", "mdprep", "seed"], [[str(i + 1), _e(h.get("command")), _e(h.get("mdprep_version")), _e(h.get("seed"))] for i, h in enumerate(manifest.history)])
    quality = ""
    if has_split:
        quality += _quality_section(frame, labels, split_col, "Splits", manifest.history)
    if "fold" in frame.columns and frame["fold"].notna().any():
        folds = frame[frame["fold"].notna()]
        quality += _quality_section(folds.assign(fold="fold " + folds["fold"].astype("str")), labels, "fold", "Folds", manifest.history)
    body = f"""
<h1>{_e(title)}</h1>
<p class="muted">mdprep {__version__}; one row per image; labels count 1 as positive (−1 uncertain and missing are not positives).</p>
<div class="cards">{cards}</div>
<h2>Splits</h2>
{_table(["split", "images", "patients"], split_rows)}
<h2>Label prevalence</h2>
{prevalence_chart(prev) if labels else '<p class="muted">This manifest has no label columns.</p>'}
<h2>Images per patient</h2>
{histogram_chart(per_patient)}
<p class="muted">Largest: {int(per_patient.max()) if per_patient.size else 0} images for one patient.</p>
<h2>Split quality</h2>
{quality or '<p class="muted">No split or fold column: run <code>mdprep split</code>.</p>'}
<h2>Leakage audit</h2>
{_audit_section(audit)}
<h2>Provenance</h2>
{history}
"""
    script = (
        "document.addEventListener('DOMContentLoaded',function(){"
        "var n=document.querySelectorAll('svg.chart').length;"
        "document.documentElement.setAttribute('data-rendered',n>0?'ok':'no-charts');});"
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
        f"<body>{body}<script>{script}</script></body></html>\n"
    )


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def audit_report_problems(doc) -> list[str]:
    """What is wrong with the shape of an audit report, in the parts the page shows (empty when usable).

    The report is an object with ``schema`` ``mdprep-audit-report``, ``version`` 1, text
    ``result`` and a list of ``checks``; each check is an object with text ``check``,
    ``partition`` and ``verdict`` (or ``status``), and, where present, text ``reason``,
    a count ``unchecked_rows`` and a list of ``findings``, objects with a text or
    number ``key`` and a list of text ``splits``.

    >>> audit_report_problems({"schema": "mdprep-audit-report", "version": 1, "result": "passed", "checks": [{"check": 1, "partition": "split", "verdict": "passed"}]})
    ['checks[0] has check 1, not text']
    """
    from .errors import short_repr

    if not isinstance(doc, dict):
        return [f"it is {short_repr(doc)}, not a JSON object"]
    if doc.get("schema") != "mdprep-audit-report" or doc.get("version") != 1 or isinstance(doc.get("version"), bool):
        return [f"schema {short_repr(doc.get('schema'))} version {short_repr(doc.get('version'))}, not 'mdprep-audit-report' version 1"]
    problems = []
    if not isinstance(doc.get("result"), str):
        problems.append(f"result {short_repr(doc.get('result'))}, not text")
    checks = doc.get("checks")
    if not isinstance(checks, list):
        return problems + [f"checks {short_repr(checks)}, not a list"]
    for i, c in enumerate(checks):
        where = f"checks[{i}]"
        if not isinstance(c, dict):
            problems.append(f"{where} is {short_repr(c)}, not an object")
            continue
        for key in ("check", "partition"):
            if not isinstance(c.get(key), str):
                problems.append(f"{where} has {key} {short_repr(c.get(key))}, not text")
        if not isinstance(c.get("verdict", c.get("status")), str):
            problems.append(f"{where} has verdict {short_repr(c.get('verdict', c.get('status')))}, not text")
        if "reason" in c and not isinstance(c["reason"], str):
            problems.append(f"{where} has reason {short_repr(c['reason'])}, not text")
        if "unchecked_rows" in c and not _is_count(c["unchecked_rows"]):
            problems.append(f"{where} has unchecked_rows {short_repr(c['unchecked_rows'])}, not a count")
        findings = c.get("findings", [])
        if not isinstance(findings, list):
            problems.append(f"{where} has findings {short_repr(findings)}, not a list")
            continue
        for j, f in enumerate(findings):
            key_ok = isinstance(f, dict) and not isinstance(f.get("key"), bool) and isinstance(f.get("key"), (str, int, float))
            splits_ok = isinstance(f, dict) and isinstance(f.get("splits"), list) and all(isinstance(s, str) for s in f["splits"])
            if not (key_ok and splits_ok):
                problems.append(f"{where}.findings[{j}] is {short_repr(f)}, not an object with a key and a list of splits")
    return problems


def load_audit(path: str) -> dict:
    """An audit report written by ``mdprep audit-leakage --json``, its shape checked (:func:`audit_report_problems`)."""
    from .errors import InputError

    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the audit report {path} ({exc}); write it with `mdprep audit-leakage ... --json FILE`", path=path) from None
    problems = audit_report_problems(doc)
    if problems:
        more = f"; ... ({len(problems)} in all)" if len(problems) > 5 else ""
        raise InputError(
            f"{path} is not an mdprep audit report this mdprep can show ({'; '.join(problems[:5])}{more}); write it with `mdprep audit-leakage ... --json FILE`",
            path=path,
            problems=problems,
        )
    return doc
