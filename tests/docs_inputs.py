"""The inputs of the docs examples that no mdprep command writes: damaged files, hand-made tables.

A hidden setup block of a page makes one with ``$ docs-input NAME ARGS`` (tests/docs_runner.py);
each runs in the page's folder, which holds the generated look-alike data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

#: Undone after the next command a page shows (``docs-input without-module``).
_AFTER_COMMAND: list[Callable[[], None]] = []
#: Undone when the page's run ends (``docs-input s3``: the server).
_AFTER_PAGE: list[Callable[[], None]] = []


def after_command() -> None:
    """Undo what a setup block set up for the one command that follows it."""
    while _AFTER_COMMAND:
        _AFTER_COMMAND.pop()()


def close_page() -> None:
    """Stop what a page's setup blocks started (the S3 server)."""
    while _AFTER_PAGE:
        _AFTER_PAGE.pop()()


def _weights_nan(source: str, target: str) -> None:
    """A weights document with a NaN and a negative weight (weights.md)."""
    import json

    doc = json.loads(Path(source).read_text())
    first, last = doc["labels"][0], doc["labels"][-1]
    doc["weights"][first]["w_pos"] = float("nan")
    doc["weights"][last]["w_neg"] = -2
    Path(target).write_text(json.dumps(doc))


def _with_placeholder_accession(source: str, target: str, rows: str) -> None:
    """A copy of a manifest with an ``accession`` column, ``UNKNOWN`` in ``rows`` seeded random rows (split.md)."""
    import numpy as np

    from mdprep.manifest import read_manifest, write_manifest

    manifest = read_manifest(source)
    frame = manifest.frame.copy()
    accession = np.char.add("ACC", np.char.zfill(np.arange(len(frame)).astype(str), 7)).astype(object)
    accession[np.random.default_rng(0).choice(len(frame), int(rows), replace=False)] = "UNKNOWN"
    frame["accession"] = accession
    write_manifest(manifest.with_frame(frame), target)


