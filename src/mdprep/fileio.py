"""File-system helpers: atomic writes, standard streams, output guards and input fingerprints.

Touches only the file system; knows nothing of manifests or of the command line.
``-`` is standard input as an input and standard output as an output
(:func:`stdin_file`, :func:`write_text`); :func:`check_outputs` refuses outputs
that would destroy an input.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import hashlib
import os
import re
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO, Collection, Iterable, Iterator, Mapping, Sequence

_HASH_CHUNK = 1 << 20


#: The path that means standard input (as an input) or standard output (as an output).
STDIO = "-"
#: Temporary files of :func:`atomic_write`: ``.NAME.<pid>.<random>.tmp`` beside the target.
_TEMP_NAME = re.compile(r"\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp")


def is_stdio(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` is ``-``: standard input as an input, standard output as an output.

    >>> is_stdio("-"), is_stdio("./-"), is_stdio(None)
    (True, False, False)
    """
    return path is not None and not hasattr(path, "write") and os.fspath(path) == STDIO


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # another user's process (or a number we cannot ask about): assume alive
    return True


def remove_stale_temps(target: str | os.PathLike) -> list[str]:
    """Remove the temporary files that dead processes left beside ``target``; return their paths.

    :func:`atomic_write` names its temporary file ``.NAME.<pid>.<random>.tmp``. A
    process killed with SIGKILL (or by a power cut) cannot remove its own, so the
    next write of the same target removes every such file whose process is gone.
    Files of live processes (a concurrent write) and files named otherwise are left
    alone. The process ids are those of this machine: on a folder shared between
    machines, a temporary file of another machine's running write could look stale.

    Examples
    --------
    >>> import tempfile, pathlib, subprocess, sys
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    >>> _ = (d / f".m.parquet.{dead}.x1y2.tmp").write_bytes(b"half")
    >>> [pathlib.Path(p).name for p in remove_stale_temps(d / "m.parquet")] == [f".m.parquet.{dead}.x1y2.tmp"]
    True
    """
    target = Path(target)
    folder = target.parent if str(target.parent) else Path(".")
    prefix = f".{target.name}"
    removed = []
    try:
        entries = [e.name for e in os.scandir(folder) if e.name.startswith(prefix)]
    except OSError:
        return removed
    for name in entries:
        match = _TEMP_NAME.fullmatch(name, len(prefix))
        if match and not _pid_alive(int(match["pid"])):
            with contextlib.suppress(OSError):
                os.unlink(folder / name)
                removed.append(os.fspath(folder / name))
    return removed


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, mode: int | None = None, exclusive: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success.

    ``mode`` sets the file's permissions (0600 for secrets); by default the usual
    permissions under the umask. The temporary file is 0600 until then.
    ``exclusive`` never replaces an existing file: :class:`FileExistsError` if
    ``path`` exists, before the block runs and again (atomically) at the end.

    An interrupted or failed write never leaves a half-written file where a good
    one was expected: the temporary file (``.NAME.<pid>.<random>.tmp``) lives in
    the same folder, so the rename is atomic on POSIX, and it is removed if the
    block raises, Ctrl-C and SIGTERM (under the ``mdprep`` command) included.
    Temporary files that killed processes left beside ``path`` are removed first
    (:func:`remove_stale_temps`).

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
    if exclusive and os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(target))
    if _special(target):
        # /dev/null, /dev/stdout, a FIFO: renaming over it would replace the device itself.
        with _streamed(target) as tmp:
            yield tmp
        return
    remove_stale_temps(target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=folder)
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
        if exclusive:
            _link_exclusive(tmp, target)
        else:
            os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _special(target: Path) -> bool:
    """Whether ``target`` exists (links followed) and is neither a regular file nor a folder: a device, a FIFO, a socket."""
    try:
        st = os.stat(target)
    except OSError:
        return False
    return not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode))


@contextlib.contextmanager
def _streamed(target: Path) -> Iterator[Path]:
    """A temporary file whose bytes are copied into ``target`` (a device or FIFO) when the block succeeds."""
    fd, tmp_name = tempfile.mkstemp(prefix=".mdprep.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _link_exclusive(tmp: Path, target: Path) -> None:
    """Give ``tmp`` the name ``target`` unless ``target`` exists (then :class:`FileExistsError`)."""
    try:
        os.link(tmp, target)  # fails if target exists: no window where another file is replaced
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(target)) from None
        os.replace(tmp, target)
        return
    tmp.unlink()


