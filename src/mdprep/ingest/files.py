"""Finding the files of a file-based source: a walked tree or a given list.

A walk accounts for every directory entry under the root. Regular files (and
symlinks to them) are read. Folders are walked, symlinked folders once each. Any
other entry becomes an error-table row, so that ``found == ingested + skipped +
failed`` holds for any tree:

==================  =======  ============================================================
entry               outcome  error_type
==================  =======  ============================================================
dangling symlink    skipped  ``DanglingSymlink``
symlink out of root skipped  ``OutsideRoot`` (its target is not under the root; ``allow_outside_root`` reads it)
symlink cycle       skipped  ``SymlinkLoop`` (a link to a folder above it, or a chain of links)
link to a folder    skipped  ``DuplicateFolder`` (the folder is already read under another path)
FIFO                skipped  ``Fifo``
socket              skipped  ``Socket``
device              skipped  ``Device``
undecodable name    failed   ``UndecodablePath`` (the path is not valid UTF-8; shown escaped)
unlistable folder   failed   ``PermissionError`` (or the OS error), one row for the folder
==================  =======  ============================================================

A listed path (``--files-from``) gets the same outcome through the same function
(:func:`classify_entry`); a listed folder is skipped (``Folder``) and a listed path
that does not exist fails (``FileNotFoundError``).

A root that is a URL (``s3://bucket/prefix``, see :mod:`mdprep.storage`) is listed
by :func:`mdprep.storage.list_tree` into the same relative paths, order and rows:
object stores have no links or special files, and folder markers are not counted.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

from ..errors import EmptyInputError, InputError
from ..fileio import decodable, is_within, special_file_kind
from ..storage import is_url

#: An error-table row: (path, outcome, error_type, message).
ErrorRow = tuple[str, str, str, str]


@dataclass(frozen=True)
class FileList:
    """Files to read, relative to ``root`` (POSIX separators, sorted), and entries refused before reading."""

    root: str
    relpaths: list[str]
    refused: list[ErrorRow]  # error-table rows (path, outcome, error_type, message)

    @property
    def found(self) -> int:
        return len(self.relpaths) + len(self.refused)


def escaped_path(path: str) -> str:
    """``path`` as printable text: undecodable bytes written as ``\\xff``.

    >>> escaped_path(os.fsdecode(b"scans/bad\\xff.dcm"))
    'scans/bad\\\\xff.dcm'

    A URL is shown without credentials or query string (:func:`mdprep.storage.clean_url`).
    """
    if is_url(path):
        from ..storage import clean_url

        return clean_url(path)
    if decodable(path):
        return path
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def undecodable_row(path: str) -> ErrorRow:
    """The error row of a path that is not valid UTF-8 (a manifest path must be text)."""
    return (
        escaped_path(path),
        "failed",
        "UndecodablePath",
        "the path is not valid UTF-8 (shown with \\x escapes), so it cannot be stored in a manifest; rename the file",
    )


def _rel(path: str, cut: int) -> str:
    rel = path[cut:]
    return rel if os.sep == "/" else rel.replace(os.sep, "/")


def iter_tree(root: str, problems: list[ErrorRow], *, allow_outside_root: bool = False) -> Iterator[str]:
    """Relative POSIX paths of the files to read under ``root``, in tree order.

    Tree order: each folder's files by name, then its subfolders by name, depth
    first; symlinked folders are walked after the whole real tree, in the order they
    were met, so a folder reachable both ways is read under its real path. It is a
    generator, so reading can start while the walk goes on, and the order is fixed,
    so results come out in the same order every time without a sort at the end.

    Every entry that is not read is appended to ``problems`` as an error-table row
    (see the module docstring) by the time the generator is exhausted. Symlinks to
    files and folders are followed when their target lies under ``root`` (the root
    rule, docs/manifest.md), and wherever they point with ``allow_outside_root``;
    each real folder is walked once, identified by ``(st_dev, st_ino)``.

    A URL root (already :func:`check_root`-ed) is listed at once
    (:func:`mdprep.storage.list_tree`) and yielded in the same tree order.

    Raises
    ------
    InputError
        When ``root`` itself cannot be listed.
    """
    if is_url(root):
        from ..storage import list_tree

        listing = list_tree(root)
        problems.extend(listing.refused)
        yield from tree_order(listing.relpaths)
        return
    cut = len(root.rstrip(os.sep)) + 1
    root_real = None if allow_outside_root else os.path.realpath(root)
    top = os.stat(root)
    walked: dict[tuple[int, int], str] = {(top.st_dev, top.st_ino): "."}  # folder identity -> where it was read
    stack = [root]
    links: deque[str] = deque()  # symlinked folders, walked after the real tree
    while stack or links:
        if not stack:
            link = links.popleft()
            try:
                st = os.stat(link)
            except OSError as exc:  # the target went away during the walk
                problems.append((escaped_path(_rel(link, cut)), "failed", type(exc).__name__, str(exc)))
                continue
            ident = (st.st_dev, st.st_ino)
            if ident in walked:
                problems.append(_revisit_row(link, cut, walked[ident]))
                continue
            walked[ident] = _rel(link, cut)
            stack.append(link)
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if folder == root:
                raise InputError(f"cannot list {escaped_path(folder)}: {exc.strerror or exc}", path=escaped_path(folder)) from exc
            problems.append(
                (escaped_path(_rel(folder, cut)) + "/", "failed", type(exc).__name__, f"cannot list the folder: {exc.strerror or exc}")
            )
            continue
        subfolders = []
        for entry in entries:
            rel = _rel(entry.path, cut)
            try:
                kind, row = classify_entry(
                    entry.path,
                    rel,
                    is_dir=entry.is_dir(follow_symlinks=False),
                    is_file=entry.is_file(follow_symlinks=False),
                    is_link=entry.is_symlink(),
                    root_real=root_real,
                )
                if kind == "folder":
                    st = entry.stat(follow_symlinks=False)
                    ident = (st.st_dev, st.st_ino)
                    if ident in walked:  # a bind mount of a folder already read
                        problems.append(_revisit_row(entry.path, cut, walked[ident]))
                    else:
                        walked[ident] = rel
                        subfolders.append(entry.path)
                    continue
            except OSError as exc:
                problems.append((escaped_path(rel), "failed", type(exc).__name__, f"cannot inspect the entry: {exc.strerror or exc}"))
                continue
            if kind == "link_folder":
                links.append(entry.path)
            elif row is not None:
                problems.append(row)
            else:
                yield rel
        stack.extend(reversed(subfolders))


def tree_order(relpaths: Sequence[str]) -> list[str]:
    """Relative paths in the walk's tree order: each folder's files by name, then its subfolders, depth first.

    One vectorised sort of a key in which each folder part is marked ``1`` and the
    file name ``0`` (so a folder's files come before its subfolders) and parts are
    separated by NUL, which sorts before any character of a name (``a`` before
    ``a-b``, as comparing the names does).

    >>> tree_order(["a/z.dcm", "a/b/x.dcm", "a.dcm", "a-b/y.dcm", "b/y.dcm"])
    ['a.dcm', 'a/z.dcm', 'a/b/x.dcm', 'a-b/y.dcm', 'b/y.dcm']
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    paths = pa.array(list(relpaths), type=pa.string())
    key = pc.replace_substring_regex(paths, r"([^/]*)/", "1\\1\x00")
    key = pc.replace_substring_regex(key, r"(^|\x00)([^\x00]*)$", "\\10\\2")
    return paths.take(pc.sort_indices(key)).to_pylist()


def classify_entry(
    path: str, rel: str, *, is_dir: bool, is_file: bool, is_link: bool, root_real: str | None = None
) -> tuple[str, ErrorRow | None]:
    """What to do with one entry, for the walk and for a listed path alike.

    ``is_dir``, ``is_file`` and ``is_link`` describe the entry itself (symlinks not
    followed). Returns ``(kind, row)``: ``("file", None)`` to read it, ``("folder",
    None)`` for a real folder, ``("link_folder", None)`` for a symlink to a folder,
    or ``("row", row)`` with the error-table row of an entry that is not read (see
    the module docstring). A symlink whose target is not under ``root_real`` (the
    root's real path; None reads links wherever they point) is skipped
    (``OutsideRoot``). Raises OSError when the entry cannot be inspected.
    """
    if is_dir:
        return "folder", None
    if is_file:
        mode = stat.S_IFREG
    elif is_link:
        try:
            mode = os.stat(path).st_mode  # follows the link
        except FileNotFoundError:
            return "row", (escaped_path(rel), "skipped", "DanglingSymlink", f"a symlink to {_target(path)}, which does not exist")
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            return "row", (escaped_path(rel), "skipped", "SymlinkLoop", "a chain of symlinks that never ends")
        if root_real is not None:
            if not is_within(os.path.realpath(path), root_real):
                return "row", (
                    escaped_path(rel), "skipped", "OutsideRoot",
                    f"a symlink to {_target(path)}, outside the root; not read (--allow-outside-root reads it)",
                )
        if stat.S_ISDIR(mode):
            return "link_folder", None
    else:
        mode = os.lstat(path).st_mode
    if not stat.S_ISREG(mode):
        kind = special_file_kind(mode)
        return "row", (escaped_path(rel), "skipped", kind, f"not a regular file ({kind}); not read")
    if not decodable(rel):
        return "row", undecodable_row(rel)
    return "file", None


def _target(link: str) -> str:
    try:
        return repr(escaped_path(os.readlink(link)))
    except OSError:
        return "a target"


def _revisit_row(path: str, cut: int, first: str) -> ErrorRow:
    """The row of a folder whose real folder was already walked: a loop, or a second way in."""
    rel = escaped_path(_rel(path, cut))
    first = "the root folder" if first == "." else repr(escaped_path(first))
    real, parent = os.path.realpath(path), os.path.realpath(os.path.dirname(path))
    if is_within(parent, real):
        return (rel, "skipped", "SymlinkLoop", f"links to {first}, a folder that contains it; not followed, as it would loop")
    return (rel, "skipped", "DuplicateFolder", f"the same folder as {first}, already read; its files are read once")


def _admitted(rel: str, seen: set[str], refused: list) -> bool:
    """Whether a listed path is read: not listed before, and a name that decodes (else its row goes to ``refused``)."""
    if rel in seen:
        refused.append((escaped_path(rel), "skipped", "DuplicatePath", "listed more than once; read once"))
        return False
    seen.add(rel)
    if not decodable(rel):
        refused.append(undecodable_row(rel))
        return False
    return True


def check_root(root: str | os.PathLike) -> str:
    """The absolute path of ``root``, which must be a folder; or the clean URL of a URL root.

    A URL is checked for its back-end only (:func:`mdprep.storage.canonical_root`);
    listing it tells whether anything is there. A ``file://`` URL is its local path.
    """
    if is_url(root):
        from ..storage import canonical_root

        root = canonical_root(root)
        if is_url(root):
            return root
    root_s = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root_s):
        shown = escaped_path(os.fspath(root))
        raise InputError(f"{shown!r} is not a folder; give the folder that holds the images", path=shown)
    return root_s


