"""The Arrow path of `ingest table` (nih and chexpert presets) gives the pandas path's bytes, or declines.

Every test builds look-alike NIH and CheXpert tables with the values real tables hold and
the ones they should not (blanks, -1/0/1/1.0, ids with zeros in front or white space
around, non-ASCII, quoted commas, a byte-order mark, CRLF line ends, repeated ids, bad
label lists, unknown sex spellings, ages as DICOM text), runs both paths, and requires
the Arrow path either to give the very same manifest bytes, report and summary, or to
decline (return None) so that the pandas path runs.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdprep.cli import main
from mdprep.errors import MdprepError, MdprepWarning
from mdprep.ingest import ingest_table
from mdprep.ingest.table_arrow import declined_reason, ingest_table_arrow
from mdprep.ingest.table_spec import CHEXPERT_LABELS
from mdprep.manifest import summarize, to_arrow, write_table

SRC = Path(__file__).resolve().parents[1] / "src"

NIH_HEADER = [
    "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender", "View Position",
    "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]",
]  # fmt: skip
CHEXPERT_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS]

#: Values the Arrow path reads exactly (it must not decline a table made of these).
NIH_CLEAN = {
    "labels": ["No Finding", "Mass|Nodule", "", "Hernia|COVID-19", "['Mass', \"Edema\"]", " Mass | Edema ", "nan", "Effusion|Pleural_Thickening",
               "|Mass||Mass|", "[]", "['Edema',]", "None", "pleural effusion"],
    "follow": ["0", "12", ""],
    "patient": ["00012", "12", "é7", "p,1", "中3"],
    "age": ["58", "", "7", "58.5", "-1"],
    "sex": ["M", "F", "male", " f ", "", "U", "unknown", "<NA>", "\u3000F", "m\t", "\u00a0O", "oTHer", "none"],
    "view": ["PA", "AP", "nan", "None", "", "LL"],
    "size": ["2500", "", "0"],
    "spacing": ["0.143", "", "NaN", "-0.0", "1e-3"],
}
#: Values that make it decline (the pandas path then speaks, or warns).
NIH_NASTY = {
    "labels": ["[Mass", "[['Mass']]"],
    "patient": [" 12", "12 ", ""],
    "age": ["058Y", "4x", "1e39", "inf"],
    "sex": ["x", "Ｍ"],
}
CHEXPERT_CLEAN = {
    "sex": ["Female", "Male", "", "Unknown"],
    "age": ["68", "", "0"],
    "fl": ["Frontal", "Lateral", "", "lateral"],
    "appa": ["AP", "PA", "", "LL"],
    "label": ["1.0", "0.0", "-1.0", "", "1", "0", "-1", "-0.0", "1e0"],
    "prefix": ["CheXpert-v1.0-small/train", "data/é", "x,y"],
}
CHEXPERT_NASTY = {"label": ["2", "yes", "0.5", " 1", "nan"], "prefix": ["nopatient", " lead"], "sex": ["Femme"], "age": ["1e39", "inf", "58Y"]}


def _write(path: Path, header, rows, *, bom=False, crlf=False) -> Path:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n" if crlf else "\n").writerows([header, *rows])
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + buf.getvalue().encode())
    return path


def _nih_rows(draw, pools, n):
    rows = []
    for i in range(n):
        pick = {k: draw(st.sampled_from(v)) for k, v in pools.items()}
        rows.append(
            [f"{i:08d}_{'é' if i % 3 == 0 else ''}{i % 2:03d}.png", pick["labels"], pick["follow"], pick["patient"], pick["age"],
             pick["sex"], pick["view"], pick["size"], pick["size"], pick["spacing"], pick["spacing"]]
        )  # fmt: skip
    return rows


def _chexpert_rows(draw, pools, n):
    rows = []
    for i in range(n):
        pick = {k: draw(st.sampled_from(v)) for k, v in pools.items() if k != "label"}
        labels = [draw(st.sampled_from(pools["label"])) for _ in CHEXPERT_LABELS]
        rows.append([f"{pick['prefix']}/patient{i // 3:05d}/study{i % 2 + 1}/view{i % 3}_frontal.jpg", pick["sex"], pick["age"], pick["fl"], pick["appa"], *labels])
    return rows


def _merged(clean, nasty):
    return {k: v + nasty.get(k, []) for k, v in clean.items()}


def _pandas(path, **options):
    """The pandas path: the manifest's bytes as the CLI writes them, the report, the summary; or the error."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = ingest_table(path, **options)
        except MdprepError as exc:
            return None, (type(exc).__name__, exc.message), caught
    buf = io.BytesIO()
    write_table(to_arrow(result.manifest), buf)
    return buf.getvalue(), result, caught


