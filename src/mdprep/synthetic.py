"""Synthetic cohorts for the demo, the tests and the benchmarks.

Everything here is generated from a seed, so two runs write identical files. The
writers can plant the inputs that real dumps contain and that mdprep must account
for: non-DICOM files, a DICOMDIR, files without the Part 10 preamble, truncated and
corrupt files, a file without a patient, a corrupt PNG, and so on. Each writer
returns what it planted and what ingest should therefore report.
"""

from __future__ import annotations

import csv
import gzip
import os
from dataclasses import dataclass, field
from typing import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .ingest.tables import CHEXPERT_LABELS, NIH_LABELS

# Rough prevalences, rarest last, so generated cohorts are imbalanced like real ones.
_PREVALENCE = np.array([0.10, 0.025, 0.12, 0.18, 0.05, 0.055, 0.013, 0.047, 0.04, 0.02, 0.022, 0.015, 0.03, 0.002])


@dataclass
class Planted:
    """What a writer put on disk and what ingest should report for it."""

    root: str
    ingested: int = 0
    skipped: int = 0
    failed: int = 0
    lenient: int = 0
    outcomes: dict[str, str] = field(default_factory=dict)  # relative path -> "ok" / "skipped:X" / "failed:X"

    @property
    def found(self) -> int:
        return self.ingested + self.skipped + self.failed

    def _add(self, rel: str, outcome: str) -> None:
        self.outcomes[rel] = outcome
        kind = outcome.split(":")[0]
        if kind == "ok":
            self.ingested += 1
        elif kind == "skipped":
            self.skipped += 1
        else:
            self.failed += 1


def _uid(*parts: object) -> str:
    import hashlib

    digest = int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:30], 16)
    return f"2.25.{digest}"


