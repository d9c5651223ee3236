#!/usr/bin/env python3
"""Set up a virtual environment and run mdprep's jobs; needs only Python 3.10+.

    python3 tasks.py demo    # install mdprep in .venv and run the demo pipeline
    python3 tasks.py test    # install mdprep with its test tools and run the whole suite
    python3 tasks.py bench   # run the benchmarks under bench/ (fetches real tables)
    python3 tasks.py acceptance  # ingest every public chest X-ray table, check counts against pandas
    python3 tasks.py docs    # run every command shown with output in docs/ and compare (the test suite does too)
    python3 tasks.py docs --update  # rewrite the shown outputs that differ from real runs
    python3 tasks.py docs --real    # check the blocks that need the real public tables (bench/.data)

Extra arguments go to the underlying command (pytest, mdprep demo, tests/docs_runner.py).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")


def run(*cmd: str | os.PathLike) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)


#: The torch build the trainer's tests use. On these machines torch==2.13.0 is the CPU build
#: on disk; elsewhere set MDPREP_TORCH (for example to a CPU wheel) to avoid a CUDA download.
TORCH = os.environ.get("MDPREP_TORCH", "torch==2.13.0")


def ensure_venv(extras: str) -> None:
    """Create .venv and install mdprep (editable) with ``extras``, once per pyproject change.

    With the ``train`` extra, torch is installed first, pinned (``TORCH``), so that the
    extra's ``torch>=2.1`` is already satisfied and pip never picks a multi-GB build.
    """
    if sys.version_info < (3, 10):
        sys.exit(f"mdprep needs Python 3.10 or newer; this is {sys.version.split()[0]}")
    stamp = VENV / f".installed-{extras.replace(',', '-') or 'base'}"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + TORCH.encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == want and PY.exists():
        return
    if not PY.exists():
        run(sys.executable, "-m", "venv", VENV)
    run(PY, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--upgrade", "pip")
    if "train" in extras.split(","):
        run(PY, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", TORCH)
    target = f".[{extras}]" if extras else "."
    run(PY, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e", target)
    stamp.write_text(want)


def ensure_chromium() -> None:
    """In CI, install Debian's Chromium for the report's browser test when it is missing."""
    if not os.environ.get("CI") or shutil.which("chromium") or not shutil.which("apt-get"):
        return
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "bench", "acceptance", "docs"}:
        print(__doc__)
        return 2
    job, rest = argv[0], argv[1:]
    try:
        if job == "demo":
            ensure_venv("hash,train")
            run(BIN / "mdprep", "demo", *rest)
        elif job == "test":
            ensure_venv("dev,train")
            ensure_chromium()
            result = subprocess.run([str(PY), "-m", "pytest", *rest], cwd=ROOT)
            # pytest exits 5 when it collects nothing: that is a failure here, not a pass.
            return 1 if result.returncode == 5 else result.returncode
        elif job == "acceptance":
            ensure_venv("dev,train")  # dev's monai needs torch: install the pinned build, not whatever pip picks
            run(PY, "bench/acceptance_tables.py", *rest)
        elif job == "docs":
            ensure_venv("dev,train")
            run(PY, "tests/docs_runner.py", *rest)
        else:
            ensure_venv("dev,train,bench")
            run(PY, "bench/run_all.py", *rest)
    except subprocess.CalledProcessError as exc:
        return exc.returncode or 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
