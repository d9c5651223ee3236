"""Image trees on object storage: ``s3://``, ``gs://``, ``az://`` and any other fsspec URL.

The one module of mdprep that knows fsspec (imported only when a URL is used).
A root such as ``s3://bucket/prefix`` is read like a folder: the listing is one
``fs.find`` (every object with its size and ETag), paths are relative to the
prefix, and files are read with ranged GETs of the bytes the readers ask for, so
the header of a 10 MB radiograph costs a few kilobytes of transfer.

Back-ends and credentials
-------------------------
``s3://`` needs s3fs (``pip install 'mdprep[s3]'``), ``gs://`` gcsfs and
``az://``/``abfs://`` adlfs. Credentials and endpoints come from each back-end's
own environment and configuration, never from mdprep's options: for S3 the AWS
variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``,
``~/.aws/credentials``) and ``AWS_ENDPOINT_URL`` for an S3-compatible store such
as MinIO; for any back-end, fsspec's configuration (``FSSPEC_S3_ENDPOINT_URL=...``,
``FSSPEC_GCS='{"project": ...}'`` or a JSON file in ``~/.config/fsspec/``).
mdprep records the URL without credentials or query string, and every message
it writes passes through :func:`scrub`, which masks the credential values it can
see (the variables above, fsspec's configuration, a password in the URL).

``file://`` URLs are local paths (:func:`canonical_root` turns them into one), read
by the local walker with its rules for links and special files.
"""

from __future__ import annotations

import errno
import io
import os
import posixpath
import re
import threading
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")

_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]+)://")

#: URL protocol -> the package that implements it (named in the "install ..." message).
BACKENDS = {
    "s3": "s3fs", "s3a": "s3fs",
    "gs": "gcsfs", "gcs": "gcsfs",
    "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs", "adl": "adlfs",
}

#: First bytes fetched of each DICOM file: the header of nearly every radiograph fits.
DICOM_HEAD = 8 << 10
#: First bytes fetched of each PNG/JPEG/TIFF file (header chunks, EXIF, ICC profile).
IMAGE_HEAD = 16 << 10
#: A read outside what was fetched fetches at least this much (fewer round trips for a long header).
BLOCK = 64 << 10
#: Threads reading objects concurrently in each worker: remote reads wait on latency, not on the CPU.
THREADS = 16

#: Environment variables whose values are credentials: masked in every message (:func:`scrub`).
CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AZURE_STORAGE_KEY", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_CLIENT_SECRET", "AZURE_CLIENT_SECRET", "GOOGLE_OAUTH_ACCESS_TOKEN",
)
#: Keys of fsspec configuration whose values are masked too.
_SECRET_KEY = re.compile(r"key|secret|token|password|passwd|credential|sas|sig|connection", re.IGNORECASE)
#: Secrets met in URLs during this process (a password, query values): masked too.
_URL_SECRETS: set[str] = set()


# ----------------------------------------------------------------------------- URLs


def is_url(path: Any) -> bool:
    """Whether ``path`` is a URL (``scheme://...``, a scheme of two letters or more).

    >>> is_url("s3://bucket/xrays"), is_url("/data/xrays"), is_url("C://x"), is_url(None)
    (True, False, False, False)
    """
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    return isinstance(path, str) and _URL.match(path) is not None


@dataclass(frozen=True)
class _Url:
    scheme: str
    clean: str  # scheme://[user@]host/path, no password, query or trailing slash
    dropped: tuple[str, ...]  # what was left out: "a password", "a query string"


def _parse(url: str) -> _Url:
    from urllib.parse import parse_qsl, urlsplit

    parts = urlsplit(url, allow_fragments=False)
    scheme = parts.scheme.lower()
    netloc, dropped = parts.netloc, []
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        if ":" in userinfo:  # user:password@ -- never used, never shown
            user, _, password = userinfo.partition(":")
            _remember_secret(password)
            _remember_secret(user)
            netloc, dropped = host, ["a user name and password"]
    if parts.query:
        for _key, value in parse_qsl(parts.query, keep_blank_values=True):
            _remember_secret(value)
        _remember_secret(parts.query)
        dropped.append("a query string")
    path = parts.path.rstrip("/")
    return _Url(scheme, f"{scheme}://{netloc}{path}", tuple(dropped))