def write_text(path: str | os.PathLike, text: str, *, mode: int | None = None) -> None:
    """Write ``text`` (UTF-8) atomically to ``path``, or to standard output when ``path`` is ``-``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "r.json"
    >>> write_text(p, "{}\\n")
    >>> p.read_text()
    '{}\\n'
    """
    if is_stdio(path):
        out = getattr(sys.stdout, "buffer", None)
        if out is None:
            sys.stdout.write(text)
        else:
            out.write(text.encode("utf-8"))
        sys.stdout.flush()
        return
    with atomic_write(path, mode=mode) as tmp:
        tmp.write_text(text, encoding="utf-8")


def stdout_binary() -> BinaryIO:
    """Standard output as a binary stream (for Parquet bytes), looked up at call time."""
    return getattr(sys.stdout, "buffer", sys.stdout)


# ----------------------------------------------------------------------------- standard input

#: (stream, spooled file) of the standard input read so far; one per stream.
_STDIN_SPOOL: list = []


def _drop_stdin_spool() -> None:
    while _STDIN_SPOOL:
        _, name = _STDIN_SPOOL.pop()
        with contextlib.suppress(OSError):
            os.unlink(name)


atexit.register(_drop_stdin_spool)


def stdin_file() -> str:
    """The path of a private copy of standard input, for readers that need a file.

    Standard input is read once, to its end, into a 0600 temporary file that is
    removed when the process exits (or when standard input is replaced, as click's
    test runner does); every later call returns the same file, so a command may read
    ``-`` twice (``check`` validates, then audits).

    Raises
    ------
    UsageError
        Standard input is a terminal (nothing was piped in).
    EmptyInputError
        Standard input is empty.
    """
    from .errors import EmptyInputError, UsageError

    stream = getattr(sys.stdin, "buffer", sys.stdin)
    if not (_STDIN_SPOOL and _STDIN_SPOOL[0][0] is stream):
        _drop_stdin_spool()
        isatty = getattr(stream, "isatty", None)
        if isatty is not None and isatty():
            raise UsageError("'-' reads standard input, but it is a terminal; pipe the data in (mdprep ... -o - | mdprep COMMAND -) or give a file")
        fd, name = tempfile.mkstemp(prefix="mdprep-stdin-")
        _STDIN_SPOOL.append((stream, name))
        with os.fdopen(fd, "wb") as fh:
            shutil.copyfileobj(stream, fh, _HASH_CHUNK)
    name = _STDIN_SPOOL[0][1]
    if os.path.getsize(name) == 0:
        raise EmptyInputError("standard input ('-') is empty; pipe a file into it, or give its path", path=STDIO)
    return name