def _broken_manifests(source: str) -> None:
    """broken-meta, broken-history and bad-folds.parquet: a folds manifest with damaged metadata or folds (manifest.md)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(source)
    doc = json.loads(table.schema.metadata[b"mdprep"])

    def write(name: str, changes: dict, t: pa.Table = table) -> None:
        meta = {**t.schema.metadata, b"mdprep": json.dumps({**doc, **changes}).encode()}
        pq.write_table(t.replace_schema_metadata(meta), name)

    write("broken-meta.parquet", {"format_version": "1", "labels": "|".join(doc["labels"][:2])})
    write("broken-history.parquet", {"history": [doc["history"][0], ["resample"]]})
    fold = table.column("fold").to_pylist()
    fold = [7 if i % 20 == 0 else -1 if i % 20 == 1 else f for i, f in enumerate(fold)]
    write("bad-folds.parquet", {}, table.set_column(table.schema.get_field_index("fold"), "fold", pa.array(fold, table.schema.field("fold").type)))


def _outside_root(target: str) -> None:
    """A manifest whose paths leave its root: absolute, climbing and through a link (manifest.md)."""
    import pandas as pd

    from mdprep.manifest import Manifest, write_manifest

    root = Path("images").resolve()
    (root / "scans").mkdir(parents=True, exist_ok=True)
    (root / "scans" / "c.png").symlink_to("/etc/hostname")
    paths = ["../../etc/passwd", "/etc/shadow", "scans/c.png"]
    write_manifest(Manifest(pd.DataFrame({"image_id": paths, "path": paths, "patient_id": ["p1", "p2", "p3"]}), root=str(root)), target)


def _edited_audit(source: str, target: str) -> None:
    """An audit report whose first finding lost the list form of its splits (report.md)."""
    import json

    doc = json.loads(Path(source).read_text())
    doc["checks"][0]["findings"] = [{"key": "x", "splits": "train"}]
    Path(target).write_text(json.dumps(doc))


def _csv(target: str, *rows: str) -> None:
    """A small CSV table given row by row, ``;`` between its fields (the header first)."""
    import csv

    with open(target, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerows(row.split(";") for row in rows)


def _notes(target: str) -> None:
    """A label table with a free-text column and direct identifiers (pseudonyms.md)."""
    _csv(target, "image_id;patient_id;Patient Name;MRN;Report;Effusion",
         "img1.png;P1;Jane Roe;MRN0001;Seen by Dr Smith, small effusion;1",
         "img2.png;P2;John Doe;MRN0002;No effusion;0",
         "img3.png;P1;Jane Roe;MRN0001;Follow-up, effusion resolved;0")


def _visits(target: str) -> None:
    """A label table with identifiers under unusual names and non-ISO dates (pseudonyms.md)."""
    _csv(target, "file;subject;pt_name;UR;Accession No;exam_dt;Birthdate;seen;Effusion",
         "S1/visit1.png;S1;Jane Roe;UR100;A-1;03/01/2019;22.11.1951;25/12/2019;1",
         "S1/visit2.png;S1;Jane Roe;UR100;A-2;04/02/2019;22.11.1951;26/12/2019;0",
         "S2/visit1.png;S2;John Doe;UR200;A-3;05/03/2019;01.02.1960;27/12/2019;0")


def _key(target: str) -> None:
    """A fixed, strong key (so that the fingerprints in the docs stay the same); never use it for real data."""
    Path(target).write_text("9f2c4e7a1b8d3f60c5e9a2d74b1f8e36a0d5c9e2f7b4a1863e0c5d9b2a7f4e18\n")
    os.chmod(target, 0o600)


def _nifti(root: str, damaged: str = "") -> None:
    """Five CT-like NIfTI volumes, three copies of the first (reoriented, float32, scaled) and,
    with ``damaged``, four damaged files (audit.md, ingest.md)."""
    from mdprep.synthetic import write_nifti_tree

    write_nifti_tree(root, patients=5, copies=True, damaged=bool(damaged))


def _mixed(root: str) -> None:
    """PNG images of three patients and one patient's NIfTI volumes in one tree (ingest.md)."""
    from mdprep.synthetic import write_image_tree, write_nifti_tree

    write_image_tree(root, patients=3, studies=1, shape=(16, 16))
    write_nifti_tree(Path(root) / "patient00009", patients=1)


