"""``mdprep hash``'s fast path gives the hashes of the straightforward one, file for file.

The reference below is the hashing as first written: the file's bytes through SHA-256,
:func:`~mdprep.imaging.load_pixels` (pydicom's pixels through the modality LUT), SHA-256
of the array's shape, dtype and bytes, :func:`~mdprep.imaging.grey_8bit` and
``imagehash.phash``. It runs on every test file pydicom ships (compressed transfer
syntaxes, big-endian, multi-frame, colour, broken files) and on images written here
that take every branch: MONOCHROME1, signed pixels, rescale slopes and intercepts of
every kind, modality LUTs, 8-, 16- and 32-bit pixels, flat images, colour and palette
PNGs, float TIFFs.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from mdprep.hashing import _fast_hashes, _rescale_plan, error_text, hash_image, hash_manifest, phash64, read_image_bytes
from mdprep.imaging import _decode, grey_8bit, load_pixels
from mdprep.manifest import Manifest


def reference(path: str) -> tuple:
    """``hash_image`` as first written: no shortcut anywhere."""
    try:
        data = read_image_bytes(path)
    except (OSError, ValueError) as exc:
        return None, None, None, *error_text(exc)
    file_hash = hashlib.sha256(data).hexdigest()
    try:
        arr, invert = load_pixels(path, data)
        head = f"{arr.shape}|{arr.dtype.str}|".encode()
        pixel_hash = hashlib.sha256(head + np.ascontiguousarray(arr).tobytes()).hexdigest()
        bits = imagehash.phash(Image.fromarray(grey_8bit(arr, invert), mode="L")).hash.flatten()
        return file_hash, pixel_hash, int(np.packbits(bits).view(">u8")[0]), "", ""
    except Exception as exc:  # noqa: BLE001 - as hash_image: the file's error row
        return file_hash, None, None, *error_text(exc)


def _dicom(path: Path, pixels: np.ndarray, *, bits_stored: int | None = None, frames: int = 0, rgb: bool = False, compress: str | None = None, **tags) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = "1.2.3." + str(abs(hash(path.name)) % 10**12)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.PatientID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "P"
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if rgb else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
    if rgb:
        ds.PlanarConfiguration = 0
    if frames:
        ds.NumberOfFrames = frames
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits_stored or bits, (bits_stored or bits) - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    if compress:
        ds.compress(compress, np.ascontiguousarray(pixels))
    ds.save_as(path, enforce_file_format=True)


def write_odd_images(root: Path) -> list[str]:
    """One small file for every branch the fast path takes or leaves; returns their paths."""
    rng = np.random.default_rng(7)
    u12 = rng.integers(100, 4000, (20, 24)).astype(np.uint16)
    u12[0, 0], u12[-1, -1] = 0, 4095
    s16 = rng.integers(-2000, 3000, (20, 24)).astype(np.int16)
    s12 = rng.integers(-2048, 2048, (20, 24)).astype(np.int16)
    u8 = rng.integers(0, 256, (20, 24)).astype(np.uint8)
    u32 = rng.integers(0, 1 << 31, (20, 24)).astype(np.uint32)
    flat = np.full((20, 24), 777, np.uint16)
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    lut.LUTData = [min(65535, 16 * x) for x in range(4096)]
    lut["LUTData"].VR = "US"
    dicoms = {
        "plain.dcm": (u12, dict(bits_stored=12, RescaleSlope="1", RescaleIntercept="0")),
        "norescale.dcm": (u12, dict(bits_stored=12)),
        "mono1.dcm": (u12, dict(bits_stored=12, RescaleSlope="1", RescaleIntercept="0", PhotometricInterpretation="MONOCHROME1")),
        "mono1-norescale.dcm": (u12, dict(bits_stored=12, PhotometricInterpretation="MONOCHROME1")),
        "signed.dcm": (s16, dict(RescaleSlope="1", RescaleIntercept="-1024")),
        "signed12.dcm": (s12, dict(bits_stored=12, RescaleSlope="1", RescaleIntercept="0")),
        "signed-norescale.dcm": (s16, {}),
        "fraction.dcm": (u12, dict(bits_stored=12, RescaleSlope="0.37", RescaleIntercept="-1024.7")),
        "negative-slope.dcm": (u12, dict(bits_stored=12, RescaleSlope="-2.5", RescaleIntercept="10")),
        "zero-slope.dcm": (u12, dict(bits_stored=12, RescaleSlope="0", RescaleIntercept="5")),
        "huge-slope.dcm": (u12, dict(bits_stored=12, RescaleSlope="1e38", RescaleIntercept="0")),
        "intercept-only.dcm": (u12, dict(bits_stored=12, RescaleIntercept="-1024")),
        "slope-only.dcm": (u12, dict(bits_stored=12, RescaleSlope="2")),
        "u8.dcm": (u8, {}),
        "u8-mono1.dcm": (u8, dict(PhotometricInterpretation="MONOCHROME1")),
        "u8-rescale.dcm": (u8, dict(RescaleSlope="1", RescaleIntercept="0")),
        "u32.dcm": (u32, dict(RescaleSlope="1", RescaleIntercept="0")),
        "u32-norescale.dcm": (u32, {}),
        "flat.dcm": (flat, dict(bits_stored=12, RescaleSlope="1", RescaleIntercept="0")),
        "flat-mono1.dcm": (flat, dict(bits_stored=12, RescaleSlope="1", RescaleIntercept="0", PhotometricInterpretation="MONOCHROME1")),
        "voi-lut.dcm": (u12, dict(bits_stored=12, RescaleSlope="1", RescaleIntercept="0", WindowCenter="2048", WindowWidth="4096", VOILUTSequence=Sequence([lut]))),
        "modality-lut.dcm": (u12, dict(bits_stored=12, RescaleSlope="1", ModalityLUTSequence=Sequence([lut]))),
        "one-pixel.dcm": (u12[:1, :1], dict(bits_stored=12, RescaleSlope="1", RescaleIntercept="0")),
        "one-row.dcm": (u12[:1], dict(bits_stored=12, RescaleSlope="1", RescaleIntercept="0")),
        "tall.dcm": (np.repeat(u12, 30, axis=0), dict(bits_stored=12, RescaleSlope="1", RescaleIntercept="0")),
        "wide.dcm": (np.tile(u12, (3, 100)), dict(bits_stored=12, RescaleSlope="0.5", RescaleIntercept="-3", PhotometricInterpretation="MONOCHROME1")),
        "multiframe.dcm": (np.stack([u12, u12[::-1], u12 // 2]), dict(bits_stored=12, frames=3, RescaleSlope="1", RescaleIntercept="0")),
        "rgb.dcm": (np.stack([u8, u8[::-1], u8 // 2], axis=-1), dict(rgb=True)),
        "rle.dcm": (u12, dict(bits_stored=12, RescaleSlope="1", RescaleIntercept="0", compress=RLELossless)),
        "rle-signed-mono1.dcm": (s16, dict(RescaleSlope="1", RescaleIntercept="0", PhotometricInterpretation="MONOCHROME1", compress=RLELossless)),
    }
    paths = []
    for name, (pixels, tags) in dicoms.items():
        _dicom(root / name, pixels, **tags)
        paths.append(root / name)
    pil = {
        "grey.png": Image.fromarray(u8, mode="L"),
        "grey16.png": Image.fromarray(u12 * 16),
        "flat.png": Image.fromarray(np.full((20, 24), 9, np.uint8), mode="L"),
        "flat16.png": Image.fromarray(flat),
        "rgb.png": Image.fromarray(np.stack([u8, u8[::-1], u8 // 2], axis=-1), mode="RGB"),
        "rgba.png": Image.fromarray(np.stack([u8, u8[::-1], u8 // 2, u8], axis=-1), mode="RGBA"),
        "la.png": Image.fromarray(np.stack([u8, u8[::-1]], axis=-1), mode="LA"),
        "palette.png": Image.fromarray(u8, mode="L").convert("P"),
        "bilevel.png": Image.fromarray(u8 > 128),
        "int32.tif": Image.fromarray(u32.astype(np.int32)),
        "float.tif": Image.fromarray(u12.astype(np.float32) / 7),
        "grey.jpg": Image.fromarray(u8, mode="L"),
        "tiny.png": Image.fromarray(u8[:1, :1], mode="L"),
        "wide16.png": Image.fromarray(np.tile(u12 * 16, (1, 40))),
    }
    for name, im in pil.items():
        im.save(root / name)
        paths.append(root / name)
    (root / "junk.png").write_bytes(b"not an image")
    paths.append(root / "junk.png")
    return [str(p) for p in paths]


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the odd values on purpose
        return write_odd_images(root)


def _pydicom_test_files() -> list[str]:
    return sorted(get_testdata_files())


def _same(paths: list[str]) -> tuple[int, int]:
    """Assert hash_image equals the reference on every path; return (hashed, failed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = [hash_image(p) for p in paths]
        want = [reference(p) for p in paths]
    for p, g, w in zip(paths, got, want):
        assert g == w, p
    return sum(1 for w in want if not w[3]), sum(1 for w in want if w[3])


def test_fast_path_equals_the_reference_on_pydicom_test_files():
    hashed, failed = _same(_pydicom_test_files())
    assert hashed >= 70 and failed >= 1  # pydicom 3 decodes about 77 of its 193 files without extra plugins


def test_fast_path_equals_the_reference_on_odd_images(odd_images):
    hashed, failed = _same(odd_images)
    assert (hashed, failed) == (len(odd_images) - 1, 1)  # junk.png alone fails


def test_fast_path_equals_the_reference_on_a_synthetic_dicom_tree(dicom_tree):
    paths = [str(Path(dicom_tree.root) / rel) for rel in sorted(dicom_tree.outcomes)]
    hashed, failed = _same(paths)
    assert hashed >= dicom_tree.ingested and failed > 0  # a file ingest refuses (no patient ID) may still decode


def test_the_fast_path_takes_grey_integer_images_and_leaves_the_rest(odd_images):
    by_name = {Path(p).name: p for p in odd_images}

    def route(name: str) -> str:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds, stored = _decode(by_name[name], read_image_bytes(by_name[name]))
            plan = _rescale_plan(stored, ds)
            if plan is None:
                return "general"
            return "fast" if _fast_hashes(stored, *plan) is not None else "general"

    fast = ["plain.dcm", "norescale.dcm", "mono1.dcm", "signed.dcm", "signed12.dcm", "fraction.dcm", "negative-slope.dcm", "intercept-only.dcm",
            "u8.dcm", "u8-mono1.dcm", "u32.dcm", "flat.dcm", "multiframe.dcm", "wide.dcm", "rle.dcm", "grey.png", "grey16.png", "palette.png", "int32.tif", "grey.jpg"]
    general = ["modality-lut.dcm", "huge-slope.dcm", "rgb.dcm", "rgb.png", "rgba.png", "la.png", "bilevel.png", "float.tif"]
    assert {n: route(n) for n in fast + general} == {**dict.fromkeys(fast, "fast"), **dict.fromkeys(general, "general")}


def _imagehash_phash(grey: np.ndarray) -> int:
    bits = imagehash.phash(Image.fromarray(np.ascontiguousarray(grey), mode="L")).hash.flatten()
    return int(np.packbits(bits).view(">u8")[0])


def test_phash64_is_imagehash_phash():
    rng = np.random.default_rng(3)
    for shape in [(1, 1), (5, 300), (32, 32), (64, 48), (513, 511)]:
        grey = rng.integers(0, 256, shape).astype(np.uint8)
        assert phash64(grey) == _imagehash_phash(grey)
        assert phash64(grey[:, ::-1]) == _imagehash_phash(grey[:, ::-1])  # a view with negative strides
    assert phash64(np.full((40, 40), 7, np.uint8)) == _imagehash_phash(np.full((40, 40), 7, np.uint8))  # flat: the DCT's rounding decides


def test_hash_manifest_same_rows_with_one_and_two_workers(odd_images):
    root = str(Path(odd_images[0]).parent)
    rels = [Path(p).name for p in odd_images]
    manifest = Manifest(pd.DataFrame({"image_id": rels, "path": rels, "patient_id": "p"}), root=root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = hash_manifest(manifest, workers=1)
        two = hash_manifest(manifest, workers=2)
        want = [reference(p) for p in odd_images]
    pd.testing.assert_frame_equal(one.manifest.frame, two.manifest.frame)
    frame = one.manifest.frame
    assert frame["file_sha256"].tolist() == [w[0] for w in want]
    assert frame["pixel_sha256"].fillna("").tolist() == [w[1] or "" for w in want]
    assert frame["phash"].astype("object").where(frame["phash"].notna(), None).tolist() == [w[2] for w in want]
    assert one.errors.equals(two.errors) and one.errors["path"].tolist() == ["junk.png"]