def collect_files(root: str | os.PathLike, files: Iterable[str] | None = None, *, allow_outside_root: bool = False) -> FileList:
    """Every file to read under ``root`` (recursively), or the given ``files``.

    Without ``files`` the tree is walked with :func:`iter_tree`, whose refused entries
    (special files, dangling links, undecodable names, unlistable folders) are in
    ``refused``. Listed paths may be absolute or relative to ``root`` and are taken
    as they are (spaces, form feeds and other characters are part of the name); only
    empty entries are ignored. Each listed path gets the walk's outcome for the same
    entry (:func:`classify_entry`): a FIFO, socket, device, dangling symlink or
    symlink loop is skipped, a name that is not valid UTF-8 fails. A listed folder is
    skipped (``Folder``: a list names files, its folders are not walked), a listed
    path that does not exist fails (``FileNotFoundError``), and one outside ``root``
    or listed twice is refused, as is a listed symlink whose target is outside
    ``root`` (unless ``allow_outside_root``). Paths in rows are relative to ``root``.
    """
    root_s = check_root(root)
    if is_url(root_s):
        return _collect_objects(root_s, files)
    if files is None:
        problems: list[ErrorRow] = []
        rels = sorted(iter_tree(root_s, problems, allow_outside_root=allow_outside_root))
        if not rels and not problems:
            raise EmptyInputError(f"no files found under {escaped_path(os.fspath(root))}; check the path", path=escaped_path(os.fspath(root)))
        return FileList(root_s, rels, problems)
    rels, refused, seen = [], [], set()
    root_real = None if allow_outside_root else os.path.realpath(root_s)
    for entry in files:
        if not entry:
            continue
        full = os.path.normpath(entry if os.path.isabs(entry) else os.path.join(root_s, entry))
        rel = os.path.relpath(full, root_s).replace(os.sep, "/")
        if rel == ".." or rel.startswith("../"):
            shown = escaped_path(entry)
            refused.append((shown, "failed", "OutsideRoot", f"the file is not under the root {escaped_path(root_s)}; pass a root that contains it"))
            continue
        if not _admitted(rel, seen, refused):
            continue
        try:
            st = os.lstat(full)
            kind, row = classify_entry(
                full, rel, is_dir=stat.S_ISDIR(st.st_mode), is_file=stat.S_ISREG(st.st_mode), is_link=stat.S_ISLNK(st.st_mode),
                root_real=root_real,
            )
        except FileNotFoundError:
            kind, row = "row", (escaped_path(rel), "failed", "FileNotFoundError", "listed, but there is no such file")
        except OSError as exc:
            kind, row = "row", (escaped_path(rel), "failed", type(exc).__name__, f"cannot inspect the entry: {exc.strerror or exc}")
        if kind in ("folder", "link_folder"):
            row = (escaped_path(rel), "skipped", "Folder", "a folder, not a file; a file list names files, so its folders are not walked")
        if row is not None:
            refused.append(row)
        else:
            rels.append(rel)
    if not rels and not refused:
        raise EmptyInputError("the file list is empty; give one path per line", path=None)
    order = sorted(range(len(rels)), key=rels.__getitem__)
    return FileList(root_s, [rels[i] for i in order], refused)


