"""Incremental updates: re-read only the files that changed since a manifest was made.

``mdprep ingest dicom|images ROOT --update OLD.parquet`` and ``mdprep hash MANIFEST
--update OLD_HASHED.parquet`` list the files again, compare each file's **signature**
(size and modification time) with the one recorded when OLD was made, read only the
files that are new or whose signature changed, take every other row from OLD, and
drop the rows of files that are gone. The manifest they write is byte-identical to
a full run over the same tree with the same options (tested): the update leaves no
trace in the manifest, as ``--workers`` leaves none, and its counts go to the
report, the summary line and the signatures file.

Signatures live in a **sidecar file** next to the manifest, ``NEW.parquet.signatures``
(:func:`signatures_path`), written by a full run with ``--record-signatures`` and
by every ``--update``. Not in the manifest: a modification time differs on every
machine and every copy of the tree, and a manifest committed to git must not change
because its files were copied. The sidecar holds, per file read (path, size, stamp),
what reading it gave besides its row (outcome, error type and message, values that
did not parse, reader warnings), so the error table and the summary of an update
are those of a full run too; and, in its metadata, the SHA-256 of the manifest it
belongs to, so a manifest rewritten since is never paired with stale signatures.

A file whose modification time lies within :data:`RACY_NS` of the moment it was
listed is re-read by the next update even when its signature did not change: a file
rewritten twice within one tick of the file system's clock keeps its size and time
(git calls this "racily clean").

A file replaced by another of the same size whose modification time was set back
to the old one (``touch -r``, ``rsync -t`` of a different file) is not seen: the
signature is size and time only. Run a full ingest when the tree was edited that way.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import InputError, UsageError, cut_text
from .manifest import Manifest, _read_table, from_arrow, write_table

#: The sidecar of ``NEW.parquet`` is ``NEW.parquet.signatures``.
SIDECAR_SUFFIX = ".signatures"
SIGNATURES_FORMAT = "mdprep-signatures"
SIGNATURES_VERSION = 1
#: Parquet key-value metadata key of the sidecar's JSON document.
SIGNATURES_KEY = b"mdprep-signatures"
#: A file modified this close (ns) to its listing is re-read by the next update.
RACY_NS = 2_000_000_000

#: Columns of the sidecar: one row per file read (or reused) by the command.
SIGNATURE_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string()),  # relative to the root, as in the manifest
        pa.field("size", pa.int64()),  # from the listing's stat; -1 when the file could not be stat-ed
        pa.field("stamp", pa.string()),  # modification time in ns, as text ('' when unknown)
        pa.field("racy", pa.bool_()),  # modified within RACY_NS of the listing: re-read next time
        pa.field("read_size", pa.int64()),  # the size the reader reported (fingerprint of the tree)
        pa.field("outcome", pa.string()),  # ok, skipped or failed
        pa.field("error_type", pa.string()),
        pa.field("message", pa.string()),
        pa.field("invalid", pa.list_(pa.string())),  # columns whose value did not parse (stored as null)
        pa.field("notes", pa.list_(pa.string())),  # what the reader warned about
    ]
)
_RESULT_COLUMNS = ("read_size", "outcome", "error_type", "message", "invalid", "notes")

#: Recorded option -> the command-line option that sets it, for messages.
OPTION_FLAGS = {
    "tags": "--tags",
    "missing_patient": "--missing-patient",
    "file_list": "--files-from",
    "allow_outside_root": "--allow-outside-root",
    "patient_regex": "--patient-regex",
    "root": "--root",
    "max_bytes": "--max-bytes",
    "path_map": "--path-map",
}

#: How to make a manifest with signatures, per command (for messages).
_FULL_RUN = {
    "ingest dicom": "mdprep ingest dicom ROOT -o {old} --record-signatures",
    "ingest images": "mdprep ingest images ROOT --patient-regex REGEX -o {old} --record-signatures",
    "hash": "mdprep hash MANIFEST -o {old} --record-signatures",
}


@dataclass(frozen=True)
class UpdateCounts:
    """What an update found, file by file, against the signatures of the previous run.

    Attributes
    ----------
    new : int
        Files listed now that the previous run did not read: read.
    changed : int
        Files whose size or modification time changed: read again.
    removed : int
        Files the previous run read that are no longer listed: their rows are dropped.
    unchanged : int
        Files whose signature is the same: their rows (or error rows) are reused, unread.
    reread : int
        Files whose signature is the same but that were read again all the same: modified
        too close to the previous listing to trust their time (:data:`RACY_NS`), or, for
        ``hash``, files that failed last time.
    """

    new: int
    changed: int
    removed: int
    unchanged: int
    reread: int = 0

    @property
    def read(self) -> int:
        """Files read by the update."""
        return self.new + self.changed + self.reread

    def text(self) -> str:
        """``2 new, 1 changed, 1 removed, 96 unchanged`` (and the re-read ones, if any).

        >>> UpdateCounts(2, 1, 1, 96, 3).text()
        '2 new, 1 changed, 1 removed, 96 unchanged (reused); 3 with the same signature read again (modified within 2 s of the last listing, or failed last time)'
        """
        line = f"{self.new} new, {self.changed} changed, {self.removed} removed, {self.unchanged} unchanged (reused)"
        if self.reread:
            line += (
                f"; {self.reread} with the same signature read again (modified within {RACY_NS // 1_000_000_000} s "
                "of the last listing, or failed last time)"
            )
        return line

    def as_dict(self) -> dict:
        return {"new": self.new, "changed": self.changed, "removed": self.removed, "unchanged": self.unchanged, "reread": self.reread}


@dataclass(frozen=True)
class Signatures:
    """The sidecar of a manifest: what every file read looked like, and what reading it gave.

    Attributes
    ----------
    command : str
        The command that read the files (``ingest dicom``, ``ingest images``, ``hash``).
    root : str
        The folder the paths are relative to.
    options : dict
        The options of the command's provenance step (those that change the output).
    listed_at_ns : int
        Wall-clock time (ns) just before the files were stat-ed: which stamps are racy.
    files : pyarrow.Table
        One row per file, :data:`SIGNATURE_SCHEMA`.
    update : UpdateCounts or None
        The counts of the update that wrote it; None for a full run.
    """

    command: str
    root: str
    options: Mapping[str, Any]
    listed_at_ns: int
    files: pa.Table
    update: UpdateCounts | None = None

    def metadata(self, manifest_sha256: str, manifest_size: int) -> dict:
        return {
            "format": SIGNATURES_FORMAT,
            "format_version": SIGNATURES_VERSION,
            "command": self.command,
            "root": self.root,
            "options": dict(self.options),
            "listed_at_ns": int(self.listed_at_ns),
            "manifest": {"sha256": manifest_sha256, "size": int(manifest_size)},
            "update": self.update.as_dict() if self.update else None,
        }


@dataclass(frozen=True)
class Previous:
    """A manifest to update (``--update OLD``) and its signatures, checked to belong together."""

    path: str
    manifest: Manifest  # metadata only (no rows): root and history
    table: pa.Table  # the rows, as written
    signatures: Signatures


def signatures_path(manifest_path: str | os.PathLike) -> str:
    """The sidecar of ``manifest_path``: the same name with ``.signatures`` appended.

    >>> signatures_path("out/dicom.parquet")
    'out/dicom.parquet.signatures'
    """
    return os.fspath(manifest_path) + SIDECAR_SUFFIX


def local_signatures(root: str | os.PathLike, relpaths: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Size and modification time (ns, as text) of each file under ``root``, symlinks followed.

    A file that cannot be stat-ed (gone, no permission) has size -1 and stamp
    ``''``: it never matches a recorded signature, so it is read, and reading it
    gives its error row.

    Examples
    --------
    >>> import tempfile
    >>> d = tempfile.mkdtemp(); _ = open(os.path.join(d, "a.dcm"), "wb").write(b"abc")
    >>> sizes, stamps = local_signatures(d, ["a.dcm", "gone.dcm"])
    >>> sizes.tolist(), stamps[0].isdigit(), stamps[1]
    ([3, -1], True, '')
    """
    root_s = os.fspath(root)
    sizes = np.full(len(relpaths), -1, dtype=np.int64)
    stamps = [""] * len(relpaths)
    join, stat = os.path.join, os.stat
    for i, rel in enumerate(relpaths):
        try:
            st = stat(join(root_s, rel))
        except (OSError, ValueError):  # ValueError: a NUL byte in the name
            continue
        sizes[i] = st.st_size
        stamps[i] = str(st.st_mtime_ns)
    return sizes, stamps


