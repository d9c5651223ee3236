"""Property-based test of the exit-code contract: every command, bad inputs and random options.

Each example builds one command line from a small valid world (images, manifest,
weights, allow list, audit report, key, tables, trees) made once per session, with
some inputs corrupted (Parquet bytes flipped or cut, metadata of the wrong shape,
columns dropped or retyped, labels and folds out of range, JSON documents mutated
at a random path) and random option values. Whatever it gets, a command must end
with 0 (or 1 for a check that ran and failed) or 2 with one ``Error:`` line, and
never show a traceback or an internal error (exit 3).

``MDPREP_FUZZ_EXAMPLES=500`` runs more examples per command than the default suite.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdprep.audit import audit
from mdprep.cli import main
from mdprep.manifest import Manifest, read_manifest, to_arrow, write_manifest
from mdprep.pseudonyms import write_key_file
from mdprep.splitting import split_manifest
from mdprep.synthetic import SHAPE_LABELS, write_dicom_tree, write_image_tree, write_nih_table, write_shapes_dataset
from mdprep.weights import compute_weights

EXAMPLES = int(os.environ.get("MDPREP_FUZZ_EXAMPLES", "20"))
#: Commands whose exit code 1 means a check ran and failed; every other command has no 1.
CHECK_COMMANDS = {"audit-leakage", "check", "validate"}


@dataclass(frozen=True)
class World:
    dir: Path
    images: Path
    manifest: Path
    table: pa.Table
    meta: dict
    weights: dict
    allow: list
    audit: dict
    key: Path
    nih: Path
    image_tree: Path
    dicom_tree: Path
    pretrained: dict  # name -> path of a candidate --pretrained file


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    return build_world(tmp_path_factory.mktemp("fuzz"))


def build_world(base: Path) -> World:
    """The valid inputs every example starts from (about a second to build)."""
    import torch

    from mdprep.training import build_model

    images = base / "images"
    frame = write_shapes_dataset(images, images=16, size=16, seed=0)
    rng = np.random.default_rng(0)
    frame["sex"] = np.where(np.arange(16) % 4 < 2, "M", "F")
    frame["age"] = rng.uniform(20, 80, 16).astype("float32")
    frame["study_date"] = [dt.date(2020, 1, 1) + dt.timedelta(days=int(d)) for d in rng.integers(0, 400, 16)]
    frame["view"] = np.where(np.arange(16) % 2 == 0, "PA", "AP")
    frame["emb0"], frame["emb1"] = rng.normal(size=16), rng.normal(size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny cohort has labels without positives in some parts
        m = split_manifest(Manifest(frame, labels=SHAPE_LABELS, root=str(images)), ratios=(0.5, 0.25, 0.25), folds=2, seed=0).manifest
    path = base / "m.parquet"
    write_manifest(m, path)
    m = read_manifest(path)
    key = base / "site.key"
    write_key_file(key)
    write_nih_table(base / "nih.csv", patients=3)
    pretrained = {}
    small = build_model("small", 2)
    for name, obj in {
        "small-2-labels": small.state_dict(),
        "checkpoint": {"model": small.state_dict(), "arch": "small"},
        "tensor": torch.zeros(3),
        "list": [1, 2, 3],
        "wrong-shapes": {k: torch.zeros(1) for k in small.state_dict()},
        "other-arch": {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 512)},
        "model-not-dict": {"model": "x"},
        "non-tensors": {"features.0.weight": "x"},
    }.items():
        torch.save(obj, base / f"{name}.pt")
        pretrained[name] = base / f"{name}.pt"
    (base / "text.pt").write_text("not a checkpoint\n")
    (base / "noise.pt").write_bytes(bytes(range(256)) * 4)
    pretrained.update(text=base / "text.pt", noise=base / "noise.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        weights = json.loads(json.dumps(compute_weights(m).document()))
        report = json.loads(audit(m.frame).to_json())
    return World(
        dir=base,
        images=images,
        manifest=path,
        table=pq.read_table(path),
        meta=m.metadata,
        weights=weights,
        allow=[{"check": "patient_overlap", "key": "S00000", "reason": "reviewed"}],
        audit=report,
        key=key,
        nih=base / "nih.csv",
        image_tree=Path(write_image_tree(base / "tree", patients=2, studies=1, shape=(8, 8)).root),
        dicom_tree=Path(write_dicom_tree(base / "dicom", patients=1, images_per_patient=2, shape=(4, 4), private_tags=2).root),
        pretrained=pretrained,
    )


# ----------------------------------------------------------------------------- value strategies

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8)
JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True), TEXT
)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(TEXT, c, max_size=3), max_leaves=6)
INTS = st.one_of(st.integers(-3, 6), st.sampled_from([2**31 - 1, 2**32 - 1, 2**32, 2**63, -(2**63) - 1, 10**20]))
NUMBERS = st.one_of(
    st.sampled_from(["0", "-1", "1e-3", "0.5", "1", "2", "100", "nan", "inf", "-inf", "1e400", "1e-320", "abc", ""]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


def _paths(doc) -> list[tuple]:
    """Every path (keys and indices) into a JSON document, the root included."""
    out = [()]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += [(k, *p) for p in _paths(v)]
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += [(i, *p) for p in _paths(v)]
    return out


def mutate_json(draw, doc):
    """``doc`` with one value (at a random path) replaced by random JSON, or deleted."""
    doc = json.loads(json.dumps(doc))
    path = draw(st.sampled_from(_paths(doc)))
    if not path:
        return draw(JSON_VALUES)
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    if draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(JSON_VALUES)
    return doc


def json_file(draw, doc, path: Path) -> str:
    """A JSON input: valid, mutated at 1-3 paths, random JSON, broken text, absent, or a folder."""
    kind = draw(st.sampled_from(["valid", "mutated", "mutated", "mutated", "random", "bytes", "missing", "folder"]))
    if kind == "missing":
        return str(path)
    if kind == "folder":
        path.mkdir()
        return str(path)
    if kind == "valid":
        data = json.dumps(doc).encode()
    elif kind == "mutated":
        for _ in range(draw(st.integers(1, 3))):
            doc = mutate_json(draw, doc)
        data = json.dumps(doc).encode()
    elif kind == "random":
        data = json.dumps(draw(JSON_VALUES)).encode()
    else:
        text = json.dumps(doc).encode()
        data = draw(st.one_of(st.just(text[: draw(st.integers(0, len(text)))]), st.binary(max_size=20), st.just(b"\xff\xfe{")))
    path.write_bytes(data)
    return str(path)


def _column(draw, n: int) -> pa.Array:
    """A column of ``n`` rows of a random type, tiled from 1-3 drawn values."""
    kinds = {
        "int": (st.integers(-(2**63), 2**63 - 1), pa.int64()),
        "int8": (st.integers(-128, 127), pa.int8()),
        "int16": (st.integers(-6, 6) | st.integers(-(2**15), 2**15 - 1), pa.int16()),
        "float": (st.floats(allow_nan=True, allow_infinity=True), pa.float64()),
        "text": (TEXT, pa.string()),
        "bool": (st.booleans(), pa.bool_()),
        "date": (st.dates(), pa.date32()),
        "timestamp": (st.datetimes(), pa.timestamp("us")),
        "binary": (st.binary(max_size=4), pa.binary()),
        "list": (st.lists(TEXT, max_size=2), pa.list_(pa.string())),
    }
    kind = draw(st.sampled_from([*kinds, "null", "dictionary", "struct"]))
    if kind == "null":
        return pa.nulls(n)
    if kind == "dictionary":
        values = draw(st.lists(st.none() | TEXT, min_size=1, max_size=3))
        return pa.array((values * n)[:n], pa.string()).dictionary_encode()
    if kind == "struct":
        return pa.array([{"a": i} for i in range(n)])
    elem, typ = kinds[kind]
    values = draw(st.lists(st.none() | elem, min_size=1, max_size=3))
    return pa.array((values * n)[:n], typ)


def manifest_file(draw, world: World, path: Path) -> str:
    """The world's manifest, or one corrupted in one or two ways."""
    table = world.table
    meta = world.meta
    raw_meta = None
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(
            st.sampled_from(["bytes", "truncate", "meta_key", "meta_doc", "meta_raw", "drop", "retype", "labels", "folds", "rows"])
        )
        if kind in ("bytes", "truncate"):
            data = bytearray(world.manifest.read_bytes())
            if kind == "truncate":
                data = data[: draw(st.integers(0, len(data) - 1))]
            else:
                # Mostly near the end: the footer and the metadata, where Parquet readers are most fragile.
                for _ in range(draw(st.integers(1, 6))):
                    at = draw(st.integers(max(0, len(data) - 3000), len(data) - 1) | st.integers(0, len(data) - 1))
                    data[at] ^= draw(st.integers(1, 255))
            path.write_bytes(bytes(data))
            return str(path)
        if kind == "meta_key" and isinstance(meta, dict):
            meta = json.loads(json.dumps(meta))
            key = draw(st.sampled_from(["labels", "history", "format_version", "root", "format"]))
            targeted = {
                "labels": st.sampled_from([["square", 1], ["square", "square"], ["absent"], ["image_id"], "square", {"a": 1}, [["square"]], [None], []]),
                "history": st.sampled_from([{}, [1], ["x"], [{"command": "split", "options": {"folds": "x"}}], [{"command": "split", "options": []}], [None]]),
                "format_version": st.sampled_from(["1", 1.5, None, [1], True, 2**70, -1, "x"]),
                "root": st.sampled_from([1, [], {}, True, "", "/nonexistent", str(world.dir / "m.parquet")]),
                "format": st.sampled_from([None, "other", 1]),
            }[key]
            if draw(st.booleans()):
                meta.pop(key, None)
            else:
                meta[key] = draw(targeted | JSON_VALUES)
        elif kind == "meta_doc":
            meta = mutate_json(draw, meta)
        elif kind == "meta_raw":
            raw_meta = draw(st.sampled_from([b"", b"{", b"\xff\xfe", b"[]", b"null", b"1", b'"x"', b"NaN"]))
        elif kind == "drop" and table.num_columns:
            table = table.drop_columns([draw(st.sampled_from(table.column_names))])
        elif kind == "retype" and table.num_columns:
            col = draw(st.sampled_from(table.column_names))
            i = table.column_names.index(col)
            table = table.set_column(i, col, _column(draw, table.num_rows))
        elif kind == "labels":
            col = draw(st.sampled_from(SHAPE_LABELS))
            if col in table.column_names:
                values = draw(st.lists(st.none() | st.integers(-128, 127), min_size=1, max_size=3))
                table = table.set_column(table.column_names.index(col), col, pa.array((values * table.num_rows)[: table.num_rows], pa.int8()))
        elif kind == "folds":
            values = draw(st.lists(st.none() | st.integers(-3, 5) | st.integers(-(2**15), 2**15 - 1), min_size=1, max_size=4))
            column = pa.array((values * table.num_rows)[: table.num_rows], pa.int16())
            if "fold" in table.column_names:
                table = table.set_column(table.column_names.index("fold"), "fold", column)
            else:
                table = table.append_column("fold", column)
        elif kind == "rows":
            n = draw(st.sampled_from([0, 1, 3]))
            table = table.slice(0, n) if n else table.slice(0, 0)
    if raw_meta is None:
        raw_meta = json.dumps(meta, allow_nan=True).encode()
    pq.write_table(table.replace_schema_metadata({b"mdprep": raw_meta}), path)
    return str(path)


