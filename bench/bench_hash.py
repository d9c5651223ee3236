"""Hashing throughput: ``hash_manifest`` with 1 and 2 workers against a plain loop, on DICOM and PNG.

The sets (bench/.cache, written once; a warm page cache, as every run reads them all):

* DICOM: synthetic DX files of ``bench/_common.dicom_tree`` (512x512, 16 bits allocated,
  12 stored, rescale slope 1 and intercept 0, 30 private tags), about 0.5 MB each;
* PNG, 8-bit grey and 16-bit grey: 512x512 chest-like images (``synthetic_pixels``),
  as CheXpert's or NIH's PNGs are 8-bit and re-exported DICOMs often 16-bit.

Per set, in interleaved repeats (A, B, C, A, B, C, ...), seconds for the whole set:

* ``plain``: the loop a user would write, one process: per file SHA-256 of its bytes,
  ``pydicom.dcmread(path).pixel_array`` (PNG: ``numpy.asarray(Image.open(path))``), a
  min/max window to 8 bits, ``imagehash.phash``. Two of mdprep's three hashes.
* ``plain3``: the same loop computing all three hashes as mdprep defines them: the
  pixels are :func:`mdprep.imaging.load_pixels`' (pydicom's modality LUT, so float64
  for a file with a rescale), hashed with their shape and dtype, and windowed by
  :func:`mdprep.imaging.grey_8bit`. The straightforward implementation.
* ``mdprep_1``, ``mdprep_2``: ``hash_manifest(m, workers=1 or 2)``, warm (imports done).
* with ``baseline=SRC`` (another checkout's ``src``, e.g. the base commit's):
  ``base_1``, ``base_2``, the same calls of that code in a warm subprocess, and a check
  that its three hash columns equal this code's, row for row.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np

from _common import CACHE, dicom_tree, median, timed

from mdprep.hashing import hash_manifest
from mdprep.manifest import Manifest

SETS = ("dicom", "png8", "png16")


def png_tree(name: str, files: int, *, bits: int, shape: tuple[int, int] = (512, 512), seed: int = 5) -> Path:
    """``files`` grey PNGs of ``bits`` bits (4 per folder) under CACHE/``name``, written once."""
    from PIL import Image

    from mdprep.synthetic import synthetic_pixels

    root, done = CACHE / name, CACHE / f"{name}.complete"
    if not done.exists():
        rng = np.random.default_rng(seed)
        for i in range(files):
            path = root / f"p{i // 4:05d}" / f"img{i % 4}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = synthetic_pixels(rng, shape, bits=8 if bits == 8 else 12)
            Image.fromarray(pixels.astype(np.uint8) if bits == 8 else pixels * np.uint16(16)).save(path)
        done.write_text("ok")
    return root


def tree(kind: str, files: int) -> Path:
    if kind == "dicom":
        return dicom_tree(f"hash-dicom-{files}", files, shape=(512, 512), seed=3, private_tags=30)
    return png_tree(f"hash-{kind}-{files}", files, bits=int(kind[3:]))


def relative_paths(root: Path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, names in os.walk(root) for f in names)


def manifest_of(root: Path, rels: list[str]) -> Manifest:
    import pandas as pd

    frame = pd.DataFrame({"image_id": rels, "path": rels, "patient_id": [r.split("/")[0] for r in rels]})
    return Manifest(frame, root=str(root))


def columns_digest(frame) -> str:
    """SHA-256 of the three hash columns, row by row (equal digests: equal hashes)."""
    text = "\n".join(f"{a}|{b}|{c}" for a, b, c in zip(frame["file_sha256"], frame["pixel_sha256"], frame["phash"]))
    return hashlib.sha256(text.encode()).hexdigest()


def plain_loop(paths: list[str]) -> None:
    """The issue's baseline: file SHA-256, pixels, min/max window, imagehash.phash."""
    import imagehash
    import pydicom
    from PIL import Image

    for p in paths:
        with open(p, "rb") as fh:
            hashlib.sha256(fh.read()).hexdigest()
        if p.endswith(".dcm"):
            a = pydicom.dcmread(p).pixel_array
        else:
            with Image.open(p) as im:
                a = np.asarray(im)
        grey = ((a - a.min()) / max(1, a.max() - a.min()) * 255).astype(np.uint8)
        imagehash.phash(Image.fromarray(grey))


def plain3_loop(paths: list[str]) -> None:
    """All three hashes, straightforwardly: the file read once, mdprep's pixels and window, imagehash.phash."""
    import imagehash
    from PIL import Image

    from mdprep.imaging import grey_8bit, load_pixels

    for p in paths:
        with open(p, "rb") as fh:
            data = fh.read()
        hashlib.sha256(data).hexdigest()
        arr, invert = load_pixels(p, data)
        hashlib.sha256(f"{arr.shape}|{arr.dtype.str}|".encode() + np.ascontiguousarray(arr).tobytes()).hexdigest()
        imagehash.phash(Image.fromarray(grey_8bit(arr, invert), mode="L"))


_SERVER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[2])
from bench_hash import _cpu, columns_digest, manifest_of
from mdprep.hashing import hash_manifest
for line in sys.stdin:
    root, rels, workers = json.loads(line)
    m = manifest_of(root, rels)
    cpu, start = _cpu(), time.perf_counter()
    r = hash_manifest(m, workers=workers)
    seconds, cpu = time.perf_counter() - start, _cpu() - cpu
    print(json.dumps([seconds, cpu, columns_digest(r.manifest.frame)]), flush=True)
