"""Trainer throughput with data loading included, and the share of time spent waiting for data.

A synthetic labelled image set (PNG, with some DICOM files), decoded from disk every
epoch; one epoch per configuration after a warm-up epoch, on the CPU.
"""

from __future__ import annotations

import tempfile

from _common import CACHE

from mdprep.manifest import Manifest, read_manifest, write_manifest
from mdprep.splitting import split_manifest
from mdprep.synthetic import SHAPE_LABELS, write_shapes_dataset
from mdprep.training import train


def run() -> list[dict]:
    root = CACHE / "shapes-256"
    listing = root / "manifest.parquet"
    if not listing.exists():
        frame = write_shapes_dataset(root, images=1024, size=256, dicom_every=8)
        write_manifest(Manifest(frame, labels=SHAPE_LABELS, root=str(root)), listing)
    m = split_manifest(read_manifest(listing), ratios=(0.8, 0.1, 0.1), seed=0).manifest
    rows = []
    for arch, size, workers in (("small", 128, 0), ("small", 128, 1), ("resnet18", 128, 0), ("densenet121", 128, 0)):
        r = train(m, root=str(root), out_dir=tempfile.mkdtemp(), arch=arch, epochs=2, batch_size=32, image_size=size,
                  device="cpu", workers=workers, seed=0)
        e = r.metrics["runs"][0]["epochs"][-1]  # the second epoch: caches and allocator warm
        rows.append({"arch": arch, "size": size, "workers": workers, "ips": e["images_per_second"], "wait": e["data_wait_share"]})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | image size | DataLoader workers | images/s (training, loading included) | share of time waiting for data |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['size']} | {r['workers']} | {r['ips']:.0f} | {r['wait']:.0%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(run()))
