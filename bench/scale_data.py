"""Synthetic NIH-like manifests of any size, for the scale benchmarks (cached under bench/.cache).

    python bench/scale_data.py 100000 1000000 3000000 10000000

One row per image, written by mdprep's own Parquet writer (:func:`mdprep.manifest.write_table`)
with the ``mdprep`` metadata, so every command reads it as a manifest:

* ``image_id``: unique NIH-style names, ``00012345_003.png`` (patient, follow-up);
* ``patient_id``: about one patient per 3.6 images (geometric follow-up counts, like NIH);
* ``study_id``: a DICOM-like UID per two follow-ups of a patient;
* ``split``: train/val/test (0.7/0.1/0.2) by patient, with one image of every 10,000th
  patient (that has two or more) moved to another split: planted patient and study leaks;
* ``path``, ``sex``, ``age``, ``view`` and the 14 NIH finding labels (``int8``, NIH-like
  prevalences), so that ``mdprep split`` has something to stratify.

Columns are built with Arrow compute kernels, not Python strings: 10 million rows take about
half a minute.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import CACHE  # noqa: E402

#: NIH ChestX-ray14 findings and roughly their prevalence in Data_Entry_2017.
LABELS = {
    "Atelectasis": 0.103, "Cardiomegaly": 0.025, "Effusion": 0.119, "Infiltration": 0.177,
    "Mass": 0.052, "Nodule": 0.056, "Pneumonia": 0.013, "Pneumothorax": 0.047,
    "Consolidation": 0.042, "Edema": 0.021, "Emphysema": 0.022, "Fibrosis": 0.015,
    "Pleural_Thickening": 0.030, "Hernia": 0.002,
}
SPLITS = np.array(["train", "val", "test"])


def _padded(values: np.ndarray, width: int) -> pa.Array:
    return pc.utf8_lpad(pc.cast(pa.array(values), pa.string()), width, "0")


def manifest_table(n: int, seed: int = 0) -> pa.Table:
    """The Arrow table (canonical types, ``mdprep`` metadata) of an ``n``-row NIH-like manifest."""
    from mdprep.manifest import LABEL_TYPE, Manifest

    rng = np.random.default_rng(seed)
    per_patient = rng.geometric(1 / 3.6, size=n // 3 + 16)
    per_patient = per_patient[: int(np.searchsorted(np.cumsum(per_patient), n)) + 1]
    patient = np.repeat(np.arange(len(per_patient)), per_patient)[:n]
    starts = np.r_[0, np.flatnonzero(patient[1:] != patient[:-1]) + 1]
    followup = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    pid = _padded(patient, 8)
    image_id = pc.binary_join_element_wise(pid, "_", _padded(followup, 3), "")
    image_id = pc.binary_join_element_wise(image_id, ".png", "")
    path = pc.binary_join_element_wise("images/", image_id, "")
    study = pc.binary_join_element_wise(
        "1.2.826.0.1.3680043.8.498", pc.cast(pa.array(patient), pa.string()), pc.cast(pa.array(followup // 2), pa.string()), "."
    )
    # Split by patient (a fixed hash), then plant leaks: one image of every 10,000th patient moves.
    part = np.searchsorted([0.7, 0.8], ((patient * 2654435761) % 1000) / 1000, side="right")
    leak_patients = np.flatnonzero((np.arange(len(per_patient)) % 10_000 == 1) & (per_patient >= 2))
    leak_rows = starts[leak_patients[leak_patients < len(starts)]] + 1
    leak_rows = leak_rows[leak_rows < n]
    part[leak_rows] = (part[leak_rows] + 1) % 3
    columns = {
        "image_id": image_id,
        "path": path,
        "patient_id": pid,
        "study_id": study,
        "view": pa.array(np.where(rng.random(n) < 0.6, "PA", "AP")),
        "sex": pa.array(np.where(rng.random(n) < 0.56, "M", "F")),
        "age": pa.array(rng.integers(1, 95, n).astype(np.float32)),
        "split": pa.array(SPLITS[part]),
    }
    for name, p in LABELS.items():
        columns[name] = pa.array((rng.random(n) < p).astype(np.int8), type=LABEL_TYPE)
    meta = Manifest(frame=None, labels=tuple(LABELS)).metadata  # type: ignore[arg-type]
    table = pa.table(columns)
    return table.replace_schema_metadata({b"mdprep": json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()})


def manifest_path(n: int, seed: int = 0) -> Path:
    """The cached ``n``-row manifest, written on first use."""
    from mdprep.manifest import write_table

    path = CACHE / f"scale-{n}.parquet"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        write_table(manifest_table(n, seed), path)
    return path


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(manifest_path(int(arg)))