def _opt(draw, name: str, values) -> list[str]:
    """``[name, value]`` about one time in four, else nothing (so that some examples get far)."""
    if draw(st.integers(0, 3)):
        return []
    v = draw(values)
    return [name, str(v)]


def _names(*extra) -> st.SearchStrategy:
    return st.sampled_from(["square", "circle", "stripes", "split", "fold", "sex", "age", "view", "patient_id", "image_id", "emb0", "absent", *extra]) | TEXT


# ----------------------------------------------------------------------------- command lines


def cmd_ingest_table(draw, w: World, d: Path) -> list[str]:
    table = str(w.nih)
    if draw(st.booleans()):
        data = bytearray(w.nih.read_bytes())
        kind = draw(st.sampled_from(["flip", "cut", "random"]))
        if kind == "flip":
            for _ in range(draw(st.integers(1, 5))):
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif kind == "cut":
            data = data[: draw(st.integers(0, len(data)))]
        else:
            data = bytearray(draw(st.binary(max_size=40)))
        table = str(d / draw(st.sampled_from(["t.csv", "t.csv.gz", "t.parquet", "t.tsv", "t"])))
        Path(table).write_bytes(bytes(data))
    preset = draw(st.sampled_from(["nih", "nih", "nih", "chexpert", "mimic", "generic"]))
    args = ["ingest", "table", table, "-o", str(d / "out.parquet"), "-q", "--preset", preset]
    args += _opt(draw, "--sep", st.sampled_from([",", ";", "\t", "||", ""]) | TEXT)
    args += _opt(draw, "--encoding", st.sampled_from(["utf-8", "latin-1", "utf-16", "no-such-codec", ""]))
    args += _opt(draw, "--image-col", st.sampled_from(["Image Index", "Patient ID"]) | TEXT)
    args += _opt(draw, "--patient-col", st.sampled_from(["Patient ID", "Image Index"]) | TEXT)
    args += _opt(draw, "--labels-col", st.sampled_from(["Finding Labels", "Patient Age"]) | TEXT)
    args += _opt(draw, "--label-cols", st.sampled_from(["Patient Age", "Follow-up #"]) | TEXT)
    args += _opt(draw, "--label-when", st.sampled_from(["A:Patient Gender==M", "A:x==", ":==", "A:Patient Age!=1"]) | TEXT)
    args += _opt(draw, "--blank", st.sampled_from(["missing", "negative", "A=negative", "=", "x"]) | TEXT)
    args += _opt(draw, "--col", st.sampled_from(["age=Patient Age", "sex=Patient Gender", "study_date=Patient Age", "fold=Patient Age", "split=View Position", "x=y", "="]) | TEXT)
    args += _opt(draw, "--aggregate", st.sampled_from(["error", "any", "majority", "all"]))
    args += _opt(draw, "--reader-col", st.sampled_from(["Patient Gender"]) | TEXT)
    if draw(st.booleans()):
        args += ["--label-map", draw(st.sampled_from(["cxr", "missing.json"])) if draw(st.booleans()) else json_file(draw, {"Effusion": "Pleural Effusion"}, d / "map.json")]
    return args


