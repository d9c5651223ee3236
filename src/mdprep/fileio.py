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
