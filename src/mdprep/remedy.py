"""What fixes a failing leakage audit: the `mdprep split` command that re-splits with the right links.

Touches manifests and audit reports only. :func:`suggest_split` turns the checks
that failed into ``--link`` items (a study shared by two patient ids links
``study_id``, byte-identical files link ``file_sha256``, near-duplicates link
``phash``...), runs that split with ``keep_existing`` semantics (every row keeps
its split and fold unless its linked group is torn; a torn group goes whole to the
split and fold holding most of its rows), audits the result with the same
options, adds the link of any check that the move made fail and tries again, and
reports the command, how many rows it moves, and whether the audit of its output
passes. Nothing is written: the user runs the command.
"""

from __future__ import annotations

import os
import re
import shlex
import warnings
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .audit import ALL_CHECKS, PERSON_COLUMNS, VALUE_CHECKS, AuditReport, audit
from .errors import ComponentTooLargeError, UsageError

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

    ``rows_moved`` counts rows that had a split (or fold) and change it (a row
    counted once); ``rows_assigned`` rows that had no split and get one;
    ``folds_dropped`` held-out rows that lose a fold (folds cover the other parts
    only). ``verified`` is whether the audit, run again with the same options on
    that split, no longer fails any check. ``problem`` says why no command could be
    suggested ("" when one was).
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
    remaining: tuple[str, ...]  # checks that fail on the suggested split
    problem: str = ""
    rows_assigned: int = 0
    folds_dropped: int = 0

    @property
    def command(self) -> str:
        return " ".join(shell_quote(a) for a in self.argv)

    def lines(self) -> list[str]:
        """What a person reads: the command, what it moves, whether it was verified, what it cannot fix."""
        out = [f"No split can be suggested: {self.problem}"] if self.problem else []
        if self.argv:
            share = self.rows_moved / self.rows if self.rows else 0.0
            share = f" ({share:.2%})" if share >= 0.0001 or not share else " (<0.01%)"
            what = f"{self.split_moved:,} change split" + (f", {self.fold_moved:,} change fold" if self.fold_moved else "")
            extra = "".join(
                [
                    f"; it also assigns the {self.rows_assigned:,} row(s) that have no split" if self.rows_assigned else "",
                    f"; {self.folds_dropped:,} held-out row(s) lose their fold (folds cover the other parts)" if self.folds_dropped else "",
                ]
            )
            out.append(f"Suggested fix: re-split with links, moving {self.rows_moved:,} of {self.rows:,} rows{share}: {what}{extra}")
            out.append(f"  {self.command}")
            if self.verified:
                out.append(f"  verified: the audit of that split, with the same options, passes {', '.join(self.fixes)}")
            else:
                out.append(f"  not enough: the audit of that split, with the same options, fails {', '.join(self.remaining)}")
        if self.unfixable:
            out.append("Not fixed by re-splitting:")
            out += [f"  {check}: {why}" for check, why in self.unfixable.items()]
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
            "rows_assigned": self.rows_assigned,
            "folds_dropped": self.folds_dropped,
            "merged_components": self.merged_components,
            "verified": self.verified,
            "remaining": list(self.remaining),
            "problem": self.problem,
        }