def _key_args(draw, w: World, d: Path) -> list[str]:
    kind = draw(st.sampled_from(["valid", "short", "missing", "folder", "binary"]))
    if kind == "valid":
        return ["--key-file", str(w.key)]
    p = d / "k.key"
    if kind == "short":
        p.write_text(draw(st.sampled_from(["abcd", "", "0" * 64])))
    elif kind == "folder":
        p.mkdir()
    elif kind == "binary":
        p.write_bytes(draw(st.binary(max_size=48)))
    return ["--key-file", str(p)]


def _path_map(draw, w: World, d: Path) -> list[str]:
    """``--path-map FILE`` (hash) about one time in four: a real map, or a damaged one."""
    if draw(st.integers(0, 3)):
        return []
    p = d / "paths.csv"
    paths = pq.read_table(w.manifest, columns=["path"]).column("path").to_pylist()
    kind = draw(st.sampled_from(["valid", "partial", "columns", "duplicate", "binary", "folder", "missing"]))
    if kind == "folder":
        p.mkdir()
    elif kind == "binary":
        p.write_bytes(draw(st.binary(max_size=30)))
    elif kind != "missing":
        rows = [(x, x) for x in paths]
        if kind == "partial":
            rows = rows[: draw(st.integers(0, len(rows) - 1))]
        elif kind == "duplicate":
            rows.append((paths[0], "../elsewhere.png"))
        header = "path,original_path" if kind != "columns" else "a,b"
        p.write_text("\n".join([header, *[f"{a},{b}" for a, b in rows]]) + "\n")
    return ["--path-map", str(p)]