def synthetic_pixels(rng: np.random.Generator, shape: tuple[int, int], bits: int = 12) -> np.ndarray:
    """A smooth chest-like blob with noise, so images differ the way real ones do."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w]
    cy, cx = h * rng.uniform(0.4, 0.6), w * rng.uniform(0.4, 0.6)
    r = np.hypot((y - cy) / (0.35 * h), (x - cx) / (0.3 * w))
    top = (1 << bits) - 1
    img = top * (0.2 + 0.6 * np.exp(-(r**2))) + rng.normal(0, top * 0.02, shape)
    return np.clip(img, 0, top).astype(np.uint16)


def _dataset(i: int, patient: str, study: int, rng: np.random.Generator, shape, *, private_tags: int, view: str):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian

    sop = _uid("sop", patient, study, i)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = sop
    ds.StudyDate = f"20{10 + study:02d}{1 + i % 12:02d}{1 + i % 28:02d}"
    ds.StudyTime = "101010"
    ds.AccessionNumber = "ACC" + _uid("accession", patient, study)[5:15]
    ds.Modality = "DX"
    ds.Manufacturer = "ACME Imaging"
    ds.InstitutionName = "General Hospital"
    ds.ReferringPhysicianName = "Smith^Anne"
    ds.StudyDescription = "CHEST " + view
    ds.SeriesDescription = view
    ds.PatientName = f"Doe^{patient}"
    ds.PatientID = patient
    ds.PatientBirthDate = f"19{40 + int(rng.integers(0, 50)):02d}0{1 + int(rng.integers(0, 9))}15"
    ds.PatientSex = "MF"[int(rng.integers(0, 2))]
    ds.PatientAge = f"{int(rng.integers(18, 95)):03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.KVP = "110"
    ds.ExposureTime = "10"
    ds.XRayTubeCurrent = "200"
    item = Dataset()
    item.CodeValue = "R-10214" if view == "PA" else "R-10206"
    item.CodingSchemeDesignator = "SRT"
    item.CodeMeaning = "postero-anterior" if view == "PA" else "antero-posterior"
    ds.ViewCodeSequence = Sequence([item])
    ds.StudyInstanceUID = _uid("study", patient, study)
    ds.SeriesInstanceUID = _uid("series", patient, study, i)
    ds.StudyID = str(study)
    ds.SeriesNumber = "1"
    ds.InstanceNumber = str(i + 1)
    for k in range(private_tags):
        ds.add_new((0x0019, 0x1000 + k), "LO", f"vendor value {k}")
    if private_tags:
        ds.add_new((0x0019, 0x0010), "LO", "ACME 1.0")
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = shape
    ds.PixelSpacing = [0.143, 0.143]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "2048"
    ds.WindowWidth = "4096"
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.PixelData = synthetic_pixels(rng, shape).tobytes()
    return ds


def write_dicom_tree(
    root: str | os.PathLike,
    *,
    patients: int = 10,
    images_per_patient: int = 3,
    shape: tuple[int, int] = (64, 64),
    seed: int = 0,
    private_tags: int = 30,
    plant_bad_files: bool = False,
) -> Planted:
    """Write ``patients * images_per_patient`` DICOM files as ``PATIENT/STUDY/IMAGE.dcm``.

    With ``plant_bad_files`` the tree also gets one of each troublesome input
    (see the module docstring); :class:`Planted` says what ingest must report.

    Examples
    --------
    >>> import tempfile
    >>> write_dicom_tree(tempfile.mkdtemp(), patients=1, images_per_patient=2, shape=(4, 4)).ingested
    2
    """
    rng = np.random.default_rng(seed)
    root_p = Path(root)
    planted = Planted(str(root_p))
    n = 0
    for p in range(patients):
        patient = f"PAT{p:05d}"
        for j in range(images_per_patient):
            study = j // 2
            rel = f"{patient}/study{study}/img{j:03d}.dcm"
            path = root_p / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            ds = _dataset(n, patient, study, rng, shape, private_tags=private_tags, view="PA" if j % 2 == 0 else "AP")
            if j % 3 == 1:
                # Some archives write sequences with undefined length.
                ds["ViewCodeSequence"].is_undefined_length = True
                for it in ds.ViewCodeSequence:
                    it.is_undefined_length_sequence_item = True
            if j % 4 == 3:
                ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2"  # implicit VR little endian
            ds.save_as(path, enforce_file_format=True)
            planted._add(rel, "ok")
            n += 1
    if plant_bad_files:
        _plant_bad_dicom(root_p, planted, rng, shape)
    return planted


def _plant_bad_dicom(root: Path, planted: Planted, rng: np.random.Generator, shape) -> None:
    from pydicom import dcmwrite

    bad = root / "zz_bad"
    bad.mkdir(parents=True, exist_ok=True)

    def good(name: str, patient: str = "PATBAD") -> Path:
        ds = _dataset(10**6 + len(planted.outcomes), patient, 0, rng, shape, private_tags=2, view="PA")
        path = bad / name
        ds.save_as(path, enforce_file_format=True)
        return path

    (bad / "README.txt").write_text("exported by PACS\n")
    planted._add("zz_bad/README.txt", "skipped:NotDicom")
    (bad / "empty.dcm").write_bytes(b"")
    planted._add("zz_bad/empty.dcm", "skipped:NotDicom")
    (bad / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    planted._add("zz_bad/.DS_Store", "skipped:NotDicom")

    ds = _dataset(10**6 + 1, "PATBAD", 0, rng, shape, private_tags=0, view="PA")
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.1.3.10"
    ds.save_as(bad / "DICOMDIR", enforce_file_format=True)
    planted._add("zz_bad/DICOMDIR", "skipped:DicomDir")

    path = good("truncated_pixels.dcm")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - max(8, (shape[0] * shape[1]))])
    planted._add("zz_bad/truncated_pixels.dcm", "failed:TruncatedFile")

    path = good("truncated_header.dcm")
    path.write_bytes(path.read_bytes()[:300])
    planted._add("zz_bad/truncated_header.dcm", "failed:TruncatedFile")

    path = bad / "corrupt.dcm"
    path.write_bytes(bytes(128) + b"DICM" + bytes(rng.integers(0, 256, 2000, dtype=np.uint8)))
    planted._add("zz_bad/corrupt.dcm", "failed:Unreadable")

    ds = _dataset(10**6 + 2, "PATNOPRE", 0, rng, shape, private_tags=0, view="PA")
    del ds.file_meta
    ds.preamble = None
    with open(bad / "no_preamble.dcm", "wb") as fh:
        dcmwrite(fh, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    planted._add("zz_bad/no_preamble.dcm", "ok")
    planted.lenient += 1

    ds = _dataset(10**6 + 3, "X", 0, rng, shape, private_tags=0, view="PA")
    del ds.PatientID
    ds.save_as(bad / "no_patient.dcm", enforce_file_format=True)
    planted._add("zz_bad/no_patient.dcm", "failed:MissingPatientID")

    ds = _dataset(10**6 + 4, "PATBIG", 0, rng, shape, private_tags=0, view="PA")
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.2"  # explicit VR big endian (retired)
    ds.PixelData = synthetic_pixels(rng, shape).byteswap().tobytes()
    ds.save_as(bad / "big_endian.dcm", enforce_file_format=True)
    planted._add("zz_bad/big_endian.dcm", "ok")


# ----------------------------------------------------------------------------- images


def write_image_tree(
    root: str | os.PathLike,
    *,
    patients: int = 10,
    studies: int = 2,
    shape: tuple[int, int] = (32, 32),
    seed: int = 0,
    fmt: str = "png",
    plant_bad_files: bool = False,
) -> Planted:
    """Write a CheXpert-style tree ``patientNNNNN/studyN/viewK_frontal.png``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root_p = Path(root)
    planted = Planted(str(root_p))
    for p in range(patients):
        for s in range(1, studies + 1):
            for v, kind in ((1, "frontal"), (2, "lateral")):
                if kind == "lateral" and (p + s) % 2:
                    continue
                rel = f"patient{p:05d}/study{s}/view{v}_{kind}.{fmt}"
                path = root_p / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                pixels = (synthetic_pixels(rng, shape, bits=8)).astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(path)
                planted._add(rel, "ok")
    if plant_bad_files:
        (root_p / "README.md").write_text("# images\n")
        planted._add("README.md", "skipped:NotImage")
        (root_p / "patient99999").mkdir(exist_ok=True)
        (root_p / "patient99999" / "study1").mkdir(exist_ok=True)
        (root_p / "patient99999/study1/view1_frontal.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
        planted._add("patient99999/study1/view1_frontal.png", "failed")
        (root_p / "stray").mkdir(exist_ok=True)
        Image.fromarray(np.zeros((4, 4), np.uint8), mode="L").save(root_p / "stray" / "scan.png")
        planted._add("stray/scan.png", "failed:PatternMismatch")
    return planted


# ----------------------------------------------------------------------------- tables


def _labels_matrix(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    prev = np.resize(_PREVALENCE, k)
    return (rng.random((n, k)) < prev).astype(np.int8)


def write_nih_table(path: str | os.PathLike, *, patients: int = 50, seed: int = 0, trailing_comma: bool = False) -> int:
    """Write an NIH ChestX-ray14 style ``Data_Entry_2017.csv`` (gzip when ``path`` ends in .gz); return its rows."""
    rng = np.random.default_rng(seed)
    header = (
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
    )
    lines = [header + ("," if trailing_comma else "")]
    for p in range(1, patients + 1):
        visits = 1 + int(rng.geometric(0.35)) - 1
        for f in range(visits):
            found = [name for name, on in zip(NIH_LABELS, _labels_matrix(rng, 1, 14)[0]) if on]
            labels = "|".join(found) if found else "No Finding"
            row = (
                f"{p:08d}_{f:03d}.png,{labels},{f},{p},{int(rng.integers(1, 95))},{'MF'[int(rng.integers(0, 2))]},"
                f"{'PA' if rng.random() < 0.6 else 'AP'},2500,2048,0.143,0.143"
            )
            lines.append(row + ("," if trailing_comma else ""))
    data = ("\n".join(lines) + "\n").encode()
    _write_maybe_gz(path, data)
    return len(lines) - 1


def write_chexpert_table(path: str | os.PathLike, *, patients: int = 50, seed: int = 0, prefix: str = "CheXpert-v1.0-small/train") -> int:
    """Write a CheXpert ``train.csv`` style table with 1/0/-1/blank labels; return its rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(1, patients + 1):
        for s in range(1, 1 + int(rng.integers(1, 4))):
            views = [("view1_frontal.jpg", "Frontal", "AP" if rng.random() < 0.7 else "PA")]
            if rng.random() < 0.3:
                views.append(("view2_lateral.jpg", "Lateral", ""))
            for name, fl, appa in views:
                values = rng.choice(["1.0", "0.0", "-1.0", "", ""], size=len(CHEXPERT_LABELS), p=[0.1, 0.2, 0.05, 0.35, 0.3])
                rows.append(
                    [f"{prefix}/patient{p:05d}/study{s}/{name}", "Female" if rng.random() < 0.5 else "Male", str(int(rng.integers(18, 90))), fl, appa, *values]
                )
    _write_csv(path, ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS], rows)
    return len(rows)


def write_mimic_tables(chexpert_path: str | os.PathLike, metadata_path: str | os.PathLike, *, patients: int = 20, seed: int = 0) -> dict:
    """Write MIMIC-CXR style ``*-chexpert.csv`` and ``*-metadata.csv`` tables.

    One labelled study has no images in the metadata and one imaged study has no
    labels, as in the real release; the returned dict says how many of each.
    """
    rng = np.random.default_rng(seed)
    labels = [l for l in CHEXPERT_LABELS]
    label_rows, meta_rows = [], []
    images = 0
    for p in range(patients):
        subject = 10000000 + p * 17
        for s in range(int(rng.integers(1, 3))):
            study = 50000000 + p * 100 + s
            label_rows.append([subject, study, *rng.choice(["1.0", "0.0", "-1.0", ""], size=len(labels), p=[0.1, 0.2, 0.05, 0.65])])
            for v in range(int(rng.integers(1, 3))):
                dicom_id = f"{rng.integers(0, 16**8):08x}-{p:04d}{s}{v}"
                meta_rows.append([dicom_id, subject, study, "CHEST (PA AND LAT)", "PA" if v == 0 else "LATERAL", 3056, 2544, 21800101 + s, "120000.0", "", "", ""])
                images += 1
    # A study with labels but no images, and one with images but no labels.
    label_rows.append([99999999, 59999999, *(["1.0"] + [""] * (len(labels) - 1))])
    meta_rows.append(["ffffffff-nolabels", 10000000, 50009999, "CHEST (PA AND LAT)", "PA", 3056, 2544, 21800101, "120000.0", "", "", ""])
    images += 1
    _write_csv(chexpert_path, ["subject_id", "study_id", *labels], label_rows)
    _write_csv(
        metadata_path,
        [
            "dicom_id",
            "subject_id",
            "study_id",
            "PerformedProcedureStepDescription",
            "ViewPosition",
            "Rows",
            "Columns",
            "StudyDate",
            "StudyTime",
            "ProcedureCodeSequence_CodeMeaning",
            "ViewCodeSequence_CodeMeaning",
            "PatientOrientationCodeSequence_CodeMeaning",
        ],
        meta_rows,
    )
    return {"images": images, "studies_without_images": 1, "images_without_labels": 1}


def _write_csv(path, header, rows) -> None:
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    _write_maybe_gz(path, buf.getvalue().encode())


def _write_maybe_gz(path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        # mtime=0 keeps the bytes identical between runs.
        with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


# ----------------------------------------------------------------------------- leakage


def textured_pixels(rng: np.random.Generator, shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    """A random smooth 8-bit texture: unrelated images get unrelated perceptual hashes."""
    coarse = rng.integers(0, 256, (8, 8)).astype(np.float64)
    img = np.kron(coarse, np.ones((shape[0] // 8, shape[1] // 8)))
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def write_leaky_cohort(root: str | os.PathLike, *, patients: int = 12, seed: int = 0):
    """PNG and DICOM images in train/test with one of each kind of leak planted.

    Returns ``(frame, expected)``: a manifest frame (``path`` relative to ``root``,
    ``split``, ``study_id``, ``birth_date``, ``sex``) and, per check, the keys that
    the audit must find (image ids for the pair checks).
    """
    import datetime as dt
    import shutil

    from PIL import Image

    rng = np.random.default_rng(seed)
    root_p = Path(root)
    root_p.mkdir(parents=True, exist_ok=True)
    rows = []

    def add(name, patient, split, study, birth, sex, pixels=None, src=None):
        path = root_p / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if src is not None:
            shutil.copyfile(root_p / src, path)
        else:
            Image.fromarray(pixels, mode="L").save(path, compress_level=6)
        rows.append((name, patient, split, study, birth, sex))

    for p in range(patients):
        split = "train" if p < patients * 2 // 3 else "test"
        add(f"p{p:03d}/a.png", f"P{p:03d}", split, f"S{p:03d}", dt.date(1950 + p, 1, 1), "MF"[p % 2], textured_pixels(rng))
    # 1. patient P000 (train) also in test
    add("leak/p000_b.png", "P000", "test", "S900", dt.date(1950, 1, 1), "M", textured_pixels(rng))
    # 2. one study under two patient ids
    add("leak/study_dup.png", "P901", "test", "S001", dt.date(1901, 1, 1), "F", textured_pixels(rng))
    # 3a. a byte-identical copy of a train image in test
    add("leak/copy.png", "P902", "test", "S902", dt.date(1902, 1, 1), "M", src="p002/a.png")
    # 3b. the same pixels re-encoded (different bytes)
    with Image.open(root_p / "p003/a.png") as im:
        same = np.asarray(im)
    (root_p / "leak").mkdir(exist_ok=True)
    Image.fromarray(same, mode="L").save(root_p / "leak/reencoded.png", compress_level=1, optimize=False)
    rows.append(("leak/reencoded.png", "P903", "test", "S903", dt.date(1903, 1, 1), "F"))
    # 4. a slightly brightened and blurred copy of a train image, chosen so that its
    #    perceptual hash differs in 1 to 4 bits (a near duplicate, not an exact one)
    from .hashing import phash64

    near_source = None
    for p in range(4, patients * 2 // 3):
        with Image.open(root_p / f"p{p:03d}/a.png") as im:
            a = np.asarray(im).astype(float)
        b = np.clip((a + np.roll(a, 1, 0) + np.roll(a, 1, 1)) / 3 + 6, 0, 255).astype(np.uint8)
        if 1 <= bin(phash64(a.astype(np.uint8)) ^ phash64(b)).count("1") <= 4:
            near_source = f"p{p:03d}/a.png"
            add("leak/brighter.png", "P904", "test", "S904", dt.date(1904, 1, 1), "M", b)
            break
    # 5. a different id with the birth date and sex of train patient P005
    add("leak/same_person.png", "P905", "test", "S905", dt.date(1955, 1, 1), "F", textured_pixels(rng))
    frame = pd.DataFrame(rows, columns=["path", "patient_id", "split", "study_id", "birth_date", "sex"])
    frame.insert(0, "image_id", frame["path"])
    frame["path"] = frame["path"].astype("str")
    expected = {
        "patient_overlap": ["P000"],
        "study_overlap": ["S001"],
        "duplicate_file": ["leak/copy.png|p002/a.png"],
        "duplicate_pixels": ["leak/copy.png|p002/a.png", "leak/reencoded.png|p003/a.png"],
        "near_duplicate": [f"leak/brighter.png|{near_source}"] if near_source else [],
        "same_person": ["P005|P905"],
    }
    return frame, expected


# ----------------------------------------------------------------------------- training


SHAPE_LABELS = ("square", "circle", "stripes")


def shape_image(labels: Sequence[bool], rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A noisy grey image where each label draws its own shape: a square, a ring, stripes."""
    img = rng.normal(0.35, 0.08, (size, size))
    y, x = np.mgrid[0:size, 0:size]
    if labels[0]:
        s, o = size // 5, int(rng.integers(2, size // 4))
        img[o : o + s, o : o + s] += 0.5
    if labels[1]:
        cy, cx = size * 0.6 + rng.normal(0, 2), size * 0.6 + rng.normal(0, 2)
        r = np.hypot(y - cy, x - cx)
        img[(r > size * 0.12) & (r < size * 0.2)] += 0.45
    if labels[2]:
        img[(y // 3) % 2 == 0] += 0.25
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_shapes_dataset(root: str | os.PathLike, *, images: int = 400, size: int = 64, seed: int = 0, prevalence: Sequence[float] = (0.3, 0.15, 0.08), dicom_every: int = 0):
    """A labelled image set for training tests: two images per patient, imbalanced labels.

    Every ``dicom_every``-th image is written as a 16-bit MONOCHROME2 DICOM file
    instead of a PNG (0: none), to exercise the DICOM path. Returns a manifest frame.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    root_p = Path(root)
    root_p.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(images):
        labels = rng.random(len(SHAPE_LABELS)) < np.asarray(prevalence)
        pixels = shape_image(labels, rng, size)
        if dicom_every and i % dicom_every == 0:
            rel = f"img{i:05d}.dcm"
            _write_dicom_pixels(root_p / rel, (pixels.astype(np.uint16) * 16), f"S{i // 2:05d}")
        else:
            rel = f"img{i:05d}.png"
            Image.fromarray(pixels, mode="L").save(root_p / rel)
        rows.append((rel, rel, f"S{i // 2:05d}", *labels.astype(int)))
    frame = pd.DataFrame(rows, columns=["image_id", "path", "patient_id", *SHAPE_LABELS])
    for name in SHAPE_LABELS:
        frame[name] = frame[name].astype("Int8")
    return frame


def _write_dicom_pixels(path: Path, pixels: np.ndarray, patient: str) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = _uid("shape", path.name)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.PatientID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, patient
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


# ----------------------------------------------------------------------------- CT series

#: SOP classes of the CT cohort: one image per file, and Enhanced CT (all frames in one file).
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
_AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
_CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


@dataclass
class PlantedSeries:
    """What :func:`write_ct_tree` wrote: files, and per series what a series-level ingest must find.

    ``series`` maps each SeriesInstanceUID to a dict with ``folder`` (relative to the root),
    ``instances`` (files), ``frames`` (images: slices, or the frames of a multi-frame file),
    ``patient`` and ``problems`` (the sorted names of the volume problems planted in it).
    """

    root: str
    files: int = 0
    series: dict[str, dict] = field(default_factory=dict)

    def with_problem(self, problem: str) -> list[str]:
        """The series UIDs in which ``problem`` was planted."""
        return sorted(uid for uid, s in self.series.items() if problem in s["problems"])


def ct_volume(rng: np.random.Generator, slices: int, shape: tuple[int, int] = (32, 32)) -> np.ndarray:
    """A smooth body-like blob in HU (-1024 air, about 40 tissue), ``slices x rows x columns``, int16."""
    z, y, x = np.mgrid[0:slices, 0 : shape[0], 0 : shape[1]]
    c = rng.uniform(0.4, 0.6, 3) * np.array([slices, *shape])
    r = np.sqrt(((z - c[0]) / (0.6 * slices)) ** 2 + ((y - c[1]) / (0.35 * shape[0])) ** 2 + ((x - c[2]) / (0.4 * shape[1])) ** 2)
    hu = -1024 + 1064 * (r < 1) + rng.normal(0, 8, r.shape)
    return np.clip(hu, -1024, 3071).astype(np.int16)


def _ct_dataset(patient: str, study: int, series_uid: str, k: int, pixels: np.ndarray, *, position, orientation=_AXIAL,
                sop_class: str = CT_IMAGE_STORAGE, image_type=("ORIGINAL", "PRIMARY", "AXIAL"), thickness: float = 2.5):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    sop = _uid("ct-sop", series_uid, k)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = list(image_type)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop
    ds.StudyDate, ds.StudyTime = f"20{20 + study:02d}0315", "093000"
    ds.AccessionNumber = "CT" + _uid("ct-accession", patient, study)[5:15]
    ds.Modality = "CT"
    ds.PatientName, ds.PatientID = f"Roe^{patient}", patient
    ds.PatientBirthDate, ds.PatientSex, ds.PatientAge = "19600101", "MF"[len(patient) % 2], "060Y"
    ds.BodyPartExamined = "CHEST"
    ds.StudyInstanceUID = _uid("ct-study", patient, study)
    ds.SeriesInstanceUID = series_uid
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = str(study), "2", str(k + 1)
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = list(orientation)
    ds.SliceThickness = thickness
    ds.PixelSpacing = [0.7, 0.7]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = "0", "1"
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    return ds


def _enhanced_ct(patient: str, study: int, series_uid: str, volume: np.ndarray, spacing: float):
    """One Enhanced CT file holding every slice of ``volume`` as a frame, positions per frame."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = _ct_dataset(patient, study, series_uid, 0, volume[0], position=(0, 0, 0), sop_class=ENHANCED_CT_IMAGE_STORAGE,
                     image_type=("ORIGINAL", "PRIMARY", "VOLUME", "NONE"))
    for name in ("ImagePositionPatient", "ImageOrientationPatient", "SliceThickness", "PixelSpacing"):
        del ds[name]
    ds.NumberOfFrames = len(volume)
    measures, orient = Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = [0.7, 0.7], spacing
    orient.ImageOrientationPatient = list(_AXIAL)
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orient])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for z in range(len(volume)):
        plane, item = Dataset(), Dataset()
        plane.ImagePositionPatient = [-11.2, -11.2, float(z * spacing)]
        item.PlanePositionSequence = Sequence([plane])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.ascontiguousarray(volume, dtype="<i2").tobytes()
    return ds


def write_ct_tree(
    root: str | os.PathLike,
    *,
    patients: int = 3,
    slices: int = 12,
    shape: tuple[int, int] = (32, 32),
    spacing: float = 2.5,
    seed: int = 0,
    plant_problems: bool = True,
) -> PlantedSeries:
    """Write axial CT series, one folder per series: ``PATIENT/studyS/seriesN/IMAGE.dcm``.

    Every patient gets one clean axial series of ``slices`` slices. With
    ``plant_problems`` the first patient's study also gets one series for each volume
    problem a series-level ingest must flag, and one clean multi-frame file:

    * ``missing_slices``: a clean series with one inner slice left out (a gap in position and InstanceNumber);
    * ``duplicate_positions``: one more file at the position of the second slice (numbered after the last);
    * ``irregular_spacing``: one gap of 1.5 times the spacing between two slices, numbered without a gap
      (not a missing slice: no whole slice fits in it);
    * ``mixed_orientation``: two slices written coronal in an axial series;
    * ``localizer``: a scout (ImageType LOCALIZER, coronal, another matrix size) in an axial series,
      which also makes it ``mixed_orientation`` and ``mixed_size``;
    * ``mixed_sop_class``: one slice stored as Secondary Capture;
    * a multi-frame Enhanced CT file: one series of one instance with ``slices`` frames, no problem.

    Files are written in shuffled order of names, so readers cannot rely on file names for slice order.

    Examples
    --------
    >>> import tempfile
    >>> p = write_ct_tree(tempfile.mkdtemp(), patients=1, slices=6, shape=(4, 4))
    >>> p.with_problem("duplicate_positions") == [u for u, s in p.series.items() if s["folder"].endswith("duplicate")]
    True
    """
    if plant_problems and slices < 6:
        raise ValueError(f"slices={slices}: planting the volume problems needs at least 6 slices per series")
    rng = np.random.default_rng(seed)
    root_p = Path(root)
    planted = PlantedSeries(str(root_p))

    def write(patient: str, study: int, name: str, datasets: list, problems: Sequence[str], frames: int | None = None) -> None:
        folder = f"{patient}/study{study}/{name}"
        (root_p / folder).mkdir(parents=True, exist_ok=True)
        order = rng.permutation(len(datasets))
        for k, ds in enumerate(datasets):
            ds.save_as(root_p / folder / f"im{int(order[k]):04d}.dcm", enforce_file_format=True)
        uid = str(datasets[0].SeriesInstanceUID)
        planted.series[uid] = {"folder": folder, "instances": len(datasets), "frames": frames or len(datasets),
                               "patient": patient, "problems": sorted(problems)}
        planted.files += len(datasets)

    def axial(patient: str, study: int, name: str, n: int = slices, z=None) -> list:
        uid = _uid("ct-series", patient, study, name)
        volume = ct_volume(rng, n, shape)
        zs = np.arange(n) * spacing if z is None else np.asarray(z, dtype=float)
        return [_ct_dataset(patient, study, uid, k, volume[k], position=(-11.2, -11.2, zs[k]), thickness=spacing) for k in range(n)]

    for p in range(patients):
        write(f"CT{p:04d}", 0, "series1", axial(f"CT{p:04d}", 0, "series1"), [])
    if not plant_problems:
        return planted
    patient = "CT0000"
    gap = axial(patient, 0, "missing")
    del gap[slices // 2]
    write(patient, 0, "missing", gap, ["missing_slices"])
    dup = axial(patient, 0, "duplicate")
    again = _ct_dataset(patient, 0, dup[0].SeriesInstanceUID, slices, ct_volume(rng, 1, shape)[0],
                        position=dup[1].ImagePositionPatient, thickness=spacing)
    dup.append(again)  # a second image at slice 2's position, numbered after the last
    write(patient, 0, "duplicate", dup, ["duplicate_positions"])
    z = np.arange(slices) * spacing
    z[slices // 2 :] += 0.5 * spacing
    write(patient, 0, "irregular", axial(patient, 0, "irregular", z=z), ["irregular_spacing"])
    mixed = axial(patient, 0, "oblique")
    for k in (slices // 2 - 1, slices // 2):
        mixed[k].ImageOrientationPatient = list(_CORONAL)
    write(patient, 0, "oblique", mixed, ["mixed_orientation"])
    scout_series = axial(patient, 0, "scout")
    uid = scout_series[0].SeriesInstanceUID
    scout = _ct_dataset(patient, 0, uid, slices, ct_volume(rng, 1, (shape[0], shape[1] * 2))[0], position=(-11.2, 0.0, 40.0),
                        orientation=_CORONAL, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    write(patient, 0, "scout", scout_series + [scout], ["localizer", "mixed_orientation", "mixed_size"])
    sop = axial(patient, 0, "sopclass")
    sop[slices // 2].SOPClassUID = sop[slices // 2].file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    write(patient, 0, "sopclass", sop, ["mixed_sop_class"])
    uid = _uid("ct-series", patient, 0, "enhanced")
    write(patient, 0, "enhanced", [_enhanced_ct(patient, 0, uid, ct_volume(rng, slices, shape), spacing)], [], frames=slices)
    return planted


# ----------------------------------------------------------------------------- object storage


class LocalS3:
    """A local S3 API for the tests and the benchmarks: moto's server on a free port, counting what it sends.

    Runs ``moto.server.ThreadedMotoServer`` (``pip install 'moto[server]'``) in a
    thread of this process and records every request it answers (method, key,
    status, body bytes sent), so that a test can tell how many bytes reading a
    tree cost without trusting the client. ``latency`` (seconds) delays every
    answer, as the round trip to a remote store would, and ``bandwidth`` (bytes
    per second) models one link that all answers share (the benchmarks use them). Point s3fs at it with
    ``AWS_ENDPOINT_URL=<endpoint>`` (any credentials work unless IAM checks are on).

    Examples
    --------
    >>> import tempfile
    >>> tree = tempfile.mkdtemp(); _ = open(os.path.join(tree, "a.txt"), "w").write("hello")
    >>> with LocalS3() as s3:
    ...     url = s3.upload(tree, "bucket", "docs")
    ...     keys = s3.keys("bucket")
    >>> url, keys
    ('s3://bucket/docs', ['docs/a.txt'])
    """

    def __init__(self, latency: float = 0.0, bandwidth: float | None = None) -> None:
        self.requests: list[tuple[str, str, int, int]] = []  # (method, path, status, body bytes)
        self.latency = latency  # seconds added before each answer, as a remote store's round trip would
        self.bandwidth = bandwidth  # bytes per second of one link shared by all answers (None: unlimited)
        self._link_free = 0.0  # when the modelled link has sent everything queued on it
        self._server = None
        self.endpoint = ""

    def __enter__(self) -> "LocalS3":
        import logging
        import socket
        import threading
        import time

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request on stderr
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self._server.start()
        wsgi = self._server._server  # werkzeug's server: its app answers each request
        app, lock = wsgi.app, threading.Lock()

        def counting(environ, start_response):
            status = []

            def start(code, headers, exc_info=None):
                status.append(int(code.split()[0]))
                return start_response(code, headers, exc_info)

            if self.latency:
                time.sleep(self.latency)
            body = list(app(environ, start))
            sent = sum(map(len, body))
            with lock:
                self.requests.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), status[0] if status else 0, sent))
                if self.bandwidth:  # the answer waits for its turn on the link, then for its own bytes
                    now = time.monotonic()
                    self._link_free = max(now, self._link_free) + sent / self.bandwidth
                    wait = self._link_free - now
            if self.bandwidth:
                time.sleep(wait)
            return body

        wsgi.app = counting
        self.endpoint = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self, **credentials):
        """A boto3 S3 client of this server (test credentials unless others are given)."""
        import boto3

        credentials = credentials or {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", **credentials)

    def upload(self, root: str | os.PathLike, bucket: str, prefix: str) -> str:
        """Upload every file under the folder ``root`` to ``s3://bucket/prefix/<relative path>``; return that URL."""
        client = self.client()
        try:
            client.create_bucket(Bucket=bucket)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        base = Path(root)
        for path in sorted(p for p in base.rglob("*") if p.is_file() and not p.is_symlink()):
            client.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(base).as_posix()}", Body=path.read_bytes())
        return f"s3://{bucket}/{prefix}"

    def keys(self, bucket: str) -> list[str]:
        """Every key of ``bucket``, sorted."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def object_reads(self, prefix: str = "/") -> dict[str, tuple[int, int]]:
        """``{path: (GET requests, body bytes sent)}`` of the object reads (GET of a key) recorded, for paths starting with ``prefix``."""
        out: dict[str, tuple[int, int]] = {}
        for method, path, _status, sent in self.requests:
            if method == "GET" and path.startswith(prefix) and path.count("/") >= 2 and not path.endswith("/"):
                n, total = out.get(path, (0, 0))
                out[path] = (n + 1, total + sent)
        return out


# ----------------------------------------------------------------------------- NIfTI volumes


@dataclass
class PlantedVolumes:
    """What :func:`write_nifti_tree` wrote.

    ``volumes`` maps each file (relative to the root) to a dict with ``patient``,
    ``kind`` (``volume``, ``copy`` or ``damaged``), ``shape`` (x, y, z[, t]) and
    ``axis_codes`` of what was stored, ``source`` (for a copy: the file it copies) and
    ``error`` (for a damaged file: the error type ``ingest images`` must give).
    """

    root: str
    files: int = 0
    volumes: dict[str, dict] = field(default_factory=dict)

    def of_kind(self, kind: str) -> list[str]:
        """The files of one kind, sorted."""
        return sorted(p for p, v in self.volumes.items() if v["kind"] == kind)


def nifti_volume(rng: np.random.Generator, shape: tuple[int, int, int] = (20, 24, 16)) -> np.ndarray:
    """A CT-like int16 volume indexed (x, y, z): :func:`ct_volume`'s body with three bright bones at random places."""
    x, y, z = shape
    vol = ct_volume(rng, z, (y, x)).transpose(2, 1, 0).copy()
    grid = np.indices(shape, dtype=np.float32)
    for _ in range(3):
        centre = rng.uniform(0.2, 0.8, 3) * np.array(shape)
        radius = rng.uniform(0.08, 0.18) * min(shape)
        inside = sum((g - c) ** 2 for g, c in zip(grid, centre)) < radius**2
        vol[inside] = 700 + rng.integers(0, 300)
    return vol


def write_nifti_tree(
    root: str | os.PathLike,
    *,
    patients: int = 3,
    shape: tuple[int, int, int] = (20, 24, 16),
    spacing: tuple[float, float, float] = (0.8, 0.8, 2.5),
    frames: int = 0,
    copies: bool = False,
    damaged: bool = False,
    seed: int = 0,
) -> PlantedVolumes:
    """Write CT-like NIfTI volumes: ``PATIENT/study0/ct.nii.gz``, int16, one per patient (needs nibabel).

    Even patients' volumes are stored LPS (as converted from DICOM), odd ones RAS.
    ``frames`` adds a 4-D file ``P0000/study1/perfusion.nii`` of that many frames.
    ``copies`` adds copies of ``P0000/study0/ct.nii.gz`` under other patients, each a
    near duplicate that ``hash`` and ``audit-leakage`` must find:

    * ``C0000/study0/reoriented.nii.gz``: the same voxels stored on the axes S, L, A
      (transposed and flipped, the affine adjusted);
    * ``C0001/study0/float32.nii``: the same values as float32, not compressed;
    * ``C0002/study0/scaled.nii.gz``: int16 stored values halved, with scl_slope 2
      and scl_inter -1, so the values are the original ones give or take 1.

    ``damaged`` adds files that ``ingest images`` must turn into error rows:
    ``D0000/study0/cut.nii`` and ``D0001/study0/cut.nii.gz`` (cut to 60 % of their
    bytes: ``TruncatedFile``), ``D0002/study0/notes.nii`` (text: ``NotNifti``) and
    ``D0003/study0/pair.nii`` (the header of a .hdr/.img pair: ``NotNifti``).

    Examples
    --------
    >>> import tempfile
    >>> p = write_nifti_tree(tempfile.mkdtemp(), patients=2, copies=True)
    >>> p.of_kind("copy")
    ['C0000/study0/reoriented.nii.gz', 'C0001/study0/float32.nii', 'C0002/study0/scaled.nii.gz']
    """
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, ornt_transform

    rng = np.random.default_rng(seed)
    root_p = Path(root)
    planted = PlantedVolumes(str(root_p))

    def save(rel: str, img, kind: str, patient: str, **extra) -> None:
        path = root_p / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(img, path)
        planted.volumes[rel] = {"patient": patient, "kind": kind, "shape": tuple(int(n) for n in img.shape),
                                "axis_codes": "".join(nib.aff2axcodes(img.affine)), **extra}
        planted.files += 1

    def affine(lps: bool) -> np.ndarray:
        sign = np.array([-1.0, -1.0, 1.0]) if lps else np.ones(3)
        out = np.diag([*(sign * np.asarray(spacing)), 1.0])
        out[:3, 3] = -0.5 * sign * np.asarray(spacing) * np.asarray(shape)
        return out

    def image(data: np.ndarray, aff: np.ndarray, dtype=np.int16):
        img = nib.Nifti1Image(data.astype(dtype), aff)
        img.header.set_xyzt_units("mm", "sec")
        img.set_qform(aff, code=1)
        img.set_sform(aff, code=1)
        return img

    first = None
    for p in range(patients):
        patient = f"P{p:04d}"
        data = nifti_volume(rng, shape)
        img = image(data, affine(p % 2 == 0))
        save(f"{patient}/study0/ct.nii.gz", img, "volume", patient)
        first = (data, img) if first is None else first
    if frames:
        data = np.stack([nifti_volume(rng, shape) for _ in range(frames)], axis=-1)
        save("P0000/study1/perfusion.nii", image(data, affine(True)), "volume", "P0000")
    if copies and first is not None:
        data, img = first
        source = "P0000/study0/ct.nii.gz"
        moved = img.as_reoriented(ornt_transform(nib.io_orientation(img.affine), axcodes2ornt(("S", "L", "A"))))
        save("C0000/study0/reoriented.nii.gz", image(np.asarray(moved.dataobj), moved.affine), "copy", "C0000", source=source)
        save("C0001/study0/float32.nii", image(data, img.affine, np.float32), "copy", "C0001", source=source)
        scaled = image(np.floor((data + 1) / 2), img.affine)
        scaled.header.set_slope_inter(2.0, -1.0)
        save("C0002/study0/scaled.nii.gz", scaled, "copy", "C0002", source=source)
    if damaged:
        whole = image(nifti_volume(rng, shape), affine(True))
        for rel in ("D0000/study0/cut.nii", "D0001/study0/cut.nii.gz"):
            save(rel, whole, "damaged", rel[:5], error="TruncatedFile")
            path = root_p / rel
            path.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.6)])
        notes = root_p / "D0002/study0/notes.nii"
        notes.parent.mkdir(parents=True, exist_ok=True)
        notes.write_text("not a volume: the scan is still on the scanner\n")
        planted.volumes["D0002/study0/notes.nii"] = {"patient": "D0002", "kind": "damaged", "error": "NotNifti"}
        planted.files += 1
        save("D0003/study0/pair.nii", whole, "damaged", "D0003", error="NotNifti")
        pair = root_p / "D0003/study0/pair.nii"
        raw = bytearray(pair.read_bytes())
        raw[344:348] = b"ni1\x00"  # the magic of a .hdr/.img pair
        pair.write_bytes(bytes(raw))
    return planted
