"""Incremental updates: ``--update`` after 1% of a tree changed, against a full re-run.

The tree: synthetic DICOM files (256x256 16-bit pixel data, about 130 KB each,
``PATIENT/STUDY/IMAGE.dcm``, 4 files per patient) in bench/.cache, every file's
modification time set a day back. Then:

1. a full ``ingest_dicom`` with signatures gives OLD, and ``hash_manifest`` of it
   with signatures gives OLD_HASHED;
2. 1% of the files are rewritten (one attribute changed: new content, new time);
3. a full ``ingest_dicom`` and ``ingest_dicom(update=OLD)`` run in turn, ``repeat``
   times each, warm page cache; then again with each file's cached pages dropped
   (``posix_fadvise(DONTNEED)``) before every run, as on a server whose archive
   outgrows its memory (folder metadata stays cached there too);
4. a full ``hash_manifest`` of the new manifest and ``hash_manifest(update=OLD_HASHED)``
   run in turn, warm cache.

Every run writes its manifest (an update its signatures file too), and the outputs
of update and full run are compared byte for byte. Timings are medians; all cores.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from _common import CACHE, dicom_tree, median, timed

from mdprep.hashing import hash_manifest
from mdprep.incremental import local_signatures, write_signatures
from mdprep.ingest import ingest_dicom
from mdprep.ingest.files import iter_tree
from mdprep.manifest import read_manifest, write_manifest

DAY = 86400


def tree(files: int) -> Path:
    return dicom_tree(f"update-{files}", files, shape=(256, 256), seed=2, private_tags=60)


def _files(root: Path) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, names in os.walk(root) for f in names)


def _drop_cache(paths: list[str]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run(files: int = 20000, repeat: int = 5, changed: float = 0.01, hash_repeat: int = 3) -> dict:
    import pydicom

    root = tree(files)
    work = CACHE / f"update-{files}-out"
    work.mkdir(exist_ok=True)
    paths = _files(root)
    past = time.time() - DAY
    for p in paths:
        os.utime(p, (past, past))
    old, old_hashed = work / "old.parquet", work / "old-hashed.parquet"
    first = ingest_dicom(root, record_signatures=True)
    write_manifest(first.manifest, old)
    write_signatures(first.signatures, old)
    hashed = hash_manifest(first.manifest, record_signatures=True)
    write_manifest(hashed.manifest, old_hashed)
    write_signatures(hashed.signatures, old_hashed)

    step = round(1 / changed)
    for i, p in enumerate(paths[::step]):
        ds = pydicom.dcmread(p)
        ds.SeriesDescription = f"edited {i}"
        ds.save_as(p, enforce_file_format=True)
    n_changed = len(paths[::step])
    time.sleep(RACY_WAIT)  # the edits are older than the racy window of the runs below, as after a night

    full_out, new_out = work / "full.parquet", work / "new.parquet"

    def full():
        write_manifest(ingest_dicom(root).manifest, full_out)

    counts = {}

    def update():
        r = ingest_dicom(root, update=old)
        write_manifest(r.manifest, new_out)
        write_signatures(r.signatures, new_out)
        counts["ingest"] = r.report.update

    t: dict[str, list[float]] = {k: [] for k in ("full_warm", "update_warm", "full_cold", "update_cold", "floor")}
    full()  # warm the cache
    for _ in range(repeat):
        t["full_warm"].append(timed(full))
        t["update_warm"].append(timed(update))
        t["floor"].append(timed(lambda: local_signatures(str(root), list(iter_tree(str(root), [])))))
    assert full_out.read_bytes() == new_out.read_bytes(), "update and full run differ"
    drop = lambda: _drop_cache(paths)  # noqa: E731
    for _ in range(repeat):
        t["full_cold"].append(timed(full, drop))
        t["update_cold"].append(timed(update, drop))
    assert full_out.read_bytes() == new_out.read_bytes(), "update and full run differ"

    manifest = read_manifest(new_out)
    hash_full, hash_new = work / "hash-full.parquet", work / "hash-new.parquet"

    def full_hash():
        write_manifest(hash_manifest(manifest).manifest, hash_full)

    def update_hash():
        r = hash_manifest(manifest, update=old_hashed)
        write_manifest(r.manifest, hash_new)
        write_signatures(r.signatures, hash_new)
        counts["hash"] = r.update

    for _ in range(hash_repeat):
        t.setdefault("hash_full", []).append(timed(full_hash))
        t.setdefault("hash_update", []).append(timed(update_hash))
    assert hash_full.read_bytes() == hash_new.read_bytes(), "hash update and full hash differ"
    return {
        "files": len(paths),
        "changed": n_changed,
        "mean_size": sum(os.path.getsize(p) for p in paths[:200]) / min(200, len(paths)),
        "repeat": repeat,
        "hash_repeat": hash_repeat,
        "counts": counts,
        **{k: median(v) for k, v in t.items()},
    }


#: Seconds to wait after the edits, so that they are not within the racy window (mdprep.incremental.RACY_NS).
RACY_WAIT = 2.5


def markdown(r: dict) -> str:
    ingest, hashed = r["counts"]["ingest"], r["counts"]["hash"]
    lines = [
        f"Tree: {r['files']:,} DICOM files, {r['mean_size'] / 1e3:.0f} KB each; {r['changed']} of them ({r['changed'] / r['files']:.0%}) "
        f"rewritten since OLD was made. Seconds, medians of {r['repeat']} interleaved runs (hash: {r['hash_repeat']}), "
        "manifest written; outputs of update and full run byte-identical (checked).",
        "",
        "| run | files read | warm cache (s) | cold cache (s) |",
        "|---|---:|---:|---:|",
        f"| `ingest_dicom(root)`, full re-run | {r['files']:,} | {r['full_warm']:.2f} | {r['full_cold']:.2f} |",
        f"| `ingest_dicom(root, update=OLD)` | {ingest.read:,} | {r['update_warm']:.2f} | {r['update_cold']:.2f} |",
        f"| speed-up | | **{r['full_warm'] / r['update_warm']:.1f}x** | **{r['full_cold'] / r['update_cold']:.1f}x** |",
        f"| of which: walk the tree and stat every file (what any update pays) | 0 | {r['floor']:.2f} | |",
        "",
        "| run | files read | warm cache (s) |",
        "|---|---:|---:|",
        f"| `hash_manifest(m)`, full re-run | {r['files']:,} | {r['hash_full']:.2f} |",
        f"| `hash_manifest(m, update=OLD_HASHED)` | {hashed.read:,} | {r['hash_update']:.2f} |",
        f"| speed-up | | **{r['hash_full'] / r['hash_update']:.1f}x** |",
        "",
        f"Update counts: ingest {ingest.text()}; hash {hashed.text()}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--hash-repeat", type=int, default=3)
    args = parser.parse_args()
    print(markdown(run(args.files, args.repeat, hash_repeat=args.hash_repeat)))