def _remember_secret(value: str) -> None:
    if value and len(value) >= 4:
        _URL_SECRETS.add(value)


def clean_url(url: str) -> str:
    """``url`` as mdprep records and shows it: no password, no query string, no trailing slash.

    >>> clean_url("s3://user:pa55word@bucket/xrays/?X-Amz-Signature=abcd")
    's3://bucket/xrays'
    """
    return _parse(url).clean


def local_path(url: str) -> str | None:
    """The local path a ``file://`` URL names, or None for any other URL.

    >>> local_path("file:///data/xrays/"), local_path("s3://bucket/xrays")
    ('/data/xrays', None)
    """
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url, allow_fragments=False)
    if parts.scheme.lower() not in ("file", "local"):
        return None
    path = unquote(parts.path) or "/"
    return path if path == "/" else path.rstrip("/")


def canonical_root(root: str | os.PathLike) -> str:
    """The root as mdprep records it: an absolute local path, or a URL without credentials.

    A ``file://`` URL becomes its local path. A URL whose password or query string
    was left out gives a :class:`~mdprep.errors.MdprepWarning` (they are never used
    nor recorded: give credentials the back-end's usual way). Checks that the
    URL's back-end is installed (:func:`filesystem`); does not list anything.

    >>> canonical_root("file:///tmp/")
    '/tmp'
    """
    text = os.fspath(root)
    if not is_url(text):
        return os.path.abspath(text)
    local = local_path(text)
    if local is not None:
        return os.path.abspath(local)
    parsed = _parse(text)
    if parsed.dropped:
        from .errors import MdprepWarning

        warnings.warn(
            f"the URL {parsed.clean!r} was given with {' and '.join(parsed.dropped)}, which mdprep neither uses nor records; "
            "give credentials and options through the back-end's environment or configuration (see docs/ingest.md)",
            MdprepWarning,
            stacklevel=2,
        )
    filesystem(parsed.clean)
    return parsed.clean


def join(root: str, rel: str) -> str:
    """The file ``rel`` (a manifest path) under ``root`` (a folder or a URL), as readers open it.

    A local root joins as :func:`os.path.join` does (an absolute ``rel`` wins). Under
    a URL root, ``rel`` is appended after a slash, with ``.`` and ``..`` parts
    resolved; an absolute local ``rel`` stays local. A ``rel`` that is itself a URL
    names that object wherever the root is (the root rule,
    :func:`mdprep.fileio.paths_outside_root`, refuses it unless allowed).

    >>> join("s3://b/xrays", "p1/a.dcm"), join("s3://b/xrays", "p1/../p2/a.dcm"), join("/data", "p1/a.dcm")
    ('s3://b/xrays/p1/a.dcm', 's3://b/xrays/p2/a.dcm', '/data/p1/a.dcm')
    """
    if is_url(rel):
        return rel
    if not is_url(root):
        return os.path.join(root, rel)
    if rel.startswith("/"):
        return rel
    if not _DOTTED.search(rel):
        return f"{root.rstrip('/')}/{rel}"
    scheme, _, rest = root.partition("://")
    return f"{scheme}://{posixpath.normpath(rest.rstrip('/') + '/' + rel)}"


_DOTTED = re.compile(r"(^|/)\.{1,2}(/|$)")


