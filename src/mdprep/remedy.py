"""What fixes a failing leakage audit: the `mdprep split` command that re-splits with the right links.

Touches manifests and audit reports only. :func:`suggest_split` turns the checks
that failed into ``--link`` items (a study shared by two patient ids links
``study_id``, byte-identical files link ``file_sha256``, near-duplicates link
``phash``...), runs that split with ``keep_existing`` semantics (every row keeps
its split and fold unless its linked group is torn; a torn group goes whole to
where most of its rows are), audits the result with the same options, and
reports the command, how many rows it moves, and whether the audit of its output
passes. Nothing is written: the user runs the command.
"""

from __future__ import annotations

import os
import shlex
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from .audit import ALL_CHECKS, PERSON_COLUMNS, VALUE_CHECKS, AuditReport, audit
from .errors import ComponentTooLargeError, UsageError
from .manifest import Manifest

#: Failed checks a grouped re-split fixes without a link: the group itself.
GROUP_CHECKS = ("patient_overlap",)
#: The ``--link`` item that keeps each check's findings inside one group: a value check's own
#: column, the near-duplicate link, the person link.
LINK_OF_CHECK: dict[str, str] = {
    **{check: column for check, column in VALUE_CHECKS.items() if check not in GROUP_CHECKS},
    "near_duplicate": "phash",
    "same_person": "same_person",
}
#: Why a re-split cannot fix the other checks.
UNFIXABLE = {"temporal": "a split by time is needed: val and test images predate training images whatever the groups"}


@dataclass(frozen=True)
class Suggestion:
    """The split command that would pass the audit, and what running it changes.

    ``rows_moved`` counts rows whose split or fold the command changes (a row
    counted once); ``verified`` is whether the audit, run again with the same
    options on that split, no longer fails on any check the split can fix.
    ``problem`` says why no command could be suggested ("" when one was).
    """

    argv: tuple[str, ...]
    links: tuple[str, ...]
    fixes: tuple[str, ...]  # the failed checks the command addresses
    unfixable: dict[str, str]  # failed or unmet checks a re-split cannot fix, and why
    rows: int
    rows_moved: int
    split_moved: int
    fold_moved: int
    merged_components: int
    verified: bool
    remaining: tuple[str, ...]  # checks still failing on the suggested split
    problem: str = ""

    @property
    def command(self) -> str:
        return shlex.join(self.argv)

    def lines(self) -> list[str]:
        """What a person reads: the command, what it moves, whether it was verified, what it cannot fix."""
        if self.problem:
            return [f"No split can be suggested: {self.problem}"]
        out = []
        if self.argv:
            share = self.rows_moved / self.rows if self.rows else 0.0
            share = f" ({share:.2%})" if share >= 0.0001 or not share else " (<0.01%)"
            what = f"{self.split_moved:,} change split" + (f", {self.fold_moved:,} change fold" if self.fold_moved else "")
            out.append(f"Suggested fix: re-split with links, moving {self.rows_moved:,} of {self.rows:,} rows{share}: {what}")
            out.append(f"  {self.command}")
            if self.verified:
                out.append(f"  verified: the audit of that split passes {', '.join(self.fixes)}")
            else:
                out.append(f"  not enough: the audit of that split still fails {', '.join(self.remaining)}")
        for check, why in self.unfixable.items():
            out.append(f"  {check} cannot be fixed by re-splitting: {why}")
        return out

    def to_dict(self) -> dict:
        return {
            "command": self.command if self.argv else None,
            "argv": list(self.argv),
            "links": list(self.links),
            "fixes": list(self.fixes),
            "unfixable": dict(self.unfixable),
            "rows": self.rows,
            "rows_moved": self.rows_moved,
            "split_moved": self.split_moved,
            "fold_moved": self.fold_moved,
            "merged_components": self.merged_components,
            "verified": self.verified,
            "remaining": list(self.remaining),
            "problem": self.problem,
        }


def _last_split_options(manifest: Manifest) -> tuple[dict, int | None]:
    for step in reversed(manifest.history):
        if step.get("command") == "split":
            return dict(step.get("options") or {}), step.get("seed")
    return {}, None