def _same_or_declined(path, **options) -> bool:
    """Both paths on one table: the Arrow path gives the pandas path's bytes, report and summary, or None. True: it gave them."""
    fast = ingest_table_arrow(path, **options)
    data, result, caught = _pandas(path, **options)
    if fast is None:
        return False
    assert data is not None, f"the Arrow path wrote a manifest where the pandas path says {result}"
    assert not caught, [str(w.message) for w in caught]
    buf = io.BytesIO()
    write_table(fast.table, buf)
    assert buf.getvalue() == data
    assert fast.report == result.report
    assert fast.summary() == summarize(result.manifest)
    return True


#: Options tried on each preset; those marked False the Arrow path declines even on clean tables.
_OPTIONS = {
    "nih": [
        ({}, True),
        ({"label_map": "cxr"}, True),
        ({"blank": ["negative"]}, True),
        ({"blank": ["negative", "No Finding=missing"], "uncertain": "ones"}, True),
        ({"uncertain": "ignore", "label_map": "cxr"}, True),
        ({"uncertain": "zeros", "blank": ["negative"], "label_map": "cxr"}, True),
        ({"columns": ["split=View Position"]}, True),
        ({"columns": ["view=Patient Gender", "accession=Image Index"]}, True),
        ({"columns": ["sex=View Position"]}, False),  # PA and AP are no sex
        ({"root": "/data/images"}, True),
    ],
    "chexpert": [
        ({}, True),
        ({"label_map": "cxr"}, True),
        ({"blank": ["negative"]}, True),
        ({"blank": ["negative", "no_finding=missing"], "uncertain": "ones"}, True),
        ({"uncertain": "ignore"}, True),
        ({"uncertain": "zeros", "blank": ["negative"], "label_map": "cxr"}, True),
        ({"columns": ["view=Frontal/Lateral"]}, True),
        ({"columns": ["split=AP/PA", "sop_uid=Path"]}, True),
    ],
}
#: Per preset: file name, header, row maker, the values it takes, the values it may decline.
_TABLES = {
    "nih": ("Data_Entry_2017.csv", NIH_HEADER, _nih_rows, NIH_CLEAN, NIH_NASTY),
    "chexpert": ("train.csv", CHEXPERT_HEADER, _chexpert_rows, CHEXPERT_CLEAN, CHEXPERT_NASTY),
}


@pytest.mark.parametrize("preset", ["nih", "chexpert"])
@settings(max_examples=25, deadline=None)
@given(data=st.data(), bom=st.booleans(), crlf=st.booleans(), nasty=st.booleans())
def test_arrow_path_gives_the_pandas_bytes_or_declines(tmp_path_factory, preset, data, bom, crlf, nasty):
    name, header, make_rows, clean, more = _TABLES[preset]
    options, takes_clean = data.draw(st.sampled_from(_OPTIONS[preset]))
    rows = make_rows(data.draw, _merged(clean, more) if nasty else clean, data.draw(st.integers(1, 12)))
    path = _write(tmp_path_factory.mktemp(preset) / name, header, rows, bom=bom, crlf=crlf)
    took = _same_or_declined(path, preset=preset, **options)
    if takes_clean and not nasty:
        assert took, declined_reason(path, preset=preset, **options)


def _clean_nih(tmp_path, n=30) -> Path:
    rows = []
    for i in range(n):
        rows.append(
            [f"{i:08d}_000.png", NIH_CLEAN["labels"][i % 8], str(i % 4), f"{i // 2:05d}", str(20 + i), NIH_CLEAN["sex"][i % 8],
             NIH_CLEAN["view"][i % 6], "2500", "2048", NIH_CLEAN["spacing"][i % 5], "0.143"]
        )  # fmt: skip
    return _write(tmp_path / "Data_Entry_2017.csv", NIH_HEADER, rows, bom=True, crlf=True)