def outside_root(root: str, relpaths: Sequence[str]) -> np.ndarray:
    """The root rule for a URL root: which paths lead outside it (lexically; object stores have no links).

    A path leaves the root when its ``..`` parts climb out of the prefix, when it is
    an absolute local path, or when it is a URL that is not under the root (another
    bucket, another prefix). Called by :func:`mdprep.fileio.paths_outside_root`.

    >>> outside_root("s3://b/xrays", ["p/a.dcm", "p/../a.dcm", "../a.dcm", "/etc/passwd", "s3://other/a.dcm", "s3://b/xrays/a.dcm"]).tolist()
    [False, False, True, True, True, False]
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    root = root.rstrip("/")
    paths = pa.array(list(relpaths), type=pa.string()).fill_null("")
    url = pc.match_substring_regex(paths, _URL.pattern).to_numpy(zero_copy_only=False)
    under = pc.starts_with(paths, root + "/").to_numpy(zero_copy_only=False)
    absolute = pc.starts_with(paths, "/").to_numpy(zero_copy_only=False)
    dotted = pc.match_substring_regex(paths, r"(^|/)\.\.(/|$)").to_numpy(zero_copy_only=False)
    outside = (url & ~under) | (absolute & ~url)
    for k in np.flatnonzero(dotted & ~outside):
        text = relpaths[k]
        rel = text[len(root) + 1 :] if url[k] else text
        norm = posixpath.normpath(rel)
        outside[k] = norm == ".." or norm.startswith("../")
    return outside


# ----------------------------------------------------------------------------- back-ends


def filesystem(url: str) -> tuple[Any, str]:
    """``(fs, path)``: the fsspec file system of ``url`` and the path it knows the object by.

    Raises
    ------
    UsageError
        fsspec or the protocol's back-end is not installed (the message names the
        package to install), or the protocol is unknown.
    """
    from .errors import UsageError

    parsed = _parse(url)
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec comes with every back-end
        raise UsageError(f"{parsed.clean!r} is a URL; reading URLs needs fsspec and a back-end: pip install 'mdprep[s3]'", url=parsed.clean) from None
    try:
        return fsspec.core.url_to_fs(parsed.clean)
    except ImportError:
        package = BACKENDS.get(parsed.scheme)
        how = f"install {package} (pip install {package})" if package else "install the fsspec back-end for it"
        if package == "s3fs":
            how = "install s3fs (pip install 'mdprep[s3]')"
        raise UsageError(f"{parsed.clean!r}: the {parsed.scheme}:// back-end is not installed; {how}", url=parsed.clean) from None
    except ValueError as exc:
        if "not known" not in str(exc).lower():
            raise UsageError(f"{parsed.clean!r} is not a URL fsspec can read: {scrub(str(exc))}", url=parsed.clean) from None
        raise UsageError(
            f"{parsed.clean!r}: unknown protocol {parsed.scheme!r}; give a folder or an s3://, gs://, az:// or file:// URL "
            "(any protocol fsspec knows works with its back-end installed)",
            url=parsed.clean,
        ) from None


def _secrets() -> list[str]:
    found = set(_URL_SECRETS)
    found.update(v for name in CREDENTIAL_VARIABLES if (v := os.environ.get(name)))
    found.update(v for name, v in os.environ.items() if name.startswith("FSSPEC_") and _SECRET_KEY.search(name[7:]) and v)
    import sys

    config = sys.modules.get("fsspec.config")  # only when fsspec was imported: then it may hold credentials
    if config is not None:
        for options in getattr(config, "conf", {}).values():
            if isinstance(options, dict):
                found.update(_secret_values(options))
    return sorted((s for s in found if len(s) >= 4), key=len, reverse=True)


def _secret_values(options: dict, inside: bool = False) -> Iterator[str]:
    for key, value in options.items():
        secret = inside or bool(_SECRET_KEY.search(str(key)))
        if isinstance(value, dict):
            yield from _secret_values(value, secret)
        elif secret and isinstance(value, str):
            yield value


def scrub(text: str) -> str:
    """``text`` with every credential value mdprep can see replaced by ``***``.

    The values of :data:`CREDENTIAL_VARIABLES`, of fsspec configuration keys that
    look like credentials (``key``, ``secret``, ``token``, ``password``, ...) and
    passwords or query values met in URLs.

    >>> os.environ["AWS_SECRET_ACCESS_KEY"] = "wJalrXUtnFEMI"
    >>> scrub("signature computed with wJalrXUtnFEMI failed")
    'signature computed with *** failed'
    >>> del os.environ["AWS_SECRET_ACCESS_KEY"]
    """
    for secret in _secrets():
        if secret in text:
            text = text.replace(secret, "***")
    return text


def storage_error(exc: BaseException) -> OSError:
    """A clean :class:`OSError` for a failure of the object store: errno, a short reason, no credentials, no path.

    Missing objects become :class:`FileNotFoundError`, refusals
    :class:`PermissionError`; anything else (a timeout, a server error) an
    :class:`OSError` that names what happened. Rows carry the path, so the
    message does not.
    """
    if isinstance(exc, FileNotFoundError):
        return FileNotFoundError(errno.ENOENT, "no such object (removed since the listing, or never there)")
    if isinstance(exc, IsADirectoryError):
        return IsADirectoryError(errno.EISDIR, "a folder (a prefix of other objects), not an object")
    reason = scrub(_first_line(exc))
    if isinstance(exc, PermissionError):
        return PermissionError(errno.EACCES, f"access denied by the object store ({reason}); check the credentials and the bucket's policy")
    return OSError(errno.EIO, f"the object store failed ({type(exc).__name__}: {reason})")


def _first_line(exc: BaseException) -> str:
    """The first line of what ``exc`` says (its type's name when it says nothing), at most 200 characters."""
    text = exc.strerror if isinstance(exc, OSError) and isinstance(exc.strerror, str) else str(exc)
    lines = text.strip().splitlines()
    line = lines[0] if lines else type(exc).__name__
    return line if len(line) <= 200 else line[:199] + "…"


# ----------------------------------------------------------------------------- listing

#: (root, {relative path: size}) of the last listing, so that readers in this process (and workers
#: forked from it) need not ask the store for each object's size; any other reader asks (one HEAD).
_LISTED: tuple[str, dict[str, int]] = ("", {})

#: An error-table row: (path, outcome, error_type, message).
ErrorRow = tuple[str, str, str, str]


@dataclass(frozen=True)
class Listing:
    """The objects under a URL root.

    Attributes
    ----------
    root : str
        The clean URL (:func:`clean_url`).
    relpaths : list of str
        Objects to read, relative to the root, sorted.
    sizes : numpy.ndarray
        int64 byte sizes, aligned with ``relpaths``.
    stamps : list of str
        Each object's change stamp (:func:`signatures`), aligned with ``relpaths``.
    refused : list of tuple
        Error-table rows (path, outcome, error_type, message) of the objects not read.
    """

    root: str
    relpaths: list[str]
    sizes: np.ndarray
    stamps: list[str]
    refused: list[ErrorRow]


def _stamp(info: dict) -> str:
    """An object's change stamp: its ETag (or MD5, generation, last modified time), as text."""
    for key in ("ETag", "etag", "md5Hash", "generation", "LastModified", "last_modified", "mtime", "updated"):
        value = info.get(key)
        if value not in (None, ""):
            return str(value).strip('"')
    return ""


_BAD_PART = re.compile(r"(^|/)(\.{1,2})?(/|$)")


def list_tree(root: str) -> Listing:
    """Every object under the URL ``root`` (recursively), with its size and ETag: one ``fs.find``.

    Accounts for every object as the local walker does for a folder's entries:

    ======================================  =======  ===================================================
    object                                  outcome  error_type
    ======================================  =======  ===================================================
    an empty ``name/`` (a folder marker)    --       not counted, as a local folder is not
    a ``name/`` that holds bytes            skipped  ``Folder``
    an empty, ``.`` or ``..`` path part     failed   ``UnsafePath`` (no local path can hold the name)
    a name that is not valid UTF-8          failed   ``UndecodablePath``
    ======================================  =======  ===================================================

    Raises
    ------
    InputError
        The root cannot be listed (no such bucket, access denied, no connection), or
        names an object rather than a prefix; the message says which and what to check.
    EmptyInputError
        Nothing is under the root.
    """
    from .errors import EmptyInputError, InputError
    from .fileio import decodable

    fs, base = filesystem(root)
    root = clean_url(root)
    base = base.rstrip("/")
    try:
        found = fs.find(base, detail=True)
    except Exception as exc:  # noqa: BLE001 - any failure to list is the run's error, worded cleanly
        raise InputError(_listing_message(root, exc), path=root) from None
    top = found.get(base)
    if top is not None and top.get("type") == "file":
        raise InputError(f"{root!r} names an object, not a folder (a prefix); give the prefix that holds the images", path=root)
    import pyarrow as pa
    import pyarrow.compute as pc

    # Columns of the listing; every test below is one vectorised pass over them.
    cut = len(base) + 1
    entries = [(name[cut:], info) for name, info in found.items() if name.rstrip("/") != base]
    infos = [info for _, info in entries]
    names = pa.array([rel for rel, _ in entries], type=pa.string())
    sizes = np.array([int(info.get("size") or 0) for info in infos], dtype=np.int64)
    folder = pc.ends_with(names, "/").to_numpy(zero_copy_only=False) | np.array([info.get("type") == "directory" for info in infos], dtype=bool)
    unsafe = pc.match_substring_regex(names, _BAD_PART.pattern).to_numpy(zero_copy_only=False) & ~folder
    odd = ~pc.string_is_ascii(names).to_numpy(zero_copy_only=False) & ~folder & ~unsafe
    undecodable = np.zeros(len(infos), dtype=bool)
    undecodable[odd] = [not decodable(n) for n in names.filter(pa.array(odd)).to_pylist()]  # the few non-ASCII names
    refused: list[ErrorRow] = []
    for rel, size in zip(names.filter(pa.array(folder & (sizes > 0))).to_pylist(), sizes[folder & (sizes > 0)]):
        refused.append((rel, "skipped", "Folder", f"an object named like a folder (ending in '/') that holds {size} bytes; not read"))
    refused += [
        (rel, "failed", "UnsafePath", "the object name has an empty, '.' or '..' part, which no path under the root can hold; rename the object")
        for rel in names.filter(pa.array(unsafe)).to_pylist()
    ]
    if undecodable.any():
        from .ingest.files import undecodable_row

        refused += [undecodable_row(rel) for rel in names.filter(pa.array(undecodable)).to_pylist()]
    keep = np.flatnonzero(~(folder | unsafe | undecodable))
    if not len(keep) and not refused:
        raise EmptyInputError(f"no objects found under {root}; check the URL (the bucket and the prefix)", path=root)
    kept = names.take(pa.array(keep, type=pa.int64()))
    order = pc.sort_indices(kept).to_numpy()
    listing = Listing(
        root,
        kept.take(pa.array(order)).to_pylist(),
        sizes[keep][order],
        [_stamp(infos[i]) for i in keep[order]],
        refused,
    )
    _remember(root, listing.relpaths, listing.sizes)
    return listing


def _remember(root: str, relpaths: Sequence[str], sizes: Iterable[int]) -> None:
    global _LISTED
    _LISTED = (root, dict(zip(relpaths, (int(s) for s in sizes))))


def _listing_message(root: str, exc: BaseException) -> str:
    reason = scrub(_first_line(exc))
    if isinstance(exc, FileNotFoundError):
        return f"cannot list {root}: no such bucket or container ({reason}); check the URL"
    if isinstance(exc, PermissionError):
        return (
            f"cannot list {root}: access denied ({reason}); check the credentials (for S3: AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials) and that they may list the bucket"
        )
    return (
        f"cannot list {root}: {type(exc).__name__}: {reason}; check the URL, the network and the endpoint "
        "(for an S3-compatible store: AWS_ENDPOINT_URL)"
    )


def stat_listed(root: str, relpaths: Sequence[str], *, threads: int | None = None) -> list[tuple[str, int | None, str] | OSError]:
    """Each listed object's ``(kind, size, stamp)`` -- kind ``"file"`` or ``"directory"`` -- or the clean error; concurrent HEADs.

    Sizes of files are remembered for the readers of this process (:func:`open_objects`).
    """
    fs, base = filesystem(root)
    base = base.rstrip("/")

    def one(rel: str):
        try:
            info = fs.info(f"{base}/{rel}")
        except Exception as exc:  # noqa: BLE001 - this object's error row
            return storage_error(exc)
        kind = "directory" if info.get("type") == "directory" else "file"
        return kind, int(info.get("size") or 0), _stamp(info)

    results = _threaded(one, list(relpaths), threads)
    files = [(rel, r[1]) for rel, r in zip(relpaths, results) if not isinstance(r, OSError) and r[0] == "file"]
    _remember(clean_url(root), [f[0] for f in files], [f[1] for f in files])
    return results


def signatures(root: str | os.PathLike, relpaths: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Each file's change signature: its size and a stamp that changes when its bytes do.

    Parameters
    ----------
    root : str or path
        A folder, or a URL (``s3://bucket/prefix``, ...).
    relpaths : sequence of str
        Paths relative to ``root``, as a manifest holds them.

    Returns
    -------
    sizes : numpy.ndarray
        int64 byte sizes, aligned with ``relpaths``; -1 for a file that is missing or
        cannot be inspected.
    stamps : list of str
        For a folder, ``str(os.stat(...).st_mtime_ns)``; for a URL, the object's ETag
        without quotes (the MD5, generation or last-modified time for back-ends without
        one); ``""`` where ``sizes`` is -1. Equal ``(size, stamp)`` pairs mean unchanged.

    A local root stats each file (following links, as the readers do); a URL root
    lists the prefix once (one ``fs.find``, a thousand objects per request on S3)
    instead of asking about each object. A prefix with nothing under it gives -1
    for every file; a prefix that cannot be listed raises :class:`InputError`
    (:func:`list_tree`).

    Examples
    --------
    >>> import tempfile
    >>> d = tempfile.mkdtemp(); _ = open(os.path.join(d, "a.png"), "wb").write(b"abc")
    >>> sizes, stamps = signatures(d, ["a.png", "gone.png"])
    >>> sizes.tolist(), stamps[1]
    ([3, -1], '')
    """
    text = os.fspath(root)
    sizes = np.full(len(relpaths), -1, dtype=np.int64)
    stamps = [""] * len(relpaths)
    local = canonical_root(text) if not is_url(text) or local_path(text) is not None else None
    if local is not None:
        for i, rel in enumerate(relpaths):
            try:
                st = os.stat(os.path.join(local, rel))
            except (OSError, ValueError):
                continue
            sizes[i], stamps[i] = st.st_size, str(st.st_mtime_ns)
        return sizes, stamps
    from .errors import EmptyInputError

    try:
        listing = list_tree(text)
    except EmptyInputError:
        return sizes, stamps
    import pandas as pd

    at = pd.Index(listing.relpaths, dtype="object").get_indexer(pd.Index(list(relpaths), dtype="object"))
    hit = at >= 0
    sizes[hit] = listing.sizes[at[hit]]
    return sizes, np.array(listing.stamps + [""], dtype=object)[at].tolist()  # at -1 (not listed): the last entry, ""


# ----------------------------------------------------------------------------- reading

_STATS_LOCK = threading.Lock()
_STATS = {"bytes": 0, "requests": 0}


def transfer_stats(reset: bool = False) -> dict[str, int]:
    """Bytes and ranged GET requests this process fetched from object stores (reads of object bodies).

    ``reset`` sets both counters back to 0 after reading them. Workers in other
    processes count their own.
    """
    with _STATS_LOCK:
        out = dict(_STATS)
        if reset:
            _STATS.update(bytes=0, requests=0)
    return out


class _Object:
    """The parts of one object fetched so far (sorted, disjoint ``(start, bytes)`` ranges)."""

    def __init__(self, fs: Any, path: str, size: int) -> None:
        self.fs, self.path, self.size = fs, path, size
        self.ranges: list[tuple[int, bytes]] = []

    def fetch(self, start: int, end: int) -> None:
        end = min(end, self.size)
        if start >= end:
            return
        try:
            data = self.fs.cat_file(self.path, start=start, end=end)
        except Exception as exc:  # noqa: BLE001 - worded cleanly for the file's row
            raise storage_error(exc) from None
        with _STATS_LOCK:
            _STATS["bytes"] += len(data)
            _STATS["requests"] += 1
        if data:
            self.ranges.append((start, bytes(data)))
            self.ranges.sort(key=lambda r: r[0])

    def _covering(self, pos: int) -> tuple[int, bytes] | None:
        for start, data in self.ranges:
            if start <= pos < start + len(data):
                return start, data
        return None

    def read_at(self, pos: int, n: int) -> bytes:
        end = min(pos + n, self.size)
        out = bytearray()
        while pos < end:
            hit = self._covering(pos)
            if hit is None:
                following = min((s for s, _ in self.ranges if s > pos), default=self.size)
                self.fetch(pos, min(following, max(end, pos + BLOCK)))
                hit = self._covering(pos)
                if hit is None:  # the object is shorter than listed (replaced since)
                    break
            start, data = hit
            piece = data[pos - start : end - start]
            out += piece
            pos += len(piece)
        return bytes(out)


class RangedFile(io.RawIOBase):
    """A read-only, seekable file over one object that fetches only the byte ranges read.

    Reads are served from the ranges fetched so far; a read outside them fetches
    what is missing (at least :data:`BLOCK` bytes, never past the next fetched
    range or the end) with one ranged GET. :meth:`reopen` gives another file over
    the same fetched ranges. ``size`` is the object's size.
    """

    def __init__(self, obj: _Object) -> None:
        super().__init__()
        self._obj = obj
        self._pos = 0
        self.size = obj.size

    def __repr__(self) -> str:
        return f"<object {self._obj.path!r}>"

    def reopen(self) -> "RangedFile":
        return RangedFile(self._obj)

    @property
    def fetched(self) -> int:
        """Bytes fetched of this object so far."""
        return sum(len(d) for _, d in self._obj.ranges)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise OSError(errno.EINVAL, "negative seek position")
        self._pos = base + offset
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("read of a closed file")
        n = self.size - self._pos if size is None or size < 0 else size
        data = self._obj.read_at(self._pos, max(0, n))
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _threaded(func: Callable[[T], R], items: Sequence[T], threads: int | None) -> list[R]:
    threads = THREADS if threads is None else threads
    if len(items) <= 1 or threads <= 1:
        return [func(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(threads, len(items))) as pool:
        return list(pool.map(func, items))


def open_objects(root: str, relpaths: Sequence[str], *, head: int, tail: int = 0, threads: int | None = None) -> dict[str, RangedFile | OSError]:
    """Open the objects ``relpaths`` under the URL ``root``, their first ``head`` (and last ``tail``) bytes fetched.

    The objects are fetched concurrently (``threads`` at a time, :data:`THREADS`
    by default): one ranged GET
    for the head and one for the tail (none when the head covers it). Sizes come
    from the last listing of ``root`` in this process; an object it did not list
    is asked about first (one HEAD). Returns ``{join(root, rel): RangedFile or
    OSError}``; the error of an object that cannot be read comes from
    :func:`storage_error` (clean, no credentials).
    """
    fs, base = filesystem(root)
    base = base.rstrip("/")
    listed_root, listed = _LISTED
    known = listed if listed_root == clean_url(root) else {}

    def one(rel: str) -> RangedFile | OSError:
        path = f"{base}/{rel}"
        try:
            size = known.get(rel)
            if size is None:
                try:
                    info = fs.info(path)
                except Exception as exc:  # noqa: BLE001
                    raise storage_error(exc) from None
                if info.get("type") == "directory":
                    raise storage_error(IsADirectoryError())
                size = int(info.get("size") or 0)
            obj = _Object(fs, path, size)
            obj.fetch(0, min(head, size))
            if tail and size - tail > head:
                obj.fetch(size - tail, size)
            return RangedFile(obj)
        except OSError as exc:
            return exc

    return dict(zip((join(root, r) for r in relpaths), _threaded(one, list(relpaths), threads)))


def opener(opened: dict[str, RangedFile | OSError]) -> Callable[[str], tuple[RangedFile, int]]:
    """``path -> (file, size)`` over :func:`open_objects`' result, for readers that open files themselves.

    Each call gives a new file over the same fetched ranges; a path whose object
    could not be opened raises its error.
    """

    def open_one(path: str) -> tuple[RangedFile, int]:
        found = opened[path]
        if isinstance(found, OSError):
            raise found
        return found.reopen(), found.size

    return open_one


def object_size(url: str) -> tuple[int, bool]:
    """``(size, is_folder)`` of the object at ``url`` (one HEAD); raises :func:`storage_error`'s OSError."""
    fs, path = filesystem(url)
    try:
        info = fs.info(path)
    except Exception as exc:  # noqa: BLE001
        raise storage_error(exc) from None
    return int(info.get("size") or 0), info.get("type") == "directory"


def read_object(url: str, *, limit: int) -> bytes:
    """The bytes of the object at ``url``, at most ``limit`` of them (one GET; the caller checks the size first)."""
    fs, path = filesystem(url)
    obj = _Object(fs, path, limit)
    obj.fetch(0, limit)
    return b"".join(d for _, d in obj.ranges)


def prefetch(func: Callable[[T], R], items: Iterable[T], *, threads: int | None = None) -> Iterator[Callable[[], R]]:
    """Run ``func`` on ``items`` in threads, at most ``2 * threads`` ahead of the consumer, in order.

    Yields, for each item, a function that returns ``func(item)`` or raises what it
    raised. Memory stays bounded however many items there are (each result is held
    only until it is consumed), and the reads of the next items wait on the network
    while the consumer decodes this one.
    """
    items = iter(items)
    threads = max(1, THREADS if threads is None else threads)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque = deque(pool.submit(func, item) for _, item in zip(range(2 * threads), items))
        while pending:
            future = pending.popleft()
            for item in items:
                pending.append(pool.submit(func, item))
                break
            yield future.result