def _edited_manifest(source: str, target: str) -> None:
    """A manifest edited by hand (write_manifest would refuse it): one image id repeated, one label 5 (ingest.md)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(source)

    def edit(table, name, row, value):
        i = table.schema.get_field_index(name)
        values = table.column(name).to_pylist()
        values[row] = value
        return table.set_column(i, table.schema.field(i), pa.array(values, table.schema.field(i).type))

    table = edit(edit(table, "image_id", 1, table.column("image_id")[0].as_py()), "Hernia", 2, 5)
    pq.write_table(table, target)


def _file_kinds(target: str) -> None:
    """One readable image and four that fail each their own way: a FIFO, 3 GiB (sparse), not an image, gone (audit.md)."""
    import shutil as sh

    import pandas as pd

    from mdprep.manifest import Manifest, write_manifest

    scans = Path("kinds/scans")
    scans.mkdir(parents=True)
    sh.copy(next(Path("images").rglob("view1_frontal.png")), scans / "ok.png")
    os.mkfifo(scans / "pipe.dcm")
    with open(scans / "volume.dcm", "wb") as fh:
        fh.truncate(3 * 1024**3)
    (scans / "broken.png").write_bytes(b"not a png")
    paths = ["scans/ok.png", "scans/pipe.dcm", "scans/volume.dcm", "scans/broken.png", "scans/gone.png"]
    frame = pd.DataFrame({"image_id": paths, "path": paths, "patient_id": ["p1", "p2", "p3", "p4", "p5"]})
    write_manifest(Manifest(frame, root=str(Path("kinds").resolve())), target)


def _bad_allow(target: str) -> None:
    """An allow list whose key is a list, not text or a number (audit.md)."""
    Path(target).write_text('[{"check": "patient_overlap", "key": ["00000013"], "reason": "reviewed"}]\n')


def _weights_huge(source: str, target: str) -> None:
    """A weights document with finite weights too large to train with (train.md)."""
    import json

    doc = json.loads(Path(source).read_text())
    for entry in doc["weights"].values():
        entry["w_pos"] = 3e38
    Path(target).write_text(json.dumps(doc))


def _checkpoints() -> None:
    """notes.pt (not a checkpoint), small.pt (a state dict of --arch small) and nan.pt (one with NaN) (train.md)."""
    import torch

    from mdprep.training.models import build_model

    Path("notes.pt").write_text("not a checkpoint, only notes\n")
    state = build_model("small", 3).state_dict()
    torch.save(state, "small.pt")
    torch.save({k: v.float().fill_(float("nan")) if v.is_floating_point() else v for k, v in state.items()}, "nan.pt")


def _ct_tree(root: str) -> None:
    """write_ct_tree(root, patients=3), plus a text file and a slice without SeriesInstanceUID (ingest.md)."""
    import pydicom

    from mdprep.synthetic import write_ct_tree

    write_ct_tree(root, patients=3)
    (Path(root) / "README.txt").write_text("CT export, see the ticket\n")
    first = sorted(Path(root).rglob("*.dcm"))[0]
    ds = pydicom.dcmread(first)
    del ds.SeriesInstanceUID
    ds.save_as(Path(root) / "orphan.dcm")


def _without_patient_id(*paths: str) -> None:
    """Remove PatientID from DICOM files (ingest.md)."""
    import pydicom

    for path in paths:
        ds = pydicom.dcmread(path)
        del ds.PatientID
        ds.save_as(path)


def _anonymised(root: str) -> None:
    """Six DICOM files of two patients, four of them edited: two without PatientID in PAT00000 (one beside a file
    that has it, one alone in its study), one of PAT00001 with another PatientID, one without PatientID moved
    into that study of two PatientIDs, and one with an unknown character set (ingest.md)."""
    import pydicom

    from mdprep.synthetic import write_dicom_tree

    write_dicom_tree(root, patients=2, images_per_patient=3, shape=(16, 16), private_tags=0)

    def edit(rel: str, change) -> None:
        import warnings

        path = Path(root) / rel
        ds = pydicom.dcmread(path)
        change(ds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's about the unknown character set, which ingest notes
            ds.save_as(path)

    shared = pydicom.dcmread(Path(root) / "PAT00001/study0/img000.dcm").StudyInstanceUID
    edit("PAT00000/study0/img001.dcm", lambda ds: delattr(ds, "PatientID"))
    edit("PAT00000/study1/img002.dcm", lambda ds: delattr(ds, "PatientID"))
    edit("PAT00001/study0/img001.dcm", lambda ds: setattr(ds, "PatientID", "PAT00009"))
    edit("PAT00001/study1/img002.dcm", lambda ds: (delattr(ds, "PatientID"), setattr(ds, "StudyInstanceUID", shared)))
    edit("PAT00001/study0/img000.dcm", lambda ds: setattr(ds, "SpecificCharacterSet", "ISO_IR 999"))


def _dump(root: str) -> None:
    """A DICOM dump as archives hold them: six files of three patients, one with a Rows and a StudyDate that do not
    parse, one cut before its pixel data, one without PatientID, beside a link to a folder already read, a link to
    nothing, a file name that is not UTF-8 and a FIFO (ingest.md)."""
    import warnings

    import pydicom
    from pydicom.dataelem import DataElement

    from mdprep.synthetic import write_dicom_tree

    base = Path(root)
    write_dicom_tree(base, patients=3, images_per_patient=2, shape=(16, 16), private_tags=0)
    odd = base / "PAT00000/study0/img001.dcm"
    ds = pydicom.dcmread(odd)
    ds["Rows"] = DataElement(0x00280010, "LO", "sixteen")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's about the date, which is the point
        ds.StudyDate = "20191345"
        ds.save_as(odd)
    cut = base / "PAT00001/study0/img001.dcm"
    data = cut.read_bytes()
    cut.write_bytes(data[: data.rindex(b"\xe0\x7f\x10\x00")])  # up to the PixelData element
    _without_patient_id(str(base / "PAT00002/study0/img001.dcm"))
    (base / "PAT00001-copy").symlink_to("PAT00001", target_is_directory=True)
    (base / "latest").symlink_to("PAT00009", target_is_directory=True)
    with open(os.path.join(os.fsencode(base), b"r\xe9sum\xe9.dcm"), "wb") as fh:
        fh.write((base / "PAT00000/study0/img000.dcm").read_bytes())
    os.mkfifo(base / "transfer.pipe")


def _aged(root: str, day: str) -> None:
    """Set the modification time of every file under ``root`` to ``day`` (ISO date, UTC): a tree written long
    before the runs that read it, as an archive is (ingest.md)."""
    from datetime import datetime, timezone

    stamp = datetime.fromisoformat(day).replace(tzinfo=timezone.utc).timestamp()
    for path in Path(root).rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.utime(path, (stamp, stamp))


def _chexpert_zip(target: str) -> None:
    """A look-alike of the CheXpert-v1.0-small.zip download: ``CheXpert-v1.0-small/`` with ``train.csv``,
    ``valid.csv`` and the JPEG images they list, a few patients each (ingest.md)."""
    import io
    import tempfile
    import zipfile

    import numpy as np
    from PIL import Image

    from mdprep.synthetic import synthetic_pixels, write_chexpert_table

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(target, "w") as zf:
        for part, patients, seed in (("train", 4, 1), ("valid", 3, 2)):
            table = Path(tmp) / f"{part}.csv"
            write_chexpert_table(table, patients=patients, seed=seed, prefix=f"CheXpert-v1.0-small/{part}")
            zf.write(table, f"CheXpert-v1.0-small/{part}.csv")
            for line in table.read_text().splitlines()[1:]:
                image = io.BytesIO()
                Image.fromarray(synthetic_pixels(rng, (16, 16), bits=8).astype(np.uint8), mode="L").save(image, "JPEG")
                zf.writestr(line.split(",")[0], image.getvalue())


def _truncated_images(root: str) -> None:
    """Four chest-X-ray-like images of two patients, a PNG and a JPEG of them cut short (ingest.md)."""
    import numpy as np
    from PIL import Image

    from mdprep.synthetic import synthetic_pixels

    rng = np.random.default_rng(0)
    files = ["patient00000/study1/view1_frontal.png", "patient00001/study1/view1_frontal.png",
             "patient00001/study1/view2_lateral.jpg", "patient00001/study2/view1_frontal.png"]
    for rel in files:
        path = Path(root) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(synthetic_pixels(rng, (48, 48), bits=8).astype(np.uint8), mode="L").save(path)
    png, jpeg = Path(root) / files[0], Path(root) / files[2]
    png.write_bytes(png.read_bytes()[:-12])  # the IEND chunk gone
    jpeg.write_bytes(jpeg.read_bytes()[:-2])  # the end-of-image marker gone


def _without_module(name: str) -> None:
    """For the next command only, an installation without the package ``name``: importing it raises
    ModuleNotFoundError, as when it is not installed (ingest.md)."""
    import importlib.abc
    import sys

    class Missing(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            if fullname == name or fullname.startswith(name + "."):
                raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
            return None

    hidden = {k: sys.modules.pop(k) for k in list(sys.modules) if k == name or k.startswith(name + ".")}
    finder = Missing()
    sys.meta_path.insert(0, finder)

    def restore() -> None:
        sys.meta_path.remove(finder)
        sys.modules.update(hidden)

    _AFTER_COMMAND.append(restore)


#: Addresses a page shows that stand for the real ones of this run (``{shown: real}``): the runner puts the
#: real one into each command and the shown one back into its output.
ALIASES: dict[str, str] = {}


def _dask_cluster(shown: str, workers: str) -> None:
    """A Dask ``LocalCluster`` of ``workers`` single-threaded worker processes on a free port, standing in for the
    scheduler the page shows at ``shown`` until the page's run ends (ingest.md)."""
    import logging
    import warnings

    import distributed

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=logging.ERROR)
    ALIASES[shown] = cluster.scheduler_address

    def stop() -> None:
        ALIASES.pop(shown, None)
        cluster.close()

    _AFTER_PAGE.append(stop)