def _pseudonymize_options(draw, w: World, d: Path) -> list[str]:
    args = ["--pseudonymize", *_key_args(draw, w, d)]
    args += _opt(draw, "--dates", st.sampled_from(["shift", "year", "drop"]))
    args += _opt(draw, "--paths", st.sampled_from(["auto", "pseudonymize", "keep", "drop"]))
    args += _opt(draw, "--keep-columns", st.sampled_from(["view", "modality", "absent", "patient_id"]) | TEXT)
    args += _opt(draw, "--drop-columns", st.sampled_from(["view", "study_date", "absent", "image_id"]) | TEXT)
    if draw(st.integers(0, 3)) == 0:
        args += ["--path-map", str(d / "paths.csv")]
    return args


def _files_from(draw, d: Path, names: list[str]) -> list[str]:
    if draw(st.booleans()):
        return []
    lines = draw(st.lists(st.sampled_from(names) | TEXT, max_size=4))
    p = d / "files.txt"
    p.write_bytes("\n".join(lines).encode("utf-8", "surrogateescape") + draw(st.sampled_from([b"", b"\n\xff\xfe"])))
    return ["--files-from", str(p)]


def cmd_ingest_images(draw, w: World, d: Path) -> list[str]:
    root = draw(st.sampled_from([str(w.image_tree), str(w.nih), str(d / "absent"), str(w.images)]))
    regex = draw(st.sampled_from([r"(?P<patient>patient\d+)/(?P<study>study\d+)", "(", "x", "(?P<patient>.)", "(?P<study>.)", "(?P<patient>)", ".*"]) | TEXT)
    args = ["ingest", "images", root, "--patient-regex", regex, "-o", str(d / "out.parquet"), "--workers", "1", "-q"]
    args += _files_from(draw, d, ["patient00000/study1/view1_frontal.png", "../x.png", "/etc/passwd", "", "nope.png"])
    if draw(st.booleans()):
        args += _pseudonymize_options(draw, w, d)
    return args


