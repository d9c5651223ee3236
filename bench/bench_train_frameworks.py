"""Trainer throughput of the PyTorch path and the Keras path (Keras 3 on torch), on the same data.

The synthetic labelled image set of ``bench_train`` (PNG, with some DICOM files,
decoded from disk every epoch), on the CPU, with the same options in both
frameworks (batch size, cxr-safe augmentation, no loader workers). Each run trains
two epochs and reports the second (caches and allocator warm); the runs of the two
frameworks alternate, and the table gives the median of the runs of each.

    python bench/bench_train_frameworks.py
"""

from __future__ import annotations

import gc
import statistics
import tempfile

from _common import CACHE

from mdprep.manifest import Manifest, read_manifest, write_manifest
from mdprep.splitting import split_manifest
from mdprep.synthetic import SHAPE_LABELS, write_shapes_dataset

#: (model, image size, train rows, batch size, runs): densenet121 at 224 px is slow on a CPU and its
#: activations take gigabytes (12.5 GB at peak for the Keras path with batch 32), so it trains on
#: fewer rows in smaller batches, once.
CONFIGS = (
    ("small", 64, 320, 32, 3),
    ("densenet121", 64, 320, 32, 3),
    ("densenet121", 224, 64, 16, 1),
)


def _manifest() -> Manifest:
    root = CACHE / "shapes-256"
    listing = root / "manifest.parquet"
    if not listing.exists():
        frame = write_shapes_dataset(root, images=1024, size=256, dicom_every=8)
        write_manifest(Manifest(frame, labels=SHAPE_LABELS, root=str(root)), listing)
    return split_manifest(read_manifest(listing), ratios=(0.8, 0.1, 0.1), seed=0).manifest


def _subset(m: Manifest, train_rows: int) -> Manifest:
    f = m.frame
    keep = f.index.isin(f.index[f["split"] == "train"][:train_rows]) | f.index.isin(f.index[f["split"] == "val"][:32])
    return m.with_frame(f[keep])


def images_per_second(m: Manifest, framework: str, arch: str, size: int, batch: int) -> float:
    """Images/s of the second epoch of a two-epoch ``mdprep train`` run of ``framework``."""
    from mdprep.training import train

    r = train(m, root=m.root, out_dir=tempfile.mkdtemp(), framework=framework, arch=arch, epochs=2, batch_size=batch,
              image_size=size, device="cpu", seed=0, bootstrap=10)
    return r.metrics["runs"][0]["epochs"][-1]["images_per_second"]


def run(configs=CONFIGS) -> list[dict]:
    import warnings

    # Keras' torch backend calls np.array on torch tensors, which numpy 2 warns about on every prediction.
    warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept a copy keyword", category=DeprecationWarning)
    m = _manifest()
    rows = []
    for arch, size, train_rows, batch, repeat in configs:
        data = _subset(m, train_rows)
        ips = {"torch": [], "keras": []}
        for _ in range(repeat):
            for framework in ips:
                ips[framework].append(images_per_second(data, framework, arch, size, batch))
            gc.collect()  # the last run's model and activations, before the next run allocates its own
        rows.append({"arch": arch, "size": size, "rows": train_rows, "batch": batch, "repeat": repeat,
                     "torch": statistics.median(ips["torch"]), "keras": statistics.median(ips["keras"])})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | image size | train rows | batch | runs | PyTorch path, images/s | Keras path (torch backend), images/s | Keras / PyTorch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arch']} | {r['size']} | {r['rows']} | {r['batch']} | {r['repeat']} | {r['torch']:.1f} | {r['keras']:.1f} | {r['keras'] / r['torch']:.2f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(run()))