def _collect_objects(root: str, files: Iterable[str] | None) -> FileList:
    """:func:`collect_files` for a URL root: the listing, or each listed object asked about (concurrent HEADs).

    A listed entry is relative to the root or a URL under it; one outside it (a
    ``..`` that climbs out, another bucket, a local path) is refused
    (``OutsideRoot``), as is one listed twice. A listed prefix is skipped
    (``Folder``), a missing object fails (``FileNotFoundError``), one the store
    refuses fails (``PermissionError``), with messages free of credentials.
    """
    import posixpath

    from ..storage import list_tree, stat_listed

    if files is None:
        listing = list_tree(root)
        return FileList(root, listing.relpaths, listing.refused)
    rels, refused, seen = [], [], set()
    for entry in files:
        if not entry:
            continue
        if is_url(entry):
            from ..storage import clean_url

            shown = clean_url(entry)
            rel = shown[len(root) + 1 :] if shown.startswith(root + "/") else None
        else:
            shown = escaped_path(entry)
            rel = None if entry.startswith("/") else posixpath.normpath(entry)
        if rel is None or rel in ("", ".", "..") or rel.startswith("../"):
            refused.append((shown, "failed", "OutsideRoot", f"the file is not under the root {root}; pass a root that contains it"))
            continue
        if not _admitted(rel, seen, refused):
            continue
        rels.append(rel)
    if not rels and not refused:
        raise EmptyInputError("the file list is empty; give one path per line", path=None)
    kept = []
    for rel, found in zip(rels, stat_listed(root, rels)):
        if isinstance(found, OSError):
            message = "listed, but there is no such file" if isinstance(found, FileNotFoundError) else f"cannot inspect the entry: {found.strerror}"
            refused.append((rel, "failed", type(found).__name__, message))
        elif found[0] == "directory":
            refused.append((rel, "skipped", "Folder", "a folder, not a file; a file list names files, so its folders are not walked"))
        else:
            kept.append(rel)
    return FileList(root, sorted(kept), refused)