def cmd_ingest_dicom(draw, w: World, d: Path) -> list[str]:
    root = draw(st.sampled_from([str(w.dicom_tree), str(w.image_tree), str(d / "absent")]))
    args = ["ingest", "dicom", root, "-o", str(d / "out.parquet"), "--workers", "1", "-q"]
    args += _opt(draw, "--tags", st.sampled_from(["Manufacturer", "0018,1151", "(0010,0010)", "00100010", "ZZZZ,1", "Nope", ",", "PixelData"]) | TEXT)
    args += _opt(draw, "--missing-patient", st.sampled_from(["error", "skip", "use-study", "use-file"]))
    args += _files_from(draw, d, ["PAT00000/study0/img000.dcm", "../x.dcm", ""])
    if draw(st.booleans()):
        args += _pseudonymize_options(draw, w, d)
    return args


def cmd_split(draw, w: World, d: Path) -> list[str]:
    args = ["split", manifest_file(draw, w, d / "m.parquet"), "-o", str(d / "out.parquet"), "-q"]
    args += _opt(draw, "--ratios", st.sampled_from(["0.7,0.1,0.2", "0.5,0.5", "1", "0,1", "-1,2", "nan,1", "a,b", ",", "0.9"]) | TEXT)
    args += _opt(draw, "--names", st.sampled_from(["train,val,test", "a,a", "train", ","]) | TEXT)
    args += _opt(draw, "--folds", INTS)
    args += _opt(draw, "--seed", INTS)
    args += _opt(draw, "--group", _names())
    args += _opt(draw, "--stratify", _names())
    args += _opt(draw, "--stratify-by", st.sampled_from(["sex", "age", "age:10", "age:0,50,100", "age:x", "age:-1", "age:0", "view:5", "age:5,1"]) | _names())
    args += _opt(draw, "--missing-group", st.sampled_from(["error", "own-group"]))
    if draw(st.booleans()):
        args.append("--keep-existing")
    if draw(st.booleans()):
        args += ["--json", str(d / "split.json")]
    return args