_S3: dict = {}


def _s3(root: str, url: str) -> None:
    """Upload the folder ``root`` to ``url`` (``s3://bucket/prefix``) of a local S3 API (moto's server), started at
    the first use on a page and stopped when the page's run ends; the page's commands reach it through
    ``AWS_ENDPOINT_URL`` and test credentials (ingest.md)."""
    import s3fs

    from mdprep.synthetic import LocalS3

    if not _S3:
        server = LocalS3().__enter__()
        env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_ENDPOINT_URL": server.endpoint}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        s3fs.S3FileSystem.clear_instance_cache()
        _S3["server"] = server

        def stop() -> None:
            s3fs.S3FileSystem.clear_instance_cache()
            server.__exit__(None, None, None)
            _S3.clear()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

        _AFTER_PAGE.append(stop)
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    _S3["server"].upload(root, bucket, prefix)


def _s3_trees(root: str) -> None:
    """A DICOM tree of radiographs of 0.5 MB (3 patients, the planted bad files) and a PNG tree (4 patients, the
    planted bad files) in ``root/dicom`` and ``root/png`` (ingest.md)."""
    from mdprep.synthetic import write_dicom_tree, write_image_tree

    write_dicom_tree(Path(root) / "dicom", patients=3, images_per_patient=2, shape=(512, 512), plant_bad_files=True)
    write_image_tree(Path(root) / "png", patients=4, studies=2, shape=(256, 256), plant_bad_files=True)


