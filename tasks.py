#!/usr/bin/env python3
"""Set up a virtual environment and run mdprep's jobs; needs only Python 3.10+.

    python3 tasks.py demo    # install mdprep in .venv and run the demo pipeline
    python3 tasks.py test    # install mdprep with its test tools and run the whole suite
    python3 tasks.py bench   # run the benchmarks under bench/ (fetches real tables)

Extra arguments go to the underlying command (pytest, mdprep demo).
"""

from __future__ import annotations

import hashlib
import os
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


def ensure_venv(extras: str) -> None:
    """Create .venv and install mdprep (editable) with ``extras``, once per pyproject change."""
    if sys.version_info < (3, 10):
        sys.exit(f"mdprep needs Python 3.10 or newer; this is {sys.version.split()[0]}")
    stamp = VENV / f".installed-{extras or 'base'}"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == want and PY.exists():
        return
    if not PY.exists():
        run(sys.executable, "-m", "venv", VENV)
    run(PY, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--upgrade", "pip")
    target = f".[{extras}]" if extras else "."
    run(PY, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e", target)
    stamp.write_text(want)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "bench"}:
        print(__doc__)
        return 2
    job, rest = argv[0], argv[1:]
    try:
        if job == "demo":
            ensure_venv("hash")
            run(BIN / "mdprep", "demo", *rest)
        elif job == "test":
            ensure_venv("dev")
            result = subprocess.run([str(PY), "-m", "pytest", *rest], cwd=ROOT)
            # pytest exits 5 when it collects nothing: that is a failure here, not a pass.
            return 1 if result.returncode == 5 else result.returncode
        else:
            ensure_venv("dev,bench")
            run(PY, "bench/run_all.py", *rest)
    except subprocess.CalledProcessError as exc:
        return exc.returncode or 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