def _clean_chexpert(tmp_path, n=30, extra=None) -> Path:
    rows = []
    for i in range(n):
        labels = [CHEXPERT_CLEAN["label"][(i + j) % 7] for j in range(len(CHEXPERT_LABELS))]
        rows.append([f"train/patient{i // 3:05d}/study{i % 2 + 1}/view{i % 3}.jpg", "Female" if i % 2 else "Male", str(30 + i),
                     "Lateral" if i % 3 == 2 else "Frontal", "" if i % 3 == 2 else "AP", *labels])  # fmt: skip
    header = list(CHEXPERT_HEADER)
    if extra:
        header += list(extra)
        rows = [r + [extra[c][i % len(extra[c])] for c in extra] for i, r in enumerate(rows)]
    return _write(tmp_path / "train.csv", header, rows)


@pytest.mark.parametrize(
    "edit, reason",
    [
        (lambda r: r[1].__setitem__(0, r[0][0]), "repeated image ids"),
        (lambda r: r[1].__setitem__(3, " 00001"), "patient_id is not stripped text"),
        (lambda r: r[1].__setitem__(3, ""), "missing identifiers"),
        (lambda r: r[1].__setitem__(1, "[Mass"), "malformed label lists"),
        (lambda r: r[1].__setitem__(5, "x"), "sex spellings that are not recognised"),
        (lambda r: r[1].__setitem__(4, "058Y"), "ages that are not numbers"),
    ],
)
def test_nih_inputs_the_arrow_path_declines(tmp_path, edit, reason):
    rows = list(csv.reader(io.StringIO(_clean_nih(tmp_path).read_bytes().decode("utf-8-sig"))))[1:]
    edit(rows)
    path = _write(tmp_path / "bad.csv", NIH_HEADER, rows)
    assert declined_reason(path, preset="nih") == reason
    assert not _same_or_declined(path, preset="nih")


def test_chexpert_inputs_and_options_the_arrow_path_declines(tmp_path):
    path = _clean_chexpert(tmp_path)
    assert declined_reason(path, preset="chexpert") is None
    assert declined_reason(path, preset="chexpert", aggregate="any") == "--label-when or --aggregate"
    assert declined_reason(path, preset="chexpert", columns=["age=Sex"]) == "--col for a column that pandas parses"
    assert declined_reason(path, preset="nih").startswith("MissingColumnError")
    assert declined_reason(path, preset="chexpert", uncertain="maybe").startswith("UsageError")
    assert declined_reason(path, preset="generic") == "preset 'generic'"
    for i, (extra, reason) in enumerate(
        (
            ({"view": ["x"]}, "column 'view' named like a column the preset makes"),
            ({"when": ["2020-01-01 10:00:00"]}, "a column of type timestamp[s]"),
            ({"fold": ["1"]}, "fold is parsed by pandas"),
        )
    ):
        (tmp_path / str(i)).mkdir()
        bad = _clean_chexpert(tmp_path / str(i), extra=extra)
        assert declined_reason(bad, preset="chexpert") == reason
        assert ingest_table_arrow(bad, preset="chexpert") is None


def test_chexpert_extra_columns_of_every_kept_type_read_alike(tmp_path):
    extra = {
        "note": ["a, b", "", "é"],
        "count": ["1", "", "3"],
        "score": ["0.5", "NaN", ""],
        "flag": ["true", "false", ""],
        "day": ["2020-01-01", "", "2021-12-31"],
        "empty": [""],
        "split": ["train", "test", ""],
    }
    path = _clean_chexpert(tmp_path, extra=extra)
    assert _same_or_declined(path, preset="chexpert", blank=["negative"]), declined_reason(path, preset="chexpert")


def test_parquet_compressed_and_zipped_tables_read_alike(tmp_path):
    nih = _clean_nih(tmp_path)
    table = pacsv.read_csv(nih, convert_options=pacsv.ConvertOptions(column_types={"Patient ID": pa.string()}))
    table = table.set_column(4, "Patient Age", table.column("Patient Age").cast(pa.int16()))
    pq.write_table(table, tmp_path / "nih.parquet")
    (tmp_path / "nih.csv.gz").write_bytes(gzip.compress(nih.read_bytes(), mtime=0))
    with zipfile.ZipFile(tmp_path / "nih.zip", "w") as zf:
        zf.write(nih, "Data_Entry_2017.csv")
    for path in (tmp_path / "nih.parquet", tmp_path / "nih.csv.gz", tmp_path / "nih.zip"):
        assert _same_or_declined(path, preset="nih", label_map="cxr"), declined_reason(path, preset="nih")