def cmd_hash(draw, w: World, d: Path) -> list[str]:
    args = ["hash", manifest_file(draw, w, d / "m.parquet"), "-o", str(d / "out.parquet"), "--workers", "1", "-q"]
    args += _opt(draw, "--root", st.sampled_from([str(w.images), str(d / "absent"), str(w.nih)]))
    args += _opt(draw, "--max-bytes", st.sampled_from(["1", "2G", "0", "-1", "1.5G", "x", "10T", "99999999999999999999999T"]) | TEXT)
    if draw(st.booleans()):
        args.append("--allow-outside-root")
    return args + _path_map(draw, w, d)


def _audit_args(draw, w: World, d: Path, command: str) -> list[str]:
    manifests = [manifest_file(draw, w, d / f"m{i}.parquet") for i in range(draw(st.integers(1, 2)))]
    args = [command, *manifests, "-q", "--json", str(d / "audit.json")]
    args += _opt(draw, "--names", st.sampled_from(["a,b", "a", "a,a", ","]) | TEXT)
    args += _opt(draw, "--split-col", _names())
    args += _opt(draw, "--group", _names())
    args += _opt(draw, "--checks", st.sampled_from(["patient_overlap", "temporal", "same_person", "nope", ","]) | TEXT)
    args += _opt(draw, "--fail-on", st.sampled_from(["patient_overlap", "same_person", "nope"]) | TEXT)
    args += _opt(draw, "--require", st.sampled_from(["all", "patient_overlap", "near_duplicate,temporal", "nope"]) | TEXT)
    args += _opt(draw, "--threshold", INTS)
    args += _opt(draw, "--person-cols", st.sampled_from(["sex,age", "sex", "absent", ","]) | _names())
    args += _opt(draw, "--time-col", st.sampled_from(["study_date", "age", "sex"]) | _names())
    args += _opt(draw, "--train-split", st.sampled_from(["train", "test", "absent"]))
    if draw(st.booleans()):
        args.append("--temporal")
    if draw(st.booleans()):
        args += ["--allow", json_file(draw, w.allow, d / "allow.json")]
    if draw(st.booleans()):
        args += ["--junit", str(d / "a.xml"), "--markdown", str(d / "a.md")]
    return args


def cmd_audit_leakage(draw, w, d):
    return _audit_args(draw, w, d, "audit-leakage")


def cmd_check(draw, w, d):
    return _audit_args(draw, w, d, "check")


def cmd_weights(draw, w: World, d: Path) -> list[str]:
    args = ["weights", manifest_file(draw, w, d / "m.parquet"), "-o", str(d / "w.json"), "-q"]
    args += _opt(draw, "--split", st.sampled_from(["train", "val", "all", "absent"]) | TEXT)
    args += _opt(draw, "--split-col", _names())
    args += _opt(draw, "--scheme", st.sampled_from(["balanced", "frequency", "pos-weight", "effective"]))
    args += _opt(draw, "--beta", NUMBERS)
    args += _opt(draw, "--clip", NUMBERS)
    args += _opt(draw, "--labels", _names())
    if draw(st.booleans()):
        args.append("--sqrt")
    if draw(st.booleans()):
        args.append("--drop-empty")
    return args


