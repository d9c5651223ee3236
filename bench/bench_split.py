"""5-fold and 0.7/0.1/0.2 splits of the real NIH ChestX-ray14 and CheXpert tables.

Side by side in one run, each scored with the same measures (docs/split.md):
* mdprep ``MultilabelStratifiedGroupKFold`` (grouped by patient, all labels);
* scikit-learn ``GroupKFold`` (grouped, not stratified);
* scikit-learn ``StratifiedGroupKFold`` (grouped, stratified on one label: the first
  finding of each image, a single-label proxy);
* iterative-stratification ``MultilabelStratifiedKFold`` (all labels, ignores patients).
Needs ``pip install scikit-learn iterative-stratification``.
"""

from __future__ import annotations

import numpy as np

from _common import median, real_table, timeit

from mdprep.ingest import ingest_table
from mdprep.splitting import (
    MultilabelStratifiedGroupKFold,
    MultilabelStratifiedGroupSplit,
    _positives,
    split_quality,
)


def _folds_from(splitter, X, y, groups) -> np.ndarray:
    folds = np.full(len(X), -1)
    for k, (_, test) in enumerate(splitter.split(X, y, groups)):
        folds[test] = k
    return folds


def run(repeat: int = 3, k: int = 5) -> list[dict]:
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    rows = []
    for name, preset in (("nih", "nih"), ("chexpert", "chexpert")):
        m = ingest_table(real_table(name), preset=preset).manifest
        frame = m.frame
        labels = list(m.labels)
        y = frame[labels]
        pos = _positives(y)
        groups = frame["patient_id"].to_numpy()
        codes = np.unique(groups, return_inverse=True)[1]
        X = np.zeros((len(frame), 1))
        first = np.where(pos.any(axis=1), pos.argmax(axis=1), -1)  # single-label proxy
        candidates = {
            "mdprep MultilabelStratifiedGroupKFold": lambda: MultilabelStratifiedGroupKFold(n_splits=k, random_state=0).assign(y, groups),
            "sklearn GroupKFold": lambda: _folds_from(GroupKFold(n_splits=k), X, None, codes),
            "sklearn StratifiedGroupKFold (first finding)": lambda: _folds_from(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=0), X, first, codes),
            "iterstrat MultilabelStratifiedKFold (no groups)": lambda: _folds_from(MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=0), X, pos.astype(int), None),
        }
        for method, fn in candidates.items():
            out = {}

            def once():
                out["folds"] = fn()

            times = timeit(once, repeat if "StratifiedGroupKFold (" not in method and "iterstrat" not in method else 1)
            q = split_quality(pos, out["folds"], codes, [f"fold {i}" for i in range(k)], np.full(k, 1 / k), labels, kind="fold")
            rows.append(_row(name, f"{k}-fold", method, median(times), q))
        times = timeit(lambda: MultilabelStratifiedGroupSplit(ratios=(0.7, 0.1, 0.2), random_state=0).assign(y, groups), repeat)
        parts = MultilabelStratifiedGroupSplit(ratios=(0.7, 0.1, 0.2), random_state=0).assign(y, groups)
        q = split_quality(pos, parts, codes, ["train", "val", "test"], (0.7, 0.1, 0.2), labels)
        rows.append(_row(name, "0.7/0.1/0.2", "mdprep MultilabelStratifiedGroupSplit", median(times), q))
    return rows


def _row(table, kind, method, seconds, q) -> dict:
    return {
        "table": table,
        "kind": kind,
        "method": method,
        "seconds": seconds,
        "ld": q.label_distribution,
        "ed": q.examples_distribution,
        "max_dev": q.max_prevalence_deviation,
        "max_size_dev": max(abs(p.size_deviation) for p in q.parts),
        "zero": q.zero_positive_pairs,
        "overlap": q.group_overlap,
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| table | split | method | time, s | LD | ED, images | max prevalence deviation, points | max size deviation | (part, label) pairs without positives | patients in 2+ parts |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['table']} | {r['kind']} | {r['method']} | {r['seconds']:.2f} | {r['ld']:.5f} | {r['ed']:.1f} | "
            f"{r['max_dev'] * 100:.2f} | {r['max_size_dev']:.2%} | {r['zero']} | {r['overlap']:,} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(run()))