def check_outputs(
    inputs: Mapping[str, str | os.PathLike | Sequence[str | os.PathLike] | None],
    outputs: Mapping[str, str | os.PathLike | None],
    *,
    stdout: Collection[str] = (),
    folders: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Refuse outputs that would destroy an input or each other, before any work is done.

    The rules, every violation collected into one error:

    * an output may not name an input: the same path, the same file through a
      symbolic link (``realpath``), or through a hard link (same device and inode);
    * two outputs may not name one file;
    * an output may not be an existing folder (or end in ``/``);
    * ``-`` (standard output) only for the outputs in ``stdout``, and for one of
      them at most; ``-`` (standard input) for one input at most.

    Inputs that do not exist are not compared (nothing there to destroy; reading
    them fails with its own message). An input ``archive.zip::member`` is its archive.

    Parameters
    ----------
    inputs : mapping
        The command's input files and folders by label (``"MANIFEST"``, ``"--metadata"``);
        a value may be a list (several manifests) or None (not given).
    outputs : mapping
        The files the command writes by label (``"-o/--output"``); None when not given.
    stdout : collection of str
        Labels of the outputs that may be ``-``.
    folders : mapping, optional
        Outputs that are folders, with the names of the files the command writes in
        them (``{"--out": ("best.pt", "metrics.json")}``); those files are compared.

    Raises
    ------
    UsageError
        Listing every clash, with both paths.

    Examples
    --------
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp(); src = os.path.join(d, "t.csv"); _ = open(src, "w").write("a\\n")
    >>> check_outputs({"TABLE": src}, {"-o/--output": os.path.join(d, "m.parquet")})
    >>> check_outputs({"TABLE": src}, {"-o/--output": src})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mdprep.errors.UsageError: -o/--output '...t.csv' is the input TABLE '...t.csv'; mdprep never writes over its inputs: choose another output path
    """
    from .errors import UsageError

    folders = dict(folders or {})
    problems: list[str] = []
    given_inputs: list[tuple[str, str]] = []
    for label, value in inputs.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        given_inputs += [(label, os.fspath(v)) for v in values if v is not None]
    from_stdin = [label for label, p in given_inputs if p == STDIO]
    if len(from_stdin) > 1:
        problems.append(f"{' and '.join(dict.fromkeys(from_stdin))} read standard input ('-') {len(from_stdin)} times; only one input can come from it")
    existing = [(label, split_member(p)[0]) for label, p in given_inputs if p != STDIO]
    existing = list(dict.fromkeys((label, p) for label, p in existing if os.path.lexists(p)))

    written: list[tuple[str, str]] = []  # (label, file path)
    to_stdout = []
    for label, value in outputs.items():
        if value is None:
            continue
        path = os.fspath(value)
        if path == STDIO:
            if label in stdout:
                to_stdout.append(label)
            else:
                what = "a folder" if label in folders else "a file"
                problems.append(f"{label} cannot be '-' (standard output); give {what} path")
            continue
        if label in folders:
            if os.path.exists(path) and not os.path.isdir(path):
                problems.append(f"{label} {path!r} is a file; give a folder")
                continue
            written += [(f"{label} ({name})", os.path.join(path, name)) for name in folders[label]]
            continue
        if path.endswith(("/", os.sep)) or os.path.isdir(path):
            problems.append(f"{label} {path!r} is a folder; give a file path (for example {os.path.join(path, 'NAME')!r})")
            continue
        written.append((label, path))
    if len(to_stdout) > 1:
        problems.append(f"{' and '.join(to_stdout)} {'both' if len(to_stdout) == 2 else 'all'} go to standard output ('-'); only one output can: give the others file paths")
    for i, (label, path) in enumerate(written):
        for in_label, in_path in existing:
            how = _same_file(path, in_path)
            if how:
                problems.append(f"{label} {path!r} {how} the input {in_label} {in_path!r}; mdprep never writes over its inputs: choose another output path")
        for other_label, other in written[:i]:
            if _same_file(path, other):
                problems.append(f"{other_label} {other!r} and {label} {path!r} name the same file; give each output its own path")
    if problems:
        problems = list(dict.fromkeys(problems))
        raise UsageError("; ".join(problems), problems=problems)


def _same_file(a: str, b: str) -> str | None:
    """How paths ``a`` and ``b`` name one file (the words for a message), or None."""
    if os.path.abspath(a) == os.path.abspath(b):
        return "is"
    try:
        if os.path.realpath(a) == os.path.realpath(b):
            return "is the same file (through a symbolic link) as"
        if os.path.samefile(a, b):
            return "is the same file (through a hard link) as"
    except (OSError, ValueError):  # one does not exist, or a NUL byte: not the same file
        pass
    return None


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
    the archive's bytes are hashed and the member is recorded. ``-`` is standard
    input (:func:`stdin_file`), recorded as ``-``.

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
    with open(stdin_file() if archive == STDIO else archive, "rb") as fh:
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
    from .storage import clean_url, is_url, local_path

    entries = sorted(zip(relpaths, sizes))
    listing = "".join([f"{rel}\0{size}\n" for rel, size in entries])
    digest = hashlib.sha256(listing.encode("utf-8", "surrogateescape"))
    total = sum(size for _, size in entries)
    count = len(entries)
    shown = os.fspath(root)
    if is_url(shown):  # recorded without credentials; a file:// URL as its path
        shown = local_path(shown) or clean_url(shown)
    return {
        "path": shown if is_url(shown) else os.path.normpath(shown),
        "kind": "tree",
        "files": count,
        "size": total,
        "sha256": digest.hexdigest(),
    }


def decodable(text: str) -> bool:
    """True when ``text`` is valid UTF-8: no surrogate escapes of bytes that were not (file names, command-line words).

    >>> decodable("scan.dcm"), decodable("bad\\udcff.dcm")
    (True, False)
    """
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_within(real: str, folder_real: str) -> bool:
    """Whether the real path ``real`` is ``folder_real`` or lies under it (both already resolved).

    >>> is_within("/data/x/a.png", "/data/x"), is_within("/data/xy/a.png", "/data/x"), is_within("/data/x", "/data/x")
    (True, False, True)
    """
    return real == folder_real or real.startswith(folder_real.rstrip(os.sep) + os.sep)


def open_nonblocking(path: str | os.PathLike) -> tuple[int, os.stat_result]:
    """A read-only file descriptor of ``path`` and its ``fstat``; the caller closes the descriptor.

    Opened with ``O_NONBLOCK``, so that a FIFO listed or swapped in by mistake is seen
    for what it is (check ``S_ISREG`` on the result) instead of blocking the reader.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        return fd, os.fstat(fd)
    except OSError:
        os.close(fd)
        raise


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
    resolves outside ``os.path.realpath(root)``. A path that is a URL
    (``s3://other-bucket/x.dcm``) leaves any root it is not under.

    A root that is a URL (``s3://bucket/prefix``) follows the same rule lexically
    (:func:`mdprep.storage.outside_root`; object stores have no links): ``..`` may
    not climb out of the prefix, and absolute local paths and URLs of other
    buckets or prefixes are outside.

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

    from .storage import canonical_root, is_url, outside_root

    # A null path names nothing under the root; it is left for the reader to fail on.
    codes, uniques = pd.factorize(pd.Series(list(relpaths), dtype="object").fillna("").astype("str"))
    paths = pa.array(uniques, type=pa.string())
    outside = np.zeros(len(paths), dtype=bool)
    via_link = np.zeros(len(paths), dtype=bool)
    root_abs = canonical_root(root) if is_url(root) else os.path.abspath(os.fspath(root))
    if is_url(root_abs):
        outside = outside_root(root_abs, list(uniques))
        return _refuse_outside(outside, via_link, codes, uniques, root_abs, allow_outside_root)
    root_real = os.path.realpath(root_abs)

    def leaves(real: str) -> bool:
        return not is_within(real, root_real)

    # URLs are never under a local root.
    url = pc.match_substring_regex(paths, r"^[A-Za-z][A-Za-z0-9+.\-]+://").to_numpy(zero_copy_only=False)
    outside |= url
    # Absolute paths, paths with a '..' part (and the odd one with a NUL byte, which
    # names no file): resolved one by one, as they are few.
    odd = pc.or_(
        pc.or_(pc.starts_with(paths, "/"), pc.match_substring_regex(paths, r"(^|/)\.\.(/|$)")), pc.match_substring(paths, "\x00")
    ).to_numpy(zero_copy_only=False) & ~url
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
    plain = np.flatnonzero(~odd & ~url)
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
    return _refuse_outside(outside, via_link, codes, uniques, root_abs, allow_outside_root)


def _refuse_outside(outside, via_link, codes, uniques, root_abs: str, allow_outside_root: bool):
    """The mask over the original paths; raise for paths outside the root unless allowed."""
    import numpy as np

    from .errors import InputError, examples_text

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


#: Endings of the files ingest and hash read (mdprep.ingest.images.IMAGE_EXTENSIONS, NIFTI_EXTENSIONS, DICOM's),
#: and the first bytes of PNG, JPEG and TIFF; a DICOM file has ``DICM`` at byte 128 (tests/test_cli_grammar.py checks the list).
IMAGE_FILE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".nii", ".nii.gz", ".dcm", ".dicom", ".ima")
_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*")


def _is_image_file(path: str) -> bool:
    if path.lower().endswith(IMAGE_FILE_SUFFIXES):
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head.startswith(_IMAGE_MAGIC) or head[128:132] == b"DICM"


def check_outputs_spare_images(root: str | None, outputs: dict[str, str | None], what: str = "ROOT") -> None:
    """Refuse an output that would replace an image (or DICOM file, or volume) under ``root``, the folder the command reads.

    :func:`mdprep.fileio.check_outputs` compares outputs with the input files it is given;
    the images under a folder are not listed there, so ``--json ROOT/a/img.png`` would
    have written a summary over a raw image. New files under ``root`` and files that
    are no image (a manifest from an earlier run) are allowed. A URL root is not checked.
    """
    if not root or "://" in str(root) or not os.path.isdir(root):
        return
    base = os.path.join(os.path.realpath(root), "")
    clashes = []
    for label, value in outputs.items():
        if not value or value == "-":
            continue
        real = os.path.realpath(value)
        if real.startswith(base) and os.path.isfile(real) and _is_image_file(real):
            clashes.append(f"{label} {value!r} is an image under {what} {root!r}")
    if clashes:
        from .errors import UsageError

        raise UsageError(f"{'; '.join(clashes)}; mdprep never writes over its inputs: write it outside the images")