def file_signatures(root: str | os.PathLike, relpaths: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Signatures of the files to read: the one place that decides how they are taken.

    Local files: :func:`local_signatures`; a URL root (``s3://...``): size and ETag from
    one listing (:func:`mdprep.storage.signatures`).
    """
    from .storage import is_url

    if is_url(os.fspath(root)):
        from .storage import signatures

        return signatures(root, relpaths)
    return local_signatures(root, relpaths)


def racy_stamps(stamps: Sequence[str], listed_at_ns: int) -> np.ndarray:
    """Which stamps are modification times (ns) within :data:`RACY_NS` of ``listed_at_ns`` or later.

    Stamps that are not integers (unknown, or another kind of stamp) are never racy.

    >>> racy_stamps(["1000000000000", "9999999999999", ""], 10_000_000_000_000).tolist()
    [False, True, False]
    """
    values = pd.to_numeric(pd.Series(list(stamps), dtype="object"), errors="coerce").to_numpy(dtype="float64")
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(values, nan=-np.inf) >= float(listed_at_ns - RACY_NS)


# --------------------------------------------------------------------------- reading OLD


def _sha256(path: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _full_run(command: str, old: str) -> str:
    """The full run that makes ``old`` with signatures, for messages."""
    if command not in _FULL_RUN:
        return f"the command that made {old}, again, with --record-signatures"
    return _FULL_RUN[command].format(old=old)


def _read_signatures(path: str, old: str, command: str) -> tuple[dict, pa.Table]:
    hint = f"re-create both with a full run: `{_full_run(command, old)}`"
    try:
        table = pq.read_table(path)
        table.validate(full=True)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputError(f"the signatures file {path!r} is not readable ({cut_text(str(exc))}); {hint}", path=path) from exc
    raw = (table.schema.metadata or {}).get(SIGNATURES_KEY)
    try:
        meta = json.loads(raw) if raw is not None else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != SIGNATURES_FORMAT:
        raise InputError(f"{path!r} is not an mdprep signatures file (no {SIGNATURES_FORMAT!r} metadata); {hint}", path=path)
    if meta.get("format_version") != SIGNATURES_VERSION:
        raise InputError(
            f"{path!r} has signatures format version {meta.get('format_version')!r}; this mdprep reads version {SIGNATURES_VERSION}; {hint}",
            path=path,
        )
    missing = [f.name for f in SIGNATURE_SCHEMA if f.name not in table.column_names]
    if missing:
        raise InputError(f"{path!r} lacks the column(s) {', '.join(map(repr, missing))}; {hint}", path=path)
    try:
        table = table.select(SIGNATURE_SCHEMA.names).cast(SIGNATURE_SCHEMA)
    except (pa.ArrowException, ValueError) as exc:
        raise InputError(f"{path!r} has columns of the wrong type ({cut_text(str(exc))}); {hint}", path=path) from exc
    return meta, table


def load_previous(old: str | os.PathLike, *, command: str) -> Previous:
    """Read the manifest ``old`` and its signatures file, and check they belong together.

    Raises
    ------
    InputError
        ``old`` is not a readable manifest; it has no signatures file (the message says
        how to make one); the signatures were recorded for another version of the file
        (its SHA-256 differs) or by another command; or ``old`` was pseudonymised (its
        paths are pseudonyms that match no file, and signatures would put real
        modification times next to it).
    """
    old_s = os.fspath(old)
    table = _read_table(old_s)
    manifest = from_arrow(table.slice(0, 0), path=old_s)
    if any(step.get("command") == "pseudonymize" for step in manifest.history):
        raise InputError(
            f"{old_s!r} was pseudonymised: its paths are pseudonyms that name no file under the root, and signatures would "
            "record each file's real modification time next to it. Keep the raw manifest and update that one "
            f"(`mdprep {command} ... --update RAW.parquet -o RAW-new.parquet`), then pseudonymise the result",
            path=old_s,
        )
    sidecar = signatures_path(old_s)
    if not os.path.exists(sidecar):
        raise InputError(
            f"{old_s!r} has no signatures file ({sidecar!r}): --update needs the size and modification time each file had "
            f"when {old_s!r} was made. Record them once with a full run, with the options {old_s!r} was made with: "
            f"`{_full_run(command, old_s)}`; every --update then writes the signatures of its own output",
            path=old_s,
        )
    meta, files = _read_signatures(sidecar, old_s, command)
    sha, size = _sha256(old_s)
    recorded = meta.get("manifest") if isinstance(meta.get("manifest"), dict) else {}
    if recorded.get("sha256") != sha:
        raise InputError(
            f"{sidecar!r} was recorded for another version of {old_s!r} (the manifest's SHA-256 differs: it was rewritten "
            f"or replaced since); re-create both with a full run: `{_full_run(command, old_s)}`",
            path=sidecar,
        )
    if meta.get("command") != command:
        raise InputError(
            f"{old_s!r} was made by `mdprep {meta.get('command')}`, not `mdprep {command}`: --update takes a manifest that "
            f"`mdprep {command}` wrote",
            path=old_s,
        )
    signatures = Signatures(
        command=command,
        root=str(meta.get("root")),
        options=meta.get("options") if isinstance(meta.get("options"), dict) else {},
        listed_at_ns=int(meta.get("listed_at_ns") or 0),
        files=files,
    )
    return Previous(old_s, manifest, table, signatures)


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "given" if value else "not given"
    if isinstance(value, list):
        return ",".join(map(str, value)) if value else "none"
    return repr(value)


def check_compatible(previous: Previous, *, root: str, options: Mapping[str, Any]) -> None:
    """Refuse an update whose root or options differ from those ``previous`` was made with.

    Rows reused from OLD were read with OLD's options; a full run with other options
    would give other rows, so the update would not be what it claims.

    Raises
    ------
    InputError
        OLD was made from another root.
    UsageError
        Options that change the output differ; the message names every one, with
        both values.
    """
    old = previous.path
    old_root = previous.signatures.root
    if os.path.normpath(old_root) != os.path.normpath(root):
        raise InputError(
            f"{old!r} was made from the root {old_root!r}, not {root!r}; an update reads the tree its manifest was made from: "
            f"give {old_root!r}, or leave out --update for a full run over {root!r}",
            path=old,
            old_root=old_root,
            root=root,
        )
    recorded = dict(previous.signatures.options)
    differing = [k for k in sorted(set(recorded) | set(options)) if recorded.get(k) != options.get(k)]
    if differing:
        shown = "; ".join(
            f"{OPTION_FLAGS.get(k, k)} {_shown(recorded.get(k))} (this run: {_shown(options.get(k))})" for k in differing
        )
        raise UsageError(
            f"{old!r} was made with other options than this run: {shown}. An update reuses what was read with the options of "
            f"{old!r}, so the options that change the output must be the same: run with those, or leave out --update for a full run",
            options=differing,
        )


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Plan:
    """Which of the listed files to read and which to take from the previous run.

    ``relpaths``, ``sizes``, ``stamps``, ``reuse`` and ``old_rows`` are aligned: for a
    reused file, ``old_rows`` is its row in the previous signatures (else -1).
    """

    root: str
    relpaths: list[str]
    sizes: np.ndarray
    stamps: list[str]
    listed_at_ns: int
    reuse: np.ndarray
    old_rows: np.ndarray
    counts: UpdateCounts | None = None
    previous: Previous | None = field(default=None, repr=False)

    @property
    def to_read(self) -> list[str]:
        """The files to read, in listing order."""
        if not self.reuse.any():
            return list(self.relpaths)
        return [r for r, keep in zip(self.relpaths, self.reuse) if not keep]

    @property
    def reused(self) -> list[str]:
        """The files taken from the previous run, in listing order."""
        return [r for r, keep in zip(self.relpaths, self.reuse) if keep]

    def old_files(self) -> pa.Table:
        """The previous signatures' rows of the reused files, in listing order."""
        assert self.previous is not None
        return self.previous.signatures.files.take(pa.array(self.old_rows[self.reuse], pa.int64()))


def plan_update(root: str, relpaths: Sequence[str], previous: Previous | None, *, reusable: np.ndarray | None = None) -> Plan:
    """Stat every listed file and decide, against ``previous``, which to read.

    Parameters
    ----------
    root : str
        The folder the paths are relative to.
    relpaths : sequence of str
        Every file the command would read in a full run, in its order.
    previous : Previous or None
        The run to update; None plans a full run (every file read, signatures taken).
    reusable : numpy.ndarray of bool, optional
        Which rows of the previous signatures may be reused when unchanged [default:
        all]; the others are read again (``hash`` re-reads files that failed).

    Returns
    -------
    Plan
        A file is reused when the previous run read it, its size and stamp are the
        same, its stamp was not racy (:func:`racy_stamps`) and ``reusable`` allows it.
    """
    relpaths = list(relpaths)
    listed_at = time.time_ns()
    sizes, stamps = file_signatures(root, relpaths)
    n = len(relpaths)
    if previous is None:
        return Plan(root, relpaths, sizes, stamps, listed_at, np.zeros(n, bool), np.full(n, -1, np.int64))
    old = previous.signatures.files
    old_paths = pd.Index(old.column("path").to_pandas())
    rows = old_paths.get_indexer(pd.Index(relpaths, dtype="object")) if n else np.zeros(0, np.int64)
    known = rows >= 0
    at = np.where(known, rows, 0)
    old_sizes = old.column("size").to_numpy()
    old_stamps = np.array(old.column("stamp").to_pylist(), dtype=object)
    old_racy = old.column("racy").to_numpy(zero_copy_only=False)
    allowed = np.ones(len(old), bool) if reusable is None else np.asarray(reusable, bool)
    if len(old):
        same = known & (old_sizes[at] == sizes) & (old_stamps[at] == np.array(stamps, dtype=object)) & (sizes >= 0)
        reuse = same & ~old_racy[at] & allowed[at]
    else:
        same = reuse = np.zeros(n, bool)
    present = np.zeros(len(old), bool)
    present[rows[known]] = True
    counts = UpdateCounts(
        new=int((~known).sum()),
        changed=int((known & ~same).sum()),
        removed=int((~present).sum()),
        unchanged=int(reuse.sum()),
        reread=int((same & ~reuse).sum()),
    )
    return Plan(root, relpaths, sizes, stamps, listed_at, reuse, np.where(reuse, rows, -1), counts, previous)


def results_table(
    paths: Sequence[str],
    read_sizes: Sequence[int],
    outcomes: Sequence[str],
    error_types: Sequence[str],
    messages: Sequence[str],
    invalid: Sequence[Sequence[str]] | None = None,
    notes: Sequence[Sequence[str]] | None = None,
) -> pa.Table:
    """What reading each file gave besides its row, as sidecar columns (``path`` plus the result columns)."""
    n = len(paths)
    empty: list[list[str]] = [[] for _ in range(n)]
    return pa.table(
        {
            "path": pa.array(list(paths), pa.string()),
            "read_size": pa.array(np.asarray(read_sizes, dtype=np.int64) if n else np.zeros(0, np.int64), pa.int64()),
            "outcome": pa.array(list(outcomes), pa.string()),
            "error_type": pa.array(list(error_types), pa.string()),
            "message": pa.array(list(messages), pa.string()),
            "invalid": pa.array([list(v) for v in invalid] if invalid is not None else empty, pa.list_(pa.string())),
            "notes": pa.array([list(v) for v in notes] if notes is not None else empty, pa.list_(pa.string())),
        }
    )


def signatures_for(plan: Plan, command: str, options: Mapping[str, Any], read: pa.Table) -> Signatures:
    """The sidecar of a run: every planned file's signature with what reading it gave.

    ``read`` holds the results of the files read now (:func:`results_table`); those of
    reused files come from the previous signatures.
    """
    parts = [read.select(["path", *_RESULT_COLUMNS])]
    if plan.reuse.any():
        parts.append(plan.old_files().select(["path", *_RESULT_COLUMNS]))
    results = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
    order = pd.Index(results.column("path").to_pandas()).get_indexer(pd.Index(plan.relpaths, dtype="object"))
    if (order < 0).any():
        missing = [p for p, o in zip(plan.relpaths, order) if o < 0][:3]
        raise RuntimeError(f"files planned but neither read nor reused: {missing}")
    results = results.take(pa.array(order, pa.int64()))
    files = pa.table(
        {
            "path": pa.array(plan.relpaths, pa.string()),
            "size": pa.array(plan.sizes, pa.int64()),
            "stamp": pa.array(plan.stamps, pa.string()),
            "racy": pa.array(racy_stamps(plan.stamps, plan.listed_at_ns), pa.bool_()),
            **{c: results.column(c) for c in _RESULT_COLUMNS},
        },
        schema=SIGNATURE_SCHEMA,
    )
    return Signatures(command, plan.root, dict(options), plan.listed_at_ns, files, plan.counts)


def reused_rows(previous: Previous, paths: Sequence[str], columns: Sequence[str] | None = None) -> pa.Table:
    """The rows of the previous manifest whose ``path`` is one of ``paths`` (in the manifest's order).

    Raises
    ------
    InputError
        When the manifest lacks a row its signatures say it has: the two files do not
        belong together.
    """
    table = previous.table if columns is None else previous.table.select(list(columns))
    if not len(paths):
        return table.slice(0, 0)
    mask = pc.is_in(previous.table.column("path"), value_set=pa.array(list(paths), pa.string()))
    rows = table.filter(mask)
    if len(rows) < len(set(paths)):
        raise InputError(
            f"{previous.path!r} lacks rows its signatures file records as read ({len(set(paths)) - len(rows)} file(s)); "
            "the two files do not belong together: re-create both with a full run",
            path=previous.path,
        )
    return rows


def write_signatures(signatures: Signatures, manifest_path: str | os.PathLike) -> str:
    """Write the sidecar of the manifest just written at ``manifest_path`` (atomically); return its path.

    The sidecar records the manifest's SHA-256, so that it is never paired with
    another version of the manifest.
    """
    path = os.fspath(manifest_path)
    sha, size = _sha256(path)
    meta = json.dumps(signatures.metadata(sha, size), sort_keys=True, separators=(",", ":")).encode()
    target = signatures_path(path)
    write_table(signatures.files.replace_schema_metadata({SIGNATURES_KEY: meta}), target)
    return target


def read_signatures(manifest_path: str | os.PathLike) -> tuple[dict, pa.Table]:
    """The metadata document and the rows of the sidecar of ``manifest_path`` (for inspection)."""
    path = os.fspath(manifest_path)
    meta, files = _read_signatures(signatures_path(path), path, "")
    return meta, files


def refuse_unusable(*, update: Any, record_signatures: bool, pseudonymised: bool, stdout: bool = False) -> None:
    """Refuse ``--update`` / ``--record-signatures`` where signatures cannot or must not be written.

    Raises
    ------
    UsageError
        With pseudonymisation (a pseudonymised manifest must not carry real file
        times beside it) or an output on standard output (no file to put the
        signatures next to).
    """
    if update is None and not record_signatures:
        return
    what = "--update" if update is not None else "--record-signatures"
    if pseudonymised:
        raise UsageError(
            f"{what} writes each file's modification time next to the manifest, which a pseudonymised manifest must not "
            "carry (it can date the acquisition): update the raw manifest, then pseudonymise the result "
            "(`mdprep pseudonymize`)"
        )
    if stdout:
        raise UsageError(f"{what} writes a signatures file next to the manifest: give -o a file, not '-'")