def _cli(runner, argv, monkeypatch, arrow: bool):
    if not arrow:
        monkeypatch.setattr("mdprep.ingest.table_arrow.ingest_table_arrow", lambda *a, **k: None)
    try:
        return runner.invoke(main, argv)
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize("quiet", [True, False])
def test_cli_output_is_the_same_on_both_paths(runner, tmp_path, monkeypatch, quiet):
    for table, preset, extra in ((_clean_nih(tmp_path), "nih", ["--label-map", "cxr"]), (_clean_chexpert(tmp_path), "chexpert", ["--blank", "negative"])):
        for target in ("m.parquet", "-"):
            outs = []
            for arrow in (True, False):
                out = tmp_path / f"{arrow}" / target if target != "-" else "-"
                if out != "-":
                    out.parent.mkdir(exist_ok=True)
                argv = ["ingest", "table", str(table), "--preset", preset, *extra, "-o", str(out) if out == "-" else target, *(["-q"] if quiet else [])]
                cwd = os.getcwd()
                os.chdir(out.parent if out != "-" else tmp_path)
                try:
                    res = _cli(runner, argv, monkeypatch, arrow)
                finally:
                    os.chdir(cwd)
                assert res.exit_code == 0, res.output
                data = out.read_bytes() if out != "-" else res.stdout_bytes
                outs.append((data, res.stdout_bytes, res.stderr))
            assert outs[0] == outs[1]
            assert quiet or "Labels" in outs[0][2]


def test_cli_errors_are_the_pandas_path_errors(runner, tmp_path):
    rows = list(csv.reader(io.StringIO(_clean_nih(tmp_path).read_bytes().decode("utf-8-sig"))))[1:]
    rows[2][0] = rows[1][0]
    rows[3][3] = ""
    path = _write(tmp_path / "bad.csv", NIH_HEADER, rows)
    res = runner.invoke(main, ["ingest", "table", str(path), "--preset", "nih", "-o", str(tmp_path / "m.parquet")])
    assert res.exit_code == 2
    assert "Error: " in res.stderr and "line 5" in res.stderr and "00000001_000.png" in res.stderr
    assert not (tmp_path / "m.parquet").exists()


_PROBE = """
import json, sys
from mdprep.cli import main
try:
    main(sys.argv[1:], prog_name="mdprep")
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "pandas": "pandas" in sys.modules}))
"""