def cmd_resample(draw, w: World, d: Path) -> list[str]:
    strategy = draw(st.sampled_from(["over", "under", "ml-ros", "ml-rus", "patient-cap", "smote", "adasyn"]))
    args = ["resample", manifest_file(draw, w, d / "m.parquet"), "-o", str(d / "out.parquet"), "--strategy", strategy, "-q"]
    args += _opt(draw, "--split", st.sampled_from(["train", "val", "all", "absent"]) | TEXT)
    args += _opt(draw, "--split-col", _names())
    args += _opt(draw, "--target", _names())
    args += _opt(draw, "--ratio", st.sampled_from(["auto", "minority", "0.5", "1", "2", "-1", "nan", "inf", "not majority"]) | NUMBERS)
    args += _opt(draw, "--percent", NUMBERS)
    args += _opt(draw, "--cap", INTS)
    args += _opt(draw, "--features", st.sampled_from(["emb0,emb1", "emb0", "sex", "age", "absent", "square"]) | _names())
    args += _opt(draw, "--seed", INTS)
    if draw(st.booleans()):
        args += ["--removed", str(d / draw(st.sampled_from(["r.csv", "r.parquet", "r.txt"])))]
    return args


def cmd_train(draw, w: World, d: Path) -> list[str]:
    args = ["train", manifest_file(draw, w, d / "m.parquet"), "-o", str(d / "run"), "--arch", "small", "--device", "cpu", "-q"]
    args += _opt(draw, "--root", st.sampled_from([str(w.images), str(d / "absent")]))
    # At most one bad numeric option, and mostly none, so that examples reach the inputs.
    bad = draw(st.sampled_from([None, None, None, None, "--epochs", "--image-size", "--batch-size", "--lr", "--seed", "--workers"]))
    options = {
        "--epochs": (st.just("1"), st.sampled_from(["0", "-1", "x"])),
        "--image-size": (st.just("16"), st.sampled_from(["8", "0", "-16", "1e9", "4097"])),
        "--batch-size": (st.sampled_from(["4", "8"]), st.sampled_from(["0", "-1", "99999999999999999999"])),
        "--lr": (st.sampled_from(["0.001", "0.1", "1"]), NUMBERS),
        "--seed": (st.integers(0, 3), INTS),
        "--workers": (st.just("0"), st.just("-1")),
    }
    for name, (good, wrong) in options.items():
        args += [name, str(draw(wrong if name == bad else good))]
    args += _opt(draw, "--augment", st.sampled_from(["cxr-safe", "none"]))
    if draw(st.booleans()):
        args += ["--weights", json_file(draw, w.weights, d / "w.json")]
    if draw(st.booleans()):
        args += ["--pretrained", str(draw(st.sampled_from(sorted(w.pretrained.values()))))]
    for flag in ("--freeze-backbone", "--evaluate-test", "--allow-leakage", "--skip-missing", "--hflip"):
        if draw(st.booleans()):
            args.append(flag)
    return args


def cmd_keygen(draw, w: World, d: Path) -> list[str]:
    target = draw(st.sampled_from(["new", "existing", "folder", "under-file"]))
    path = {"new": d / "new.key", "existing": w.key, "folder": d, "under-file": w.nih / "k.key"}[target]
    return ["keygen", "-o", str(path)]


