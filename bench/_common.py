"""Shared helpers of the benchmarks: real data fetching, timing, machine description."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"  # git-ignored
CACHE = HERE / ".cache"  # git-ignored
TXV_VERSION = "1.5.7"
TABLES = {
    "nih": "torchxrayvision/data/Data_Entry_2017_v2020.csv.gz",
    "chexpert": "torchxrayvision/data/chexpert_train.csv.gz",
    "padchest": "torchxrayvision/data/PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz",
    "vindr": "torchxrayvision/data/vinbigdata-train.csv.gz",
    "siim": "torchxrayvision/data/siim-pneumothorax-train-rle.csv.gz",
    "rsna_labels": "torchxrayvision/data/kaggle_stage_2_train_labels.csv.zip",
    "rsna_headers": "torchxrayvision/data/kaggle_stage_2_train_images_dicom_headers.csv.gz",
    "nih_google": "torchxrayvision/data/google2019_nih-chest-xray-labels.csv.gz",
}


def real_table(name: str) -> Path:
    """Path of a real metadata table from the torchxrayvision wheel, fetched on first use."""
    target = DATA / Path(TABLES[name]).name
    if target.exists():
        return target
    DATA.mkdir(parents=True, exist_ok=True)
    wheels = list(DATA.glob("torchxrayvision-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", f"torchxrayvision=={TXV_VERSION}", "-d", str(DATA)],
            check=True,
        )
        wheels = list(DATA.glob("torchxrayvision-*.whl"))
    with zipfile.ZipFile(wheels[0]) as zf:
        target.write_bytes(zf.read(TABLES[name]))
    return target


def timed(fn, before=None) -> float:
    """Seconds one call of ``fn`` takes; ``before`` runs first, untimed (dropping a cache, say)."""
    if before:
        before()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timeit(fn, repeat: int) -> list[float]:
    return [timed(fn) for _ in range(repeat)]


def dicom_tree(name: str, files: int, *, shape: tuple[int, int], seed: int, private_tags: int) -> Path:
    """A synthetic DICOM tree of ``files`` files (4 per patient) under CACHE/``name``, written once.

    The marker that says the tree is complete lies beside it, not in it, so that it is not
    one of the tree's files.
    """
    from mdprep.synthetic import write_dicom_tree

    root = CACHE / name
    done = CACHE / f"{name}.complete"
    if not done.exists():
        write_dicom_tree(root, patients=files // 4, images_per_patient=4, shape=shape, seed=seed, private_tags=private_tags)
        done.write_text("ok")
    return root


def median(xs) -> float:
    return statistics.median(xs)


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    import numpy, pandas, pyarrow, pydicom

    import mdprep

    return (
        f"{cores} cores ({cpu}), Python {platform.python_version()}, mdprep {mdprep.__version__}, "
        f"pandas {pandas.__version__}, pyarrow {pyarrow.__version__}, pydicom {pydicom.__version__}, numpy {numpy.__version__}"
    )