"""


class Baseline:
    """Another checkout's ``hash_manifest`` in a warm subprocess: one call per request."""

    def __init__(self, src: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, os.path.abspath(src), str(Path(__file__).resolve().parent)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": ""},
        )

    def __call__(self, root: Path, rels: list[str], workers: int) -> tuple[float, float, str]:
        """Seconds, CPU seconds (the subprocess and its workers) and :func:`columns_digest` of one call."""
        self.proc.stdin.write(json.dumps([str(root), rels, workers]) + "\n")
        self.proc.stdin.flush()
        seconds, cpu, digest = json.loads(self.proc.stdout.readline())
        return seconds, cpu, digest

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the workers), user and system."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run(files: int = 1000, repeat: int = 5, baseline: str | None = None, sets: tuple[str, ...] = SETS) -> dict:
    base = Baseline(baseline) if baseline else None
    out: dict = {"files": files, "repeat": repeat, "baseline": baseline, "sets": {}}
    try:
        for kind in sets:
            root = tree(kind, files)
            rels = relative_paths(root)
            paths = [str(root / r) for r in rels]
            m = manifest_of(root, rels)
            for p in paths:  # warm the page cache
                with open(p, "rb") as fh:
                    fh.read()
            ours = hash_manifest(m, workers=1)  # warm: imports, caches
            assert ours.failed == 0, ours.errors.head()
            digest = columns_digest(ours.manifest.frame)
            assert columns_digest(hash_manifest(m, workers=2).manifest.frame) == digest, "2 workers differ from 1"
            t: dict[str, list[float]] = {}
            runs = {
                "plain": lambda: plain_loop(paths),
                "plain3": lambda: plain3_loop(paths),
                "mdprep_1": lambda: hash_manifest(m, workers=1),
                "mdprep_2": lambda: hash_manifest(m, workers=2),
            }
            if base is not None:
                for w in (1, 2):
                    assert base(root, rels, w)[2] == digest, f"{kind}: the baseline's hashes differ from this code's"
            cpu: dict[str, list[float]] = {}
            for _ in range(repeat):
                for name, fn in runs.items():
                    before = _cpu()
                    t.setdefault(name, []).append(timed(fn))
                    cpu.setdefault(name, []).append(_cpu() - before)
                if base is not None:
                    for w in (1, 2):
                        seconds, used, got = base(root, rels, w)
                        assert got == digest
                        t.setdefault(f"base_{w}", []).append(seconds)
                        cpu.setdefault(f"base_{w}", []).append(used)
            size = sum(os.path.getsize(p) for p in paths) / len(paths)
            out["sets"][kind] = {
                "files": len(paths),
                "mean_size": size,
                "rate": {k: len(paths) / median(v) for k, v in t.items()},
                "cpu_ms": {k: 1000 * median(v) / len(paths) for k, v in cpu.items()},
            }
    finally:
        if base is not None:
            base.close()
    return out


_LABELS = {"dicom": "DICOM, 512x512, 16-bit (12 stored)", "png8": "PNG, 512x512, 8-bit grey", "png16": "PNG, 512x512, 16-bit grey"}


def markdown(r: dict) -> str:
    has_base = bool(r["baseline"])
    head = "| set | files | KB/file | plain loop | plain loop, 3 hashes |" + (" before, 1 worker | before, 2 workers |" if has_base else "")
    head += " mdprep, 1 worker | mdprep, 2 workers | 1 worker / plain loop | 2 workers / 1 worker |"
    lines = [
        f"Files per second, medians of {r['repeat']} interleaved runs, warm page cache and imports"
        + ("; before: the base commit in a warm subprocess, its hashes checked equal to these, row for row." if has_base else "."),
        "",
        head,
        "|---|" + "---:|" * (head.count("|") - 2),
    ]
    for kind, s in r["sets"].items():
        rate = s["rate"]
        cells = [_LABELS[kind], f"{s['files']:,}", f"{s['mean_size'] / 1e3:.0f}", f"{rate['plain']:.0f}", f"{rate['plain3']:.0f}"]
        if has_base:
            cells += [f"{rate['base_1']:.0f}", f"{rate['base_2']:.0f}"]
        cells += [f"{rate['mdprep_1']:.0f}", f"{rate['mdprep_2']:.0f}", f"**{rate['mdprep_1'] / rate['plain']:.2f}x**", f"**{rate['mdprep_2'] / rate['mdprep_1']:.2f}x**"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "CPU milliseconds per file (the process and its workers, user and system; medians of the same runs). Less",
        "sensitive than seconds to other work on the machine; both workers' time counts for 2 workers:",
        "",
        "| set | plain loop | plain loop, 3 hashes |" + (" before, 1 worker | before, 2 workers |" if has_base else "")
        + " mdprep, 1 worker | mdprep, 2 workers | plain loop / 1 worker |",
        "|---|" + "---:|" * (7 if has_base else 5),
    ]
    for kind, s in r["sets"].items():
        c = s["cpu_ms"]
        cells = [_LABELS[kind], f"{c['plain']:.2f}", f"{c['plain3']:.2f}"]
        if has_base:
            cells += [f"{c['base_1']:.2f}", f"{c['base_2']:.2f}"]
        cells += [f"{c['mdprep_1']:.2f}", f"{c['mdprep_2']:.2f}", f"{c['plain'] / c['mdprep_1']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--baseline", help="src folder of another checkout (the base commit), timed alongside")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    args = parser.parse_args()
    result = run(args.files, args.repeat, args.baseline, tuple(args.sets))
    print(json.dumps(result), file=sys.stderr)
    print(markdown(result))
