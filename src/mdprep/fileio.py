"""File-system helpers: atomic writes and input fingerprints.

Touches only the file system; knows nothing of manifests or of the command line.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

_HASH_CHUNK = 1 << 20


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success.

    ``mode`` sets the file's permissions (0600 for secrets); by default the usual
    permissions under the umask. The temporary file is 0600 until then.

    An interrupted or failed write never leaves a half-written file where a good
    one was expected: the temporary file lives in the same folder (so the rename
    is atomic on POSIX) and is removed if the block raises.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_write(d / "out.txt") as tmp:
    ...     _ = tmp.write_text("hello")
    >>> (d / "out.txt").read_text()
    'hello'
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if mode is None:
            # mkstemp creates 0600 files; give the result the usual permissions.
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


#: Separates an archive from the member to read in a path: ``labels.zip::train.csv``.
MEMBER_SEP = "::"


def split_member(path: str | os.PathLike) -> tuple[str, str | None]:
    """Split ``archive.zip::member.csv`` into the archive and the member.

    A path that names an existing file is that file, even if it contains ``::``;
    otherwise the text after the first ``::`` is the member.

    >>> split_member("labels.zip::train/labels.csv")
    ('labels.zip', 'train/labels.csv')
    >>> split_member("labels.csv")
    ('labels.csv', None)
    """
    spath = os.fspath(path)
    if MEMBER_SEP not in spath or os.path.isfile(spath):
        return spath, None
    archive, _, member = spath.partition(MEMBER_SEP)
    return archive, member


def file_fingerprint(path: str | os.PathLike) -> dict:
    """Size and SHA-256 of one file's bytes, with the path as given.

    For a member of an archive (``archive.zip::member.csv``, see :func:`split_member`)
    the archive's bytes are hashed and the member is recorded.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> _ = p.write_bytes(b"abc")
    >>> file_fingerprint(p)["sha256"][:12]
    'ba7816bf8f01'
    """
    archive, member = split_member(path)
    digest = hashlib.sha256()
    size = 0
    with open(archive, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    out = {"path": os.path.normpath(os.fspath(path)), "kind": "file", "size": size, "sha256": digest.hexdigest()}
    if member is not None:
        out["member"] = member
    return out


def listing_fingerprint(root: str | os.PathLike, relpaths: Iterable[str], sizes: Iterable[int]) -> dict:
    """Fingerprint of a file tree from its listing: sorted relative paths and sizes.

    Hashing every byte of an imaging tree would cost more than reading its headers,
    so a tree is fingerprinted by what it contains (names and sizes); content hashes
    of individual images are the leakage audit's job.
    """
    entries = sorted(zip(relpaths, sizes))
    listing = "".join([f"{rel}\0{size}\n" for rel, size in entries])
    digest = hashlib.sha256(listing.encode("utf-8", "surrogateescape"))
    total = sum(size for _, size in entries)
    count = len(entries)
    return {
        "path": os.path.normpath(os.fspath(root)),
        "kind": "tree",
        "files": count,
        "size": total,
        "sha256": digest.hexdigest(),
    }


#: Error type of each kind of directory entry that is neither a regular file nor a folder.
SPECIAL_FILE_KINDS = {
    stat.S_IFIFO: "Fifo",
    stat.S_IFSOCK: "Socket",
    stat.S_IFCHR: "Device",
    stat.S_IFBLK: "Device",
}


def special_file_kind(mode: int) -> str:
    """``Fifo``, ``Socket`` or ``Device`` for the ``st_mode`` of such an entry, else ``SpecialFile``.

    Readers must not open these (a FIFO blocks forever, a device never ends), so
    walks and readers report them as skipped entries of this type.

    >>> special_file_kind(stat.S_IFIFO | 0o644)
    'Fifo'
    """
    return SPECIAL_FILE_KINDS.get(stat.S_IFMT(mode), "SpecialFile")


def paths_outside_root(root: str | os.PathLike, relpaths: Iterable[str], *, allow_outside_root: bool = False):
    """Mask of the ``relpaths`` that lead outside ``root``; refuse them unless allowed.

    The root rule: mdprep reads a manifest's images only under its root. A path
    leaves the root when it is absolute and elsewhere, when its ``..`` parts climb
    out, or when a symbolic link on the way (a linked folder or the file itself)
    resolves outside ``os.path.realpath(root)``.

    The check is cheap and runs before any file is opened: a vectorised lexical pass
    over the distinct paths, then ``realpath`` and one listing per distinct folder
    to find the links among the files (only links are resolved further); about
    0.1 s for 112,000 paths in 12 folders. A path that does not exist is not
    outside; reading it fails later, with its row.

    Parameters
    ----------
    root : str or path
        The folder the paths are relative to.
    relpaths : iterable of str
        Paths as the manifest gives them (POSIX separators).
    allow_outside_root : bool
        Return the mask instead of raising when some paths leave the root.

    Returns
    -------
    numpy.ndarray of bool
        True where the path leads outside the root, aligned with ``relpaths``.

    Raises
    ------
    InputError
        Some paths leave the root and ``allow_outside_root`` is false; the message
        gives their number and a few of them.

    Examples
    --------
    >>> import tempfile
    >>> paths_outside_root(tempfile.mkdtemp(), ["a.png", "x/../b.png", "../c.png", "/etc/passwd"], allow_outside_root=True).tolist()
    [False, False, True, True]
    """
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    from .errors import InputError, examples_text

    root_abs = os.path.abspath(os.fspath(root))
    root_real = os.path.realpath(root_abs)
    inside_prefix = root_real.rstrip(os.sep) + os.sep

    def leaves(real: str) -> bool:
        return real != root_real and not real.startswith(inside_prefix)

    # A null path names nothing under the root; it is left for the reader to fail on.
    codes, uniques = pd.factorize(pd.Series(list(relpaths), dtype="object").fillna("").astype("str"))
    paths = pa.array(uniques, type=pa.string())
    outside = np.zeros(len(paths), dtype=bool)
    via_link = np.zeros(len(paths), dtype=bool)
    # Absolute paths, paths with a '..' part (and the odd one with a NUL byte, which
    # names no file): resolved one by one, as they are few.
    odd = pc.or_(
        pc.or_(pc.starts_with(paths, "/"), pc.match_substring_regex(paths, r"(^|/)\.\.(/|$)")), pc.match_substring(paths, "\x00")
    ).to_numpy(zero_copy_only=False)
    for k in np.flatnonzero(odd):
        full = os.path.join(root_abs, uniques[k])
        lexical = leaves(os.path.normpath(full))
        try:
            outside[k] = lexical or leaves(os.path.realpath(full))
        except ValueError:  # embedded NUL byte
            outside[k] = lexical
        via_link[k] = outside[k] and not lexical
    # Plain relative paths: resolve each distinct folder once; one listing per folder
    # finds the links among its files (no stat per file); only links are resolved.
    plain = np.flatnonzero(~odd)
    if len(plain):
        plain_paths = paths.take(pa.array(plain))
        folders = pc.replace_substring_regex(plain_paths, r"/?[^/]*$", "").to_numpy(zero_copy_only=False)
        folder_codes, folder_names = pd.factorize(folders)
        folder_real = [os.path.realpath(os.path.join(root_abs, f)) for f in folder_names]
        folder_out = np.array([leaves(r) for r in folder_real], dtype=bool)[folder_codes]
        links = []
        for name, real in zip(folder_names, folder_real):
            try:
                with os.scandir(real) as entries:
                    links += [f"{name}/{e.name}" if name else e.name for e in entries if e.is_symlink()]
            except OSError:  # not a folder (yet): it holds no links, and reading its files fails later
                pass
        linked = pc.is_in(plain_paths, value_set=pa.array(links, type=pa.string())).to_numpy(zero_copy_only=False)
        for j in np.flatnonzero(linked):
            linked[j] = leaves(os.path.realpath(os.path.join(root_abs, uniques[plain[j]])))
        outside[plain] = via_link[plain] = folder_out | linked
    mask = outside[codes]
    if mask.any() and not allow_outside_root:
        bad = [uniques[k] for k in np.flatnonzero(outside)]
        n_links = int(via_link[outside].sum())
        how = f" ({n_links} through symbolic links)" if n_links else ""
        raise InputError(
            f"{len(bad)} manifest path(s) lead outside the image root {root_abs!r}{how}: {examples_text(bad, len(bad))}; "
            "mdprep reads images only under the root. Fix these paths, pass --root DIR with the folder that holds them, "
            "or pass --allow-outside-root to read them anyway",
            path=root_abs,
            count=len(bad),
            examples=bad[:5],
        )
    return mask