def cmd_pseudonymize(draw, w: World, d: Path) -> list[str]:
    args = ["pseudonymize", manifest_file(draw, w, d / "m.parquet"), "-o", str(d / "out.parquet"), "-q", *_key_args(draw, w, d)]
    args += _opt(draw, "--columns", _names("study_date"))
    args += _opt(draw, "--dates", st.sampled_from(["shift", "year", "drop"]))
    args += _opt(draw, "--paths", st.sampled_from(["auto", "pseudonymize", "keep", "drop"]))
    args += _opt(draw, "--keep-columns", _names("study_date"))
    args += _opt(draw, "--drop-columns", _names("study_date"))
    if draw(st.booleans()):
        args += ["--path-map", str(d / "paths.csv")]
    if draw(st.booleans()):
        args.append("--no-cap-age")
    if draw(st.booleans()):
        args += ["--mapping", str(d / "map.csv")]
    return args


def cmd_validate(draw, w: World, d: Path) -> list[str]:
    return ["validate", "-q", *[manifest_file(draw, w, d / f"m{i}.parquet") for i in range(draw(st.integers(1, 2)))]]


def cmd_report(draw, w: World, d: Path) -> list[str]:
    args = ["report", manifest_file(draw, w, d / "m.parquet"), "-o", str(d / "r.html")]
    if draw(st.booleans()):
        args += ["--audit", json_file(draw, w.audit, d / "audit.json")]
    args += _opt(draw, "--title", TEXT)
    return args


def cmd_export(draw, w: World, d: Path) -> list[str]:
    fmt = draw(st.sampled_from(["monai", "hf", "csv"]))
    out = d / ("d.json" if fmt == "monai" and draw(st.booleans()) else "out")
    args = ["export", manifest_file(draw, w, d / "m.parquet"), "--format", fmt, "-o", str(out), "-q"]
    args += _opt(draw, "--root", st.sampled_from([str(w.images), str(d / "absent")]))
    args += _opt(draw, "--uncertain", st.sampled_from(["ignore", "zeros", "ones", "x"]))
    args += _opt(draw, "--missing", st.sampled_from(["ignore", "negative", "x"]))
    args += _opt(draw, "--columns", _names())
    for flag in ("--relative", "--allow-leakage"):
        if draw(st.booleans()):
            args.append(flag)
    return args


COMMANDS = {
    "ingest-table": cmd_ingest_table,
    "ingest-images": cmd_ingest_images,
    "ingest-dicom": cmd_ingest_dicom,
    "split": cmd_split,
    "hash": cmd_hash,
    "audit-leakage": cmd_audit_leakage,
    "check": cmd_check,
    "weights": cmd_weights,
    "resample": cmd_resample,
    "train": cmd_train,
    "keygen": cmd_keygen,
    "pseudonymize": cmd_pseudonymize,
    "validate": cmd_validate,
    "report": cmd_report,
    "export": cmd_export,
}


def run_command(world: World, data, name: str):
    """Draw one command line for ``name``, run it in a fresh folder; return (args, result)."""
    runner = CliRunner()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        args = COMMANDS[name](data.draw, world, d)
        result = runner.invoke(main, args)
        shutil.rmtree(d / "run", ignore_errors=True)
    return args, result


def contract_broken(name: str, result) -> str | None:
    """Why ``result`` breaks the exit-code contract, or None."""
    allowed = {0, 1, 2} if name in CHECK_COMMANDS else {0, 2}
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return f"exception escaped: {type(result.exception).__name__}: {result.exception}"
    if result.exit_code not in allowed:
        return f"exit code {result.exit_code}"
    if "Traceback" in result.output or "internal error" in result.stderr:
        return "traceback or internal error on stderr"
    if re.search(r"\.py:\d+: \w*Warning", result.stderr):
        return "a library's warning (with its source line) reached stderr"
    if result.exit_code == 2 and sum(line.startswith("Error:") for line in result.stderr.splitlines()) != 1:
        return "exit 2 without exactly one Error: line"
    return None


@pytest.mark.parametrize("name", list(COMMANDS))
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)
@given(data=st.data())
def test_every_command_keeps_the_exit_code_contract(world, name, data):
    args, result = run_command(world, data, name)
    why = contract_broken(name, result)
    assert why is None, f"mdprep {' '.join(args)}\n{why}\n{result.stderr}"