def test_nih_and_chexpert_never_import_pandas(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    for table, preset, quiet in ((_clean_nih(tmp_path), "nih", []), (_clean_chexpert(tmp_path), "chexpert", ["-q"])):
        argv = ["ingest", "table", str(table), "--preset", preset, "--blank", "negative", "-o", str(tmp_path / f"{preset}.parquet"), *quiet]
        out = subprocess.run([sys.executable, "-c", _PROBE, *argv], env=env, capture_output=True, text=True, check=True)
        assert json.loads(out.stdout.strip().splitlines()[-1]) == {"code": 0, "pandas": False}, out.stderr
    argv = ["ingest", "table", str(table), "--preset", "chexpert", "--aggregate", "any", "-o", str(tmp_path / "agg.parquet"), "-q"]
    out = subprocess.run([sys.executable, "-c", _PROBE, *argv], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"code": 0, "pandas": True}


_EXIT_PROBE = """
import atexit, gc, json, sys
import pyarrow.parquet as pq
from mdprep.cli import main

def after():  # registered first, so it runs after the command's own exit hook
    rows = pq.ParquetFile(sys.argv[-2]).metadata.num_rows  # the manifest is complete and readable by now
    print(json.dumps({"gc_enabled": gc.isenabled(), "frozen": gc.get_freeze_count() > 0, "rows": rows}))

atexit.register(after)
main(sys.argv[1:], prog_name="mdprep")
"""


def test_ingest_table_exits_without_a_last_collection_after_writing(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    table = _clean_chexpert(tmp_path)
    argv = ["ingest", "table", str(table), "--preset", "chexpert", "-o", str(tmp_path / "m.parquet"), "-q"]
    out = subprocess.run([sys.executable, "-c", _EXIT_PROBE, *argv], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"gc_enabled": False, "frozen": True, "rows": 30}


def _regex_ids(paths: pa.Array):
    from mdprep.ingest import extract_groups_arrow
    from mdprep.ingest.table_spec import CHEXPERT_PATH

    parts, matched = extract_groups_arrow(paths, CHEXPERT_PATH)
    if not matched.all():
        return None
    return parts["patient"].to_pylist(), [f"{p}/{s}" for p, s in zip(parts["patient"].to_pylist(), parts["study"].to_pylist())]


@pytest.mark.parametrize(
    "paths, laid_out",
    [
        (["CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg", "CheXpert-v1.0-small/train/patient64540/study12/view2_lateral.jpg"], True),
        (["d/patient1/study2/x", "d/patient123456789/study3/"], True),  # ids of any length
        (["é/patient01/study1/v.jpg", "é/patient02/study10/w.jpg"], True),  # non-ASCII before the ids
        (["p/patient01/study1/patient02/study2/v"], True),  # the first match is the leftmost
        (["p/patient01/study1/v", "p/patient02/study1"], False),  # no '/' after the study (the last row)
        (["p/patient02/study1", "p/patient01/study1/v"], False),  # ... not the last
        (["p/patient01/study1/v", "p/patient/study1/v"], False),  # no digits
        (["p/patient01/study/v"], False),
        (["p/patient01x/study1/v"], False),
        (["p/patient01/stud1/v"], False),
        (["p/patient٣/study1/v"], False),  # not an ASCII digit
        (["p/patient01/study1/v", "q/patient01/study1/w"], False),  # another start
        (["p/patient1x/patient2/study3/v", "p/patient1/study3/w"], False),  # matches further on: the regex knows
        (["no ids here"], False),
    ],
)
def test_ids_read_from_the_bytes_are_the_regex_groups(paths, laid_out):
    from mdprep.ingest._arrow import strings
    from mdprep.ingest.table_arrow import _laid_out_ids, _patient_study

    arr = strings(paths)
    found = _laid_out_ids(arr)
    assert (found is not None) == laid_out
    regex = _regex_ids(arr)
    if found is not None:
        assert (found[0].to_pylist(), found[1].to_pylist()) == regex
    if regex is not None:  # whichever reads them, the groups are the regex's
        patient, study, _ = _patient_study(arr)
        assert (patient.to_pylist(), study.to_pylist()) == regex
    # a slice of a longer array (an offset into the buffers) reads alike
    longer = strings(["z", *paths])
    if laid_out:
        sliced = _laid_out_ids(longer.slice(1))
        assert (sliced[0].to_pylist(), sliced[1].to_pylist()) == regex


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.sampled_from(["", "x", "patient", "9", "/", "é"]), st.text("0123456789", max_size=4), st.sampled_from(["/study", "/stud", "study"]),
                  st.text("0123456789", max_size=3), st.sampled_from(["/", "", "/v.jpg"])),  # fmt: skip
        min_size=1,
        max_size=6,
    ),
)
def test_ids_read_from_the_bytes_never_differ_from_the_regex(rows):
    from mdprep.ingest._arrow import strings
    from mdprep.ingest.table_arrow import _laid_out_ids

    arr = strings([f"data/patient{a}{digits}{study}{n}{tail}" if a != "patient" else f"data/patient{digits}{study}{n}{tail}" for a, digits, study, n, tail in rows])
    found = _laid_out_ids(arr)
    if found is not None:
        assert (found[0].to_pylist(), found[1].to_pylist()) == _regex_ids(arr)


@pytest.mark.parametrize("arrow", [True, False])
def test_chexpert_column_named_like_a_preset_column(runner, tmp_path, monkeypatch, arrow):
    table = _clean_chexpert(tmp_path, extra={"view": ["x", "y"], "sex": ["M"], "patient_id": ["p"]})
    out = tmp_path / "m.parquet"
    res = _cli(runner, ["ingest", "table", str(table), "--preset", "chexpert", "-o", str(out)], monkeypatch, arrow)
    assert res.exit_code == 2, res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in res.output
    assert "'view', 'sex', 'patient_id'" in errors[0] and "rename them in the table" in errors[0]
    assert "--col view=view --col sex=sex" in errors[0] and "--col patient_id" not in errors[0]
    assert not out.exists()

    # Only a column --col cannot take is left: rename it.
    table = _clean_chexpert(tmp_path, extra={"path": ["a"]})
    res = _cli(runner, ["ingest", "table", str(table), "--preset", "chexpert", "-o", str(out)], monkeypatch, arrow)
    assert res.exit_code == 2 and "a column named 'path'" in res.stderr and "--col" not in res.stderr

    # --col view=view: the table's own view replaces the preset's, nothing is lost.
    table = _clean_chexpert(tmp_path, extra={"view": ["x", "y"]})
    res = _cli(runner, ["ingest", "table", str(table), "--preset", "chexpert", "--col", "view=view", "-o", str(out)], monkeypatch, arrow)
    assert res.exit_code == 0, res.output
    assert "--col replaced the preset's view" in res.stderr
    assert pq.read_table(out).column("view").to_pylist()[:3] == ["x", "y", "x"]
    # Without AP/PA the preset makes no view: the table's column is the view, as before.
    rows = list(csv.reader(io.StringIO(table.read_text())))
    keep = [i for i, name in enumerate(rows[0]) if name != "AP/PA"]
    table = _write(tmp_path / "no-appa.csv", [rows[0][i] for i in keep], [[r[i] for i in keep] for r in rows[1:]])
    res = _cli(runner, ["ingest", "table", str(table), "--preset", "chexpert", "-o", str(out)], monkeypatch, arrow)
    assert res.exit_code == 0, res.output
    assert pq.read_table(out).column("view").to_pylist()[:2] == ["x", "y"]


