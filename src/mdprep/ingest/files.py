"""Finding the files of a file-based source: a walked tree or a given list."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Iterator

from ..errors import EmptyInputError, InputError


@dataclass(frozen=True)
class FileList:
    """Files to read, relative to ``root`` (POSIX separators, sorted), and listed entries refused before reading."""

    root: str
    relpaths: list[str]
    refused: list[tuple[str, str, str, str]]  # error-table rows (path, outcome, error_type, message)

    @property
    def found(self) -> int:
        return len(self.relpaths) + len(self.refused)


def iter_tree(root: str) -> Iterator[str]:
    """Relative POSIX paths of the regular files under ``root``, in tree order.

    Tree order: each folder's files by name, then its subfolders by name,
    depth first. It is a generator, so reading can start while the walk goes on,
    and the order is fixed, so results come out in the same order every time
    without a sort at the end.
    """
    cut = len(root.rstrip(os.sep)) + 1
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise InputError(f"cannot list {folder}: {exc}", path=folder) from exc
        subfolders = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subfolders.append(entry.path)
            elif entry.is_file():
                rel = entry.path[cut:]
                yield rel if os.sep == "/" else rel.replace(os.sep, "/")
        stack.extend(reversed(subfolders))


def check_root(root: str | os.PathLike) -> str:
    """The absolute path of ``root``, which must be a folder."""
    root_s = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root_s):
        raise InputError(f"{os.fspath(root)!r} is not a folder; give the folder that holds the images", path=os.fspath(root))
    return root_s


def collect_files(root: str | os.PathLike, files: Iterable[str] | None = None) -> FileList:
    """Every regular file under ``root`` (recursively), or the given ``files``.

    Listed paths may be absolute or relative to ``root``; a listed path outside
    ``root`` or listed twice is refused with a row in the error table, and a
    listed path that does not exist is left for the reader to report as failed.
    Blank lines are ignored.
    """
    root_s = check_root(root)
    if files is None:
        rels = sorted(iter_tree(root_s))
        if not rels:
            raise EmptyInputError(f"no files found under {os.fspath(root)}; check the path", path=os.fspath(root))
        return FileList(root_s, rels, [])
    rels, refused, seen = [], [], set()
    for raw in files:
        entry = raw.strip()
        if not entry:
            continue
        full = entry if os.path.isabs(entry) else os.path.join(root_s, entry)
        rel = os.path.relpath(os.path.normpath(full), root_s).replace(os.sep, "/")
        if rel == ".." or rel.startswith("../"):
            refused.append((entry, "failed", "OutsideRoot", f"the file is not under the root {root_s}; pass a root that contains it"))
        elif rel in seen:
            refused.append((entry, "skipped", "DuplicatePath", "listed more than once; read once"))
        else:
            seen.add(rel)
            rels.append(rel)
    if not rels and not refused:
        raise EmptyInputError("the file list is empty; give one path per line", path=None)
    order = sorted(range(len(rels)), key=rels.__getitem__)
    return FileList(root_s, [rels[i] for i in order], refused)