def _ordered_names(values: pd.Series) -> list[str]:
    """Split names in the order train, validation, others, test (others by size), as a split lists them.

    The order matters: a linked group torn between two splits with as many rows in
    each goes to the later one, so the test set keeps its rows.
    """
    from .crossval import TEST_NAMES, TRAIN_NAMES, VAL_NAMES, split_key

    counts = values.value_counts()
    rank = {**{n: 0 for n in TRAIN_NAMES}, **{n: 1 for n in VAL_NAMES}, **{n: 3 for n in TEST_NAMES}}
    return sorted(counts.index, key=lambda n: (rank.get(split_key(n), 2), -counts[n], str(n)))


def _inferred_ratios(values: pd.Series, names: Sequence[str]) -> list[float]:
    """Each part's current share of the rows, rounded, summing to exactly 1."""
    shares = values.value_counts(normalize=True).reindex(list(names), fill_value=0.0).to_numpy()
    r = np.round(shares, 4)
    r[-1] = round(1.0 - r[:-1].sum(), 4)
    return [float(x) for x in r]


def _fmt(x: float) -> str:
    return f"{x:.10g}"


def suggest_split(
    manifest: Manifest,
    report: AuditReport,
    *,
    path: str,
    output: str | None = None,
) -> Suggestion | None:
    """The ``mdprep split`` command whose output passes the checks ``report`` failed (None when it passed).

    Parameters
    ----------
    manifest : Manifest
        The audited manifest, whole (its labels and metadata are re-used).
    report : AuditReport
        Its audit; its options (group, checks, threshold, person columns) are re-used.
    path : str
        The manifest's file, as the command should name it.
    output : str, optional
        Where the command should write [default: ``<stem>-relinked.parquet`` beside ``path``].

    The split options (ratios, names, folds, seed, stratification) come from the
    manifest's last ``split`` step; without one, the names and ratios are the
    current split's and the folds are as many as the fold column holds.
    """
    if report.exit_code == 0:
        return None
    opts = report.options
    split_col, group = opts.get("split_col", "split"), opts.get("group", "patient_id")
    frame = manifest.frame
    failing = [r for r in report.checks if r.fails_gate or r.unmet]
    failed = list(dict.fromkeys(r.check for r in failing if r.fails_gate))
    unfixable = {c: UNFIXABLE[c] for c in failed if c in UNFIXABLE}
    for r in failing:
        if r.unmet and not r.fails_gate:
            unfixable.setdefault(r.check, f"required but did not fully run ({r.incomplete_reason}); a re-split does not change that")
    fixes = tuple(c for c in failed if c in LINK_OF_CHECK or c in GROUP_CHECKS)
    empty = Suggestion((), (), fixes, unfixable, len(frame), 0, 0, 0, 0, False, (), "")
    if not fixes:
        return empty
    if split_col not in ("split", "fold") or (split_col == "fold" and "split" in frame.columns):
        return _problem(empty, f"mdprep split writes a column named split, and this audit ran on {split_col!r}; rename it to split to get a suggestion")
    threshold = int(opts.get("threshold", 4))
    person_columns = list(opts.get("person_columns") or PERSON_COLUMNS)
    links = []
    for check in ALL_CHECKS:
        if check in fixes and check in LINK_OF_CHECK:
            item = LINK_OF_CHECK[check]
            links.append(f"phash:{threshold}" if item == "phash" and threshold != 4 else item)
    recorded, seed = _last_split_options(manifest)
    seed = 0 if seed is None else int(seed)
    folds = None
    if "fold" in frame.columns and frame["fold"].notna().any():
        folds = int(recorded.get("folds") or int(pd.to_numeric(frame["fold"], errors="coerce").max()) + 1)
    ratios = names = None
    if split_col == "split":
        present = frame["split"].dropna().astype("str")
        recorded_names = recorded.get("names")
        names = list(recorded_names) if recorded_names and set(present) <= set(recorded_names) else _ordered_names(present)
        ratios = list(recorded["ratios"]) if recorded_names and names == list(recorded_names) and recorded.get("ratios") else _inferred_ratios(present, names)
        if len(names) < 2:
            return _problem(empty, f"the manifest has a single split ({names[0] if names else 'none'}); there is nothing to keep apart")
    stratify = recorded.get("stratify")
    stratify_by = list(recorded.get("stratify_by") or [])
    missing_group = recorded.get("missing_group", "own" if frame[group].isna().any() else "error") if group in frame.columns else "error"
    from .splitting import split_manifest

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # what it would warn is what the command prints when run
            result = split_manifest(
                manifest,
                group=group,
                ratios=ratios,
                names=names,
                folds=folds,
                seed=seed,
                stratify=stratify if stratify is not None and list(stratify) != list(manifest.labels) else None,
                stratify_by=stratify_by,
                keep_existing=True,
                missing_group=missing_group,
                links=links,
                person_columns=person_columns,
            )
    except ComponentTooLargeError as exc:
        return _problem(empty, exc.message)
    except UsageError as exc:
        return _problem(empty, f"the re-split would fail: {exc.message}")
    out = result.manifest.frame
    split_moved = _changed(frame, out, "split") if split_col == "split" else 0
    fold_moved = _changed(frame, out, "fold") if folds else 0
    moved_rows = int((_changed_mask(frame, out, "split") | (_changed_mask(frame, out, "fold") if folds else False)).sum())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = audit(
            out,
            split_col=split_col,
            group=group,
            fold_col="fold" if split_col == "split" else None,
            checks=opts.get("checks"),
            fail_on=opts.get("fail_on"),
            threshold=threshold,
            person_columns=person_columns,
            time_col=opts.get("time_col"),
        )
    remaining = tuple(dict.fromkeys(r.check for r in again.failed if r.check not in unfixable))
    argv = ["mdprep", "split", path, "--keep-existing", "--link", ",".join(links)] if links else ["mdprep", "split", path, "--keep-existing"]
    if group != "patient_id":
        argv += ["--group", group]
    if ratios is not None:
        argv += ["--ratios", ",".join(_fmt(r) for r in ratios), "--names", ",".join(names)]
    if folds:
        argv += ["--folds", str(folds)]
    if stratify is not None and list(stratify) != list(manifest.labels):
        argv += ["--stratify", ",".join(stratify)]
    if stratify_by:
        argv += ["--stratify-by", ",".join(stratify_by)]
    if missing_group != "error":
        argv += ["--missing-group", missing_group]
    if "same_person" in links and person_columns != list(PERSON_COLUMNS):
        argv += ["--person-cols", ",".join(person_columns)]
    argv += ["--seed", str(seed), "-o", output or _default_output(path)]
    return Suggestion(
        argv=tuple(argv),
        links=tuple(links),
        fixes=fixes,
        unfixable=unfixable,
        rows=len(frame),
        rows_moved=moved_rows,
        split_moved=split_moved,
        fold_moved=fold_moved,
        merged_components=result.links.merged if result.links is not None else 0,
        verified=not remaining,
        remaining=remaining,
    )


def _problem(empty: Suggestion, text: str) -> Suggestion:
    from dataclasses import replace

    return replace(empty, problem=text)


def _default_output(path: str) -> str:
    stem, _ = os.path.splitext(path)
    return f"{stem}-relinked.parquet"


def _changed_mask(before: pd.DataFrame, after: pd.DataFrame, col: str) -> np.ndarray:
    """Rows whose ``col`` differs between the frames (a value gained or lost counts)."""

    def values(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        if col not in frame.columns:
            return np.full(len(frame), "", dtype=object), np.ones(len(frame), dtype=bool)
        s = frame[col]
        return s.astype(object).map(str).to_numpy(dtype=object), s.isna().to_numpy()

    (a, na_a), (b, na_b) = values(before), values(after)
    return (na_a != na_b) | (~na_a & ~na_b & (a != b))


def _changed(before: pd.DataFrame, after: pd.DataFrame, col: str) -> int:
    return int(_changed_mask(before, after, col).sum())