def _s3_escape(source: str, target: str) -> None:
    """A copy of a manifest with a URL root whose first two paths leave it: a climbing one and another bucket's URL (ingest.md)."""
    from mdprep.manifest import read_manifest, write_manifest

    manifest = read_manifest(source)
    frame = manifest.frame.copy()
    frame.loc[frame.index[:2], "path"] = ["../../private/keys.dcm", "s3://private/other.dcm"]
    write_manifest(manifest.with_frame(frame), target)


#: Inputs no mdprep command writes (damaged files, a placeholder value), made by
#: ``$ docs-input NAME ARGS`` in a setup block.
INPUTS = {"weights-nan": _weights_nan, "placeholder-accession": _with_placeholder_accession,
          "broken-manifests": _broken_manifests, "outside-root": _outside_root, "edited-audit": _edited_audit,
          "notes": _notes, "visits": _visits, "key": _key,
          "nifti": _nifti, "file-kinds": _file_kinds, "bad-allow": _bad_allow,
          "weights-huge": _weights_huge, "checkpoints": _checkpoints, "ct-tree": _ct_tree,
          "csv": _csv, "mixed": _mixed, "edited-manifest": _edited_manifest,
          "without-patient-id": _without_patient_id, "truncated-images": _truncated_images,
          "without-module": _without_module, "anonymised": _anonymised, "dump": _dump, "aged": _aged, "chexpert-zip": _chexpert_zip, "dask-cluster": _dask_cluster, "s3": _s3, "s3-trees": _s3_trees, "s3-escape": _s3_escape}