def test_mimic_metadata_column_named_like_a_preset_column(tmp_path):
    from mdprep.errors import InputError
    from mdprep.synthetic import write_mimic_tables

    lab, meta = tmp_path / "chexpert.csv", tmp_path / "metadata.csv"
    write_mimic_tables(lab, meta, patients=3)
    rows = list(csv.reader(io.StringIO(meta.read_text())))
    _write(meta, [*rows[0], "path"], [[*r, "x.dcm"] for r in rows[1:]])
    with pytest.raises(InputError, match=r"metadata.csv has a column named 'path', a column the mimic preset makes"), warnings.catch_warnings():
        warnings.simplefilter("ignore", MdprepWarning)  # the synthetic tables' labelled study without images
        ingest_table(lab, preset="mimic", metadata=meta)


def test_numpy_is_imported_without_blas_threads_and_the_environment_left_as_it_was():
    """`ingest table` imports numpy with one OpenBLAS thread (no spinning workers); later processes see the user's environment."""
    code = (
        "import os, sys\n"
        "from mdprep._lazy import import_numpy_single_threaded\n"
        "if sys.argv[1] == 'single': import_numpy_single_threaded()\n"
        "import numpy\n"
        "print(len(os.listdir('/proc/self/task')), os.environ.get('OPENBLAS_NUM_THREADS'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = str(SRC)

    def threads(mode, **more):
        out = subprocess.run([sys.executable, "-c", code, mode], env={**env, **more}, capture_output=True, text=True, check=True).stdout.split()
        return int(out[0]), out[1]

    single, plain = threads("single"), threads("plain")
    assert single == (1, "None")  # the main thread alone, and the variable gone again
    assert plain[0] >= single[0]
    # A thread count the user set is theirs.
    assert threads("single", OPENBLAS_NUM_THREADS="2") == threads("plain", OPENBLAS_NUM_THREADS="2")


@pytest.mark.parametrize("preset", ["nih", "chexpert"])
def test_one_thread_or_two_give_the_same_manifest(tmp_path, monkeypatch, preset):
    """On a busy machine the Arrow path runs in one thread (and reads with one): the same bytes, report and errors."""
    import mdprep.ingest.table_arrow as ta

    table = _clean_nih(tmp_path) if preset == "nih" else _clean_chexpert(tmp_path)
    bad = _write(tmp_path / "bad.csv", *((NIH_HEADER, []) if preset == "nih" else (CHEXPERT_HEADER, [])))
    results = []
    for spare in (True, False):
        monkeypatch.setattr(ta, "_spare_core", lambda spare=spare: spare)
        got = ingest_table_arrow(table, preset=preset, blank=["negative"], uncertain="ones")
        out = tmp_path / f"{spare}.parquet"
        write_table(got.table, out)
        results.append((out.read_bytes(), got.report, got.summary(), declined_reason(bad, preset=preset)))
    assert results[0] == results[1]
    assert results[0][3].startswith("EmptyInputError")


def test_work_run_in_this_thread_raises_when_waited_for(monkeypatch):
    import mdprep.ingest.table_arrow as ta

    for spare in (True, False):
        monkeypatch.setattr(ta, "_spare_core", lambda spare=spare: spare)
        wait = ta._background(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            wait()
        assert ta._background(lambda x: x + 1, 1)() == 2