#: Characters a shell command cannot show as they are: controls, lone surrogates, line separators.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def shell_quote(arg: str) -> str:
    r"""``arg`` quoted for a POSIX shell, pasted as one argument whatever it holds.

    Plain text gets :func:`shlex.quote`; text with control characters (or bytes
    that were not UTF-8) gets bash's ``$'...'`` quoting, so the pasted command names
    the same file and no character reaches the terminal raw.

    >>> shell_quote("a b"), shell_quote("x`y"), shell_quote("t\x1bz")
    ("'a b'", "'x`y'", "$'t\\x1bz'")
    """
    if not _UNPRINTABLE.search(arg):
        return shlex.quote(arg)
    out = []
    for ch in arg:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (os.fsdecode's surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch in "\\'":
            out.append("\\" + ch)
        elif _UNPRINTABLE.match(ch):
            out.append("".join(f"\\x{b:02x}" for b in ch.encode("utf-8", "surrogatepass")))
        else:
            out.append(ch)
    return "$'" + "".join(out) + "'"


def _last_split_options(manifest) -> tuple[dict, int | None]:
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


def _names_problem(names: Sequence[str]) -> str:
    """Why split names cannot go through ``--names`` as they are ("" when they can)."""
    bad = [n for n in names if not n or n != n.strip() or "," in n]
    if not bad:
        return ""
    shown = ", ".join(repr(n) for n in bad[:5])
    return (
        f"the split names {shown} cannot be given to --names (empty, with a comma, or with spaces around them); "
        "rename those splits in the manifest first"
    )


def _link_for(check: str, threshold: int) -> str:
    item = LINK_OF_CHECK[check]
    return f"phash:{threshold}" if item == "phash" and threshold != 4 else item


def suggest_split(
    manifest,
    report: AuditReport,
    *,
    path: str,
    output: str | None = None,
    allow: Sequence[Mapping] = (),
    train_split: str = "train",
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
    allow, train_split :
        The audit's allow list and training split, for the audit of the suggested split.

    The split options (ratios, names, folds, seed, stratification, links) come from
    the manifest's last ``split`` step; without one, the names and ratios are the
    current split's and the folds are as many as the fold column holds. The
    suggested split is audited with the audit's options; when the moves make
    another check fail, its link is added and the split is tried again.
    """
    if report.exit_code == 0:
        return None
    opts = report.options
    split_col = opts.get("split_col", "split")
    frame = manifest.frame
    failing = [r for r in report.checks if r.fails_gate or r.unmet]
    failed = list(dict.fromkeys(r.check for r in failing if r.fails_gate))
    unfixable = {c: UNFIXABLE[c] for c in failed if c in UNFIXABLE}
    for r in failing:
        if r.unmet and not r.fails_gate:
            unfixable.setdefault(r.check, f"required but did not fully run ({r.incomplete_reason}); a re-split does not change that")
    fixes = tuple(c for c in failed if c in LINK_OF_CHECK or c in GROUP_CHECKS)
    empty = Suggestion((), (), fixes, unfixable, len(frame), 0, 0, 0, 0, False, ())
    if not fixes:
        return empty
    if path == "-":
        return _problem(empty, "the manifest came from standard input; save it to a file and audit that file to get a command")
    if split_col == "fold" and "split" in frame.columns:
        return _problem(empty, "the manifest has a split column: audit it without --split-col fold (its folds are audited too) to get a command")
    if split_col not in ("split", "fold"):
        return _problem(empty, f"mdprep split writes a column named split, and this audit ran on {split_col!r}; rename that column to split to get a command")
    threshold = int(opts.get("threshold", 4))
    person_columns = list(opts.get("person_columns") or PERSON_COLUMNS)
    recorded, seed = _last_split_options(manifest)
    seed = 0 if seed is None else int(seed)
    gating = set(opts.get("fail_on") or ())
    audited = set(opts.get("checks") or ())
    # The group: the one the split was made with; else the audit's patient column when patient_overlap gates; else none (image_id).
    group = recorded.get("group") or (opts.get("group", "patient_id") if "patient_overlap" in gating & audited else "image_id")
    folds = None
    if "fold" in frame.columns and frame["fold"].notna().any():
        values = pd.to_numeric(frame["fold"], errors="coerce").dropna()
        found = sorted(set(values.astype(int).tolist()))
        folds = int(recorded.get("folds") or len(found))
        if found != list(range(len(found))) or (values != values.round()).any() or found[-1] >= folds:
            return _problem(empty, f"the fold column holds {found[:8]}{'...' if len(found) > 8 else ''}, not 0..K-1; number the folds from 0 first")
    ratios = names = None
    if split_col == "split":
        present = frame["split"].dropna().astype("str")
        recorded_names = recorded.get("names")
        names = list(recorded_names) if recorded_names and set(present) <= set(recorded_names) else _ordered_names(present)
        ratios = list(recorded["ratios"]) if recorded_names and names == list(recorded_names) and recorded.get("ratios") else _inferred_ratios(present, names)
        if len(names) < 2:
            hint = "; the leaking folds can be re-made with mdprep split --folds K --keep-existing --link ... on the manifest without its split column" if folds else ""
            return _problem(empty, f"every row is in one split ({names[0] if names else 'none'}); mdprep split needs two parts or more{hint}")
        problem = _names_problem(names)
        if problem:
            return _problem(empty, problem)
    stratify = recorded.get("stratify")
    stratify = list(stratify) if stratify is not None and list(stratify) != list(manifest.labels) else None
    stratify_by = list(recorded.get("stratify_by") or [])
    missing_group = recorded.get("missing_group") or ("own" if group in frame.columns and frame[group].isna().any() else "error")
    # The recorded links still apply (their columns are here); then one link per failed check.
    links = [l for l in recorded.get("links") or [] if l.split(":")[0] in frame.columns or l == "same_person"]
    links += [_link_for(c, threshold) for c in ALL_CHECKS if c in fixes and c in LINK_OF_CHECK]
    links = list(dict.fromkeys(links))
    from .splitting import split_manifest

    audit_options = dict(
        split_col=split_col, group=opts.get("group", "patient_id"), fold_col="fold" if split_col == "split" else None,
        checks=opts.get("checks"), fail_on=opts.get("fail_on"), threshold=threshold, person_columns=person_columns,
        time_col=opts.get("time_col"), allow=allow, train_split=train_split,
    )
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # what it would warn is what the command prints when run
                result = split_manifest(
                    manifest, group=group, ratios=ratios, names=names, folds=folds, seed=seed, stratify=stratify,
                    stratify_by=stratify_by, keep_existing=True, missing_group=missing_group, links=links,
                    person_columns=person_columns,
                )
        except ComponentTooLargeError as exc:
            return _problem(empty, exc.message)
        except UsageError as exc:
            return _problem(empty, f"the re-split would fail: {exc.message}")
        out = result.manifest.frame
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            again = audit(out, **audit_options)
        remaining = tuple(dict.fromkeys(r.check for r in again.failed if r.check not in unfixable))
        more = [_link_for(c, threshold) for c in remaining if c in LINK_OF_CHECK and _link_for(c, threshold) not in links]
        if not more:
            break
        links += more  # the moves made another check fail (a moved image's copy elsewhere): link it too
    had_split = frame["split"].notna().to_numpy() if split_col == "split" else np.ones(len(frame), dtype=bool)
    split_changed = _changed_mask(frame, out, "split") & had_split if split_col == "split" else np.zeros(len(frame), dtype=bool)
    fold_changed = np.zeros(len(frame), dtype=bool)
    folds_dropped = 0
    if folds:
        had_fold = frame["fold"].notna().to_numpy()
        lost = had_fold & out["fold"].isna().to_numpy() if "fold" in out.columns else had_fold
        held_now = (out["split"].astype("str") == names[-1]).fillna(False).to_numpy() if split_col == "split" else np.zeros(len(frame), dtype=bool)
        dropped = lost & held_now & ~split_changed  # a held-out row that only loses its fold
        folds_dropped = int(dropped.sum())
        fold_changed = _changed_mask(frame, out, "fold") & had_fold & ~dropped
    moved = split_changed | fold_changed
    argv = ["mdprep", "split", _as_argument(path), "--keep-existing"]
    if links:
        argv += ["--link", ",".join(links)]
    if group != "patient_id":
        argv += ["--group", group]
    if ratios is not None:
        argv += ["--ratios", ",".join(_fmt(r) for r in ratios), "--names", ",".join(names)]
    if folds:
        argv += ["--folds", str(folds)]
    if stratify is not None:
        argv += ["--stratify", ",".join(stratify)]
    if stratify_by:
        argv += ["--stratify-by", ",".join(stratify_by)]
    if missing_group != "error":
        argv += ["--missing-group", missing_group]
    if "same_person" in links and person_columns != list(PERSON_COLUMNS):
        argv += ["--person-cols", ",".join(person_columns)]
    argv += ["--seed", str(seed), "-o", _as_argument(output or _default_output(path))]
    return Suggestion(
        argv=tuple(argv),
        links=tuple(links),
        fixes=fixes,
        unfixable=unfixable,
        rows=len(frame),
        rows_moved=int(moved.sum()),
        split_moved=int(split_changed.sum()),
        fold_moved=int((fold_changed & ~split_changed).sum()),
        merged_components=result.links.merged if result.links is not None else 0,
        verified=not remaining,
        remaining=remaining,
        rows_assigned=int((~had_split & out["split"].notna().to_numpy()).sum()) if split_col == "split" else 0,
        folds_dropped=folds_dropped,
    )


def _problem(empty: Suggestion, text: str) -> Suggestion:
    return replace(empty, problem=text)


def _as_argument(path: str) -> str:
    """A path as a command-line argument: one starting with ``-`` would read as an option."""
    return f"./{path}" if path.startswith("-") else path


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
