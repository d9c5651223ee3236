"""One CLI grammar: the options commands share have one spelling, one help text and one default.

The test walks the whole click command tree, so a new command or option is checked the
day it is added. Where a shared option name means something else on one command, the
exception is listed below with the reason, and the help says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest

from mdprep.cli import main
from mdprep.cli._options import JSON_HELP, QUIET_HELP, SEED_HELP, WORKERS_HELP
from mdprep.synthetic import write_image_tree, write_nih_table


def _commands(group: click.Group = main, path: tuple[str, ...] = ()):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*path, name))
        else:
            yield " ".join((*path, name)), cmd


COMMANDS = dict(_commands())


def _options(cmd: click.Command) -> dict[str, click.Option]:
    return {p.name: p for p in cmd.params if isinstance(p, click.Option) and not p.hidden}


#: Commands whose one main output is -o/--output (a file, or a folder for train and demo).
WRITERS = {
    "ingest dicom", "ingest images", "ingest table", "hash", "split", "weights", "resample", "pseudonymize",
    "export", "report", "train", "keygen", "demo",
}  # fmt: skip
#: Commands that summarise on stderr and can write that summary (or their report) as JSON.
SUMMARISERS = {
    "ingest dicom", "ingest images", "ingest table", "validate", "hash", "split", "weights", "resample", "check",
    "audit-leakage", "pseudonymize", "export",
}  # fmt: skip

#: (command, option) pairs that keep a help text of their own, and why.
OWN_HELP = {
    ("train", "seed"): "a training run is reproducible on the CPU only",
    ("train", "workers"): "the data loader's processes, 0 by default (said in its help)",
    ("demo", "seed"): "the seed of the generated cohort",
    ("train", "train_split"): "the split that trains, vs the audit's temporal reference",
    ("split", "group"): "the grouping the split keeps whole, vs the column patient_overlap checks",
    ("split", "names"): "part names, vs the split names of several manifests",
    ("split", "person_cols"): "the columns of --link same_person",
    ("weights", "fold"): "the fold whose training rows are counted, vs the fold train validates on",
    ("weights", "split"): "the rows to count, vs the split resample changes",
    ("weights", "split_col"): "one manifest's split column; the audit's takes several manifests",
    ("resample", "split_col"): "one manifest's split column; the audit's takes several manifests",
    ("train", "allow_leakage"): "what train refuses differs from what export refuses",
    ("ingest table", "uncertain"): "how ingest stores -1, vs how export writes it",
    ("hash", "errors_path"): "the files that could not be hashed",
    ("hash", "path_map"): "hash reads the path map; ingest and pseudonymize write one",
    ("train", "path_map"): "train reads the path map; ingest and pseudonymize write one",
    ("pseudonymize", "columns"): "identifier columns, vs the columns export carries",
    ("ingest table", "image_root"): "the root ingest records in the manifest, vs the root the readers look in",
}
#: (command, option) pairs spelled with one more alias, and why.
OWN_SPELLING: dict[tuple[str, str], str] = {}
#: Options whose pseudonymize-only meaning is prefixed "With --pseudonymize:" on the ingest commands.
PSEUDONYMIZE_SHARED = {"dates", "paths", "path_map", "keep_columns", "drop_columns"}


def test_every_command_takes_quiet_with_one_meaning():
    for name, cmd in COMMANDS.items():
        q = _options(cmd).get("quiet")
        assert q is not None, f"{name} has no -q/--quiet"
        assert q.opts == ["-q", "--quiet"] and q.is_flag and q.help == QUIET_HELP, name


def test_every_main_output_is_dash_o_output():
    assert WRITERS <= set(COMMANDS)
    for name in WRITERS:
        o = _options(COMMANDS[name]).get("output")
        assert o is not None and o.opts == ["-o", "--output"] and o.help, f"{name}: no -o/--output"
    for name in set(COMMANDS) - WRITERS:
        assert "output" not in _options(COMMANDS[name]), f"{name} writes a main output: add it to WRITERS"
    # No command spells an output another way (the former --out and --report are hidden aliases).
    for name, cmd in COMMANDS.items():
        assert not {"--out", "--report", "--out-dir"} & {o for p in _options(cmd).values() for o in p.opts}, name


def test_every_summarising_command_writes_json_the_same_way():
    for name in SUMMARISERS:
        j = _options(COMMANDS[name]).get("json_path")
        assert j is not None, f"{name} has no --json"
        assert j.opts == ["--json"] and j.metavar == "FILE" and j.help == JSON_HELP, name


def _long(opt: click.Option) -> str:
    return next(o for o in opt.opts if o.startswith("--"))


def test_shared_options_have_one_spelling_help_and_default():
    uses: dict[str, list[tuple[str, click.Option]]] = {}
    for name, cmd in COMMANDS.items():
        for opt in _options(cmd).values():
            uses.setdefault(_long(opt), []).append((name, opt))
    checked = 0
    for flag, where in uses.items():
        if len(where) < 2 or flag == "--output":  # -o's help says what each command writes
            continue
        spellings = {tuple(o.opts + o.secondary_opts) for n, o in where if (n, o.name) not in OWN_SPELLING}
        assert len(spellings) == 1, f"{flag} is spelled {spellings}"
        common = [(n, o) for n, o in where if (n, o.name) not in OWN_HELP]
        if where[0][1].name in PSEUDONYMIZE_SHARED:
            common = [(n, o) for n, o in common if n != "pseudonymize"]
        helps = {o.help for _, o in common}
        defaults = {repr(o.default) for _, o in common}
        assert len(helps) <= 1, f"{flag} has {len(helps)} help texts: {sorted(helps)}"
        assert len(defaults) <= 1, f"{flag} has defaults {defaults} on {[n for n, _ in common]}"
        checked += 1
    assert checked >= 20, checked
    # Every listed exception is still real (a stale entry would hide a new drift).
    for name, param in OWN_HELP:
        assert param in _options(COMMANDS[name]), (name, param)
    assert {n for n, o in uses["--seed"] if o.help == SEED_HELP} == {"split", "resample"}
    assert {n for n, o in uses["--workers"] if o.help == WORKERS_HELP and o.default is None} == {"ingest dicom", "ingest images", "hash"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from click.testing import CliRunner

    d = tmp_path_factory.mktemp("grammar")
    write_nih_table(d / "t.csv", patients=12)
    runner = CliRunner()
    for argv in (["ingest", "table", str(d / "t.csv"), "--preset", "nih", "-o", str(d / "m.parquet"), "-q"],
                 ["split", str(d / "m.parquet"), "--ratios", "0.5,0.25,0.25", "-o", str(d / "s.parquet"), "-q"]):  # fmt: skip
        assert runner.invoke(main, argv).exit_code == 0
    return d


def _json(runner, argv, code=0) -> dict:
    res = runner.invoke(main, [*argv, "--json", "-"])
    assert res.exit_code == code, res.output
    doc = json.loads(res.stdout)
    return doc


def test_json_summaries_say_what_stderr_says(runner, cohort, tmp_path):
    d = cohort
    doc = _json(runner, ["ingest", "table", str(d / "t.csv"), "--preset", "nih", "-o", str(tmp_path / "m.parquet"), "-q"])
    assert doc["schema"] == "mdprep-summary" and doc["version"] == 1 and doc["command"] == "ingest table"
    c = doc["counts"]
    assert doc["reconciles"] and c["found"] == c["ingested"] + c["skipped"] + c["failed"] + c["aggregated"] + c["dropped"]
    assert doc["manifest"]["rows"] == c["ingested"] and {x["label"] for x in doc["manifest"]["labels"]} >= {"Hernia", "Effusion"}
    # The pandas path (--aggregate) gives the same summary as the Arrow path.
    slow = _json(runner, ["ingest", "table", str(d / "t.csv"), "--preset", "nih", "--aggregate", "any",
                          "-o", str(tmp_path / "m2.parquet"), "-q"])  # fmt: skip
    assert {k: v for k, v in slow.items() if k not in ("output", "notes")} == {k: v for k, v in doc.items() if k not in ("output", "notes")}

    doc = _json(runner, ["validate", str(d / "s.parquet"), "-q"])
    assert doc["valid"] and doc["manifests"][0]["rows"] == c["ingested"]

    w = _json(runner, ["weights", str(d / "s.parquet"), "-o", str(tmp_path / "w.json"), "-q"])
    written = json.loads((tmp_path / "w.json").read_text())
    assert w["rows"] == written["rows"] and [x["label"] for x in w["labels"]] == written["labels"]

    r = _json(runner, ["resample", str(d / "s.parquet"), "--strategy", "ml-ros", "--percent", "20", "-o", str(tmp_path / "r.parquet"), "-q"])
    assert r["after"]["rows"] > r["before"]["rows"] and r["removed"] == 0
    assert r["percent_reached"] > 0 and (r["stop_reason"] is None or r["percent_reached"] < 20)

    sp = _json(runner, ["split", str(d / "m.parquet"), "-o", str(tmp_path / "s.parquet"), "-q"])
    assert sp["schema"] == "mdprep-split-report"

    au = _json(runner, ["check", str(d / "s.parquet"), "-q"])
    assert au["schema"] == "mdprep-audit-report" and au["exit_code"] == 0


def test_hash_and_pseudonymize_summaries(runner, tmp_path):
    root = tmp_path / "imgs"
    write_image_tree(root, patients=3, studies=1, seed=0, plant_bad_files=False)
    regex = r"(?P<patient>patient\d+)/(?P<study>study\d+)/"
    m = tmp_path / "m.parquet"
    doc = _json(runner, ["ingest", "images", str(root), "--patient-regex", regex, "-o", str(m), "--workers", "1", "-q"])
    assert doc["command"] == "ingest images" and doc["counts"]["ingested"] == doc["manifest"]["rows"] > 0
    h = _json(runner, ["hash", str(m), "-o", str(tmp_path / "h.parquet"), "--workers", "1", "-q", "--record-signatures"])
    assert h["images"] == h["hashed"] + h["failed"] == doc["manifest"]["rows"] and h["update"] is None
    h2 = _json(runner, ["hash", str(m), "--update", str(tmp_path / "h.parquet"), "-o", str(tmp_path / "h2.parquet"), "--workers", "1", "-q"])
    assert h2["update"]["unchanged"] + h2["update"]["read"] == h["images"] and h2["update"]["new"] == 0
    key = tmp_path / "k.key"
    assert runner.invoke(main, ["keygen", "-o", str(key), "-q"]).exit_code == 0
    p = _json(runner, ["pseudonymize", str(m), "--key-file", str(key), "-o", str(tmp_path / "p.parquet"), "-q"])
    assert {c["column"] for c in p["columns"]} >= {"patient_id", "image_id"}
    # Names and treatments only: no raw identifier is in the summary.
    assert "patient0" not in json.dumps(p)


def test_check_reports_a_broken_contract_in_every_report_file(runner, cohort, tmp_path):
    import pyarrow.parquet as pq

    t = pq.read_table(cohort / "s.parquet")
    broken = tmp_path / "broken.parquet"
    pq.write_table(t.set_column(t.schema.get_field_index("image_id"), "image_id", t.column("patient_id")), broken)
    out = {k: tmp_path / f"r.{k}" for k in ("json", "junit", "markdown")}
    res = runner.invoke(main, ["check", str(broken), *[a for k, p in out.items() for a in (f"--{k}", str(p))]])
    assert res.exit_code == 1
    doc = json.loads(out["json"].read_text())
    assert doc["result"] == "failed" and doc["exit_code"] == 1 and doc["checks"] == []
    assert doc["contract"] and all(v["path"] == str(broken) for v in doc["contract"])
    assert 'failures="1"' in out["junit"].read_text() and "break the contract" in out["markdown"].read_text()


def test_former_option_names_still_work_with_a_warning(runner, cohort, tmp_path):
    d = cohort
    res = runner.invoke(main, ["split", str(d / "m.parquet"), "-o", str(tmp_path / "a.parquet"), "--report", str(tmp_path / "a.json"), "-q"])
    assert res.exit_code == 0 and "Warning: --report is deprecated" in res.stderr
    assert json.loads((tmp_path / "a.json").read_text())["schema"] == "mdprep-split-report"
    res = runner.invoke(main, ["split", str(d / "m.parquet"), "-o", str(tmp_path / "b.parquet"), "--report", "x.json", "--json", "y.json"])
    assert res.exit_code == 2 and "give --json only" in res.stderr and not Path("x.json").exists()
    res = runner.invoke(main, ["keygen", str(tmp_path / "old.key"), "-q"])
    assert res.exit_code == 0 and (tmp_path / "old.key").exists() and res.stderr == ""
    res = runner.invoke(main, ["keygen"])
    assert res.exit_code == 2 and "Missing option '-o' / '--output'" in res.stderr
    res = runner.invoke(main, ["train", str(d / "s.parquet")])
    assert res.exit_code == 2 and "Missing option -o/--output" in res.stderr
    for name, hidden in (("split", "--report "), ("train", "--out "), ("demo", "--out ")):
        assert hidden not in runner.invoke(main, [name, "--help"]).stdout


def _keys(value, data_keyed=("not_ingested", "invalid_values", "invalid_examples")) -> set[str]:
    """Every key of a summary, nested ones included; the keys of the dicts keyed by data (a column, an error type) are not fields."""
    if isinstance(value, list):
        return set().union(*(_keys(v) for v in value)) if value else set()
    if not isinstance(value, dict):
        return set()
    out = set(value)
    for k, v in value.items():
        if k not in data_keyed:
            out |= _keys(v)
    return out


def _documented_fields() -> dict[str, set[str]]:
    """docs/cli.md's table of mdprep-summary fields: command -> every field name it gives in backquotes."""
    import re

    text = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()
    table = text[text.index("| command | fields |"):]
    table = table[: table.index("\n\n")]
    fields = {}
    for row in table.splitlines()[2:]:
        commands, cell = row.strip("|").split("|", 1)
        names = set(re.findall(r"`([a-z_]+)`", cell))
        for command in re.findall(r"`([a-z ]+)`", commands):
            fields[command] = names
    return fields


def _broken(d: Path, tmp_path: Path, name: str = "broken.parquet") -> Path:
    """The split manifest of ``d`` with duplicate image ids (patient ids copied over them): it breaks the contract."""
    import pyarrow.parquet as pq

    t = pq.read_table(d / "s.parquet")
    path = tmp_path / name
    pq.write_table(t.set_column(t.schema.get_field_index("image_id"), "image_id", t.column("patient_id")), path)
    return path


def test_docs_list_exactly_the_fields_each_summary_writes(runner, cohort, tmp_path):
    """docs/cli.md cannot drift from mdprep.summaries: every documented field is written, every written field documented."""
    from dataclasses import fields as dc_fields

    from mdprep.incremental import UpdateCounts
    from mdprep.ingest.series import SeriesSummary

    d = cohort
    common = {"schema", "version", "command", "output"}
    root = tmp_path / "imgs"
    write_image_tree(root, patients=2, studies=1, seed=0, plant_bad_files=False)
    m = tmp_path / "m.parquet"
    key = tmp_path / "k.key"
    assert runner.invoke(main, ["keygen", "-o", str(key), "-q"]).exit_code == 0
    hashed = tmp_path / "h.parquet"
    real = {
        "ingest table": _json(runner, ["ingest", "table", str(d / "t.csv"), "--preset", "nih", "-o", str(tmp_path / "t.parquet"), "-q"]),
        "ingest images": _json(runner, ["ingest", "images", str(root), "--patient-regex", r"(?P<patient>patient\d+)/", "-o", str(m), "--workers", "1", "-q"]),
        "validate": _json(runner, ["validate", str(d / "s.parquet"), str(_broken(d, tmp_path)), "-q"], code=1),
        "weights": _json(runner, ["weights", str(d / "s.parquet"), "-o", str(tmp_path / "w.json"), "-q"]),
        "resample": _json(runner, ["resample", str(d / "s.parquet"), "--strategy", "ml-ros", "-o", str(tmp_path / "r.parquet"), "-q"]),
        "pseudonymize": _json(runner, ["pseudonymize", str(m), "--key-file", str(key), "-o", str(tmp_path / "p.parquet"), "-q"]),
        "export": _json(runner, ["export", str(d / "s.parquet"), "--format", "csv", "--relative", "-o", str(tmp_path / "csv"), "-q"]),
    }
    assert runner.invoke(main, ["hash", str(m), "-o", str(hashed), "--workers", "1", "-q", "--record-signatures"]).exit_code == 0
    real["hash"] = _json(runner, ["hash", str(m), "--update", str(hashed), "-o", str(tmp_path / "h2.parquet"), "--workers", "1", "-q"])
    documented = _documented_fields()
    assert set(documented) == set(real) | {"ingest dicom"}
    # Fields of a series-level or incremental ingest (null here) come from the objects they are made of.
    nested = {f.name for f in dc_fields(SeriesSummary)} | {f.name for f in dc_fields(UpdateCounts)} | {"read"}
    written = {command: _keys(doc) - common for command, doc in real.items()}
    for command in ("ingest table", "ingest images"):  # one row of the table: the union (an image tree has no labels)
        assert real[command]["series"] is None and real[command]["update"] is None
        written[command] = written["ingest table"] | written["ingest images"] | nested
    for command, names in written.items():
        assert documented[command] == names, (command, documented[command] ^ names)
    assert documented["ingest dicom"] == documented["ingest table"]


def test_empty_paths_are_usage_errors(runner, cohort, tmp_path):
    """``--json "$UNSET"`` used to write nothing and exit 0; ``-o ""`` failed on a temporary file's name."""
    d = cohort
    for argv in (
        ["validate", str(d / "s.parquet"), "--json", ""],
        ["weights", str(d / "s.parquet"), "-o", str(tmp_path / "w.json"), "--json", ""],
        ["check", str(d / "s.parquet"), "--json", ""],
        ["ingest", "table", str(d / "t.csv"), "--preset", "nih", "-o", ""],
        ["split", str(d / "m.parquet"), "-o", str(tmp_path / "x.parquet"), "--report", ""],
        ["keygen", "-o", ""],
    ):
        res = runner.invoke(main, argv)
        assert res.exit_code == 2 and "the path is empty" in res.stderr, (argv, res.output)
    assert not (tmp_path / "w.json").exists() and not (tmp_path / "x.parquet").exists()


def test_check_contract_reports_stay_valid_with_any_file_name(runner, cohort, tmp_path):
    """A manifest named with XML and Markdown specials and a control character: the JUnit file parses, the Markdown is literal."""
    import xml.etree.ElementTree as ET

    broken = _broken(cohort, tmp_path, 'a<&"`|x]]>\x01.parquet')
    out = {k: tmp_path / f"r.{k}" for k in ("json", "junit", "markdown")}
    res = runner.invoke(main, ["check", str(broken), str(cohort / "s.parquet"), *[a for k, p in out.items() for a in (f"--{k}", str(p))]])
    assert res.exit_code == 1 and "\x01" not in res.stderr and "\\x01.parquet" in res.stderr
    suite = ET.parse(out["junit"]).getroot()
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert suite.get("failures") == "1" and cases[str(tmp_path / 'a<&"`|x]]>\\x01.parquet')].find("failure") is not None
    assert cases[str(cohort / "s.parquet")].find("failure") is None
    md = out["markdown"].read_text()
    assert "a&lt;&amp;\"\\`\\|x\\]\\]&gt;\\\\x01.parquet" in md and "`" not in md.replace("\\`", "")
    assert json.loads(out["json"].read_text())["contract"][0]["path"] == str(broken)


def test_pseudonymized_ingest_notes_quote_no_identifier(runner, tmp_path):
    """A note of the DICOM ingest quoted a raw StudyInstanceUID, on stderr and in --json, with --pseudonymize."""
    import pydicom

    from mdprep.synthetic import write_dicom_tree

    root = tmp_path / "dcm"
    write_dicom_tree(root, patients=1, images_per_patient=3, shape=(8, 8), seed=0, private_tags=0)
    files = sorted(root.rglob("*.dcm"))
    study = pydicom.dcmread(files[0]).StudyInstanceUID
    for i, f in enumerate(files):  # one study, two PatientIDs and a file without one: the note quotes the study
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID = study
        if i < 2:
            ds.PatientID = ["ALICE_SMITH", "BOB_JONES"][i]
        else:
            del ds.PatientID
        ds.save_as(f)
    key = tmp_path / "k.key"
    assert runner.invoke(main, ["keygen", "-o", str(key), "-q"]).exit_code == 0
    argv = ["ingest", "dicom", str(root), "--missing-patient", "study", "--workers", "1", "--pseudonymize", "--key-file", str(key)]
    res = runner.invoke(main, [*argv, "-o", str(tmp_path / "p.parquet"), "--json", str(tmp_path / "p.json")])
    assert res.exit_code == 0, res.output
    summary = (tmp_path / "p.json").read_text()
    assert "several PatientIDs" in summary and "several PatientIDs" in res.stderr  # the note is kept, its value is not
    for raw in (study, "ALICE_SMITH", "BOB_JONES"):
        assert raw not in summary and raw not in res.output
    # Without --pseudonymize the note names the study, as before.
    res = runner.invoke(main, [*argv[:7], "-o", str(tmp_path / "r.parquet"), "--json", "-", "-q"])
    assert res.exit_code == 0 and study in json.loads(res.stdout)["notes"][0]


def test_quiet_prints_no_note(runner, cohort, tmp_path):
    """-q promises no notes: weights --drop-empty and pseudonymize printed theirs anyway (the --json summary keeps them)."""
    res = runner.invoke(main, ["weights", str(cohort / "s.parquet"), "--drop-empty", "-o", str(tmp_path / "w.json"), "--json", str(tmp_path / "s.json"), "-q"])
    assert res.exit_code == 0 and "Note:" not in res.stderr
    assert any("left out (--drop-empty)" in n for n in json.loads((tmp_path / "s.json").read_text())["notes"])
    assert "Note: label" in runner.invoke(main, ["weights", str(cohort / "s.parquet"), "--drop-empty", "-o", str(tmp_path / "w2.json")]).stderr
    root = tmp_path / "imgs"
    write_image_tree(root, patients=2, studies=1, seed=0, plant_bad_files=False)
    m = tmp_path / "m.parquet"
    key = tmp_path / "k.key"
    assert runner.invoke(main, ["ingest", "images", str(root), "--patient-regex", r"(?P<patient>patient\d+)/", "-o", str(m), "--workers", "1", "-q"]).exit_code == 0
    assert runner.invoke(main, ["keygen", "-o", str(key), "-q"]).exit_code == 0
    res = runner.invoke(main, ["pseudonymize", str(m), "--key-file", str(key), "-o", str(tmp_path / "p.parquet"), "-q"])
    assert res.exit_code == 0 and res.stderr == ""
    res = runner.invoke(main, ["pseudonymize", str(m), "--key-file", str(key), "-o", str(tmp_path / "p2.parquet")])
    assert "Note: paths were pseudonymised" in res.stderr


def test_ingest_summary_carries_the_warnings_stderr_shows(runner, tmp_path):
    """A labelled study without images was a warning on stderr only; with --pseudonymize a warning's quoted ids stay hidden in --json too."""
    from mdprep.synthetic import write_mimic_tables

    write_mimic_tables(tmp_path / "c.csv", tmp_path / "m.csv", patients=4)
    argv = ["ingest", "table", str(tmp_path / "c.csv"), "--preset", "mimic", "--metadata", str(tmp_path / "m.csv"), "-o", str(tmp_path / "mi.parquet")]
    res = runner.invoke(main, [*argv, "--json", str(tmp_path / "mi.json")])
    doc = json.loads((tmp_path / "mi.json").read_text())
    assert res.exit_code == 0 and doc["warnings"][0] == "1 labelled study has no image in " + str(tmp_path / "m.csv") + " and gave no rows"
    assert doc["warnings"] == [line.removeprefix("Warning: ") for line in res.stderr.splitlines() if line.startswith("Warning: ")]
    # Identifiers with white space around them: the warning quotes examples, which --pseudonymize hides everywhere.
    (tmp_path / "t.csv").write_text("image_id,patient_id,labels\na.png, PAT_SECRET ,A\nb.png,PAT2,B\n")
    key = tmp_path / "k.key"
    assert runner.invoke(main, ["keygen", "-o", str(key), "-q"]).exit_code == 0
    res = runner.invoke(main, ["ingest", "table", str(tmp_path / "t.csv"), "--labels-col", "labels", "-o", str(tmp_path / "t.parquet"),
                               "--pseudonymize", "--key-file", str(key), "--json", str(tmp_path / "t.json")])  # fmt: skip
    doc = json.loads((tmp_path / "t.json").read_text())
    assert res.exit_code == 0 and len(doc["warnings"]) == 1 and "white space" in doc["warnings"][0] and "'…'" in doc["warnings"][0]
    assert "PAT_SECRET" not in res.output and "PAT_SECRET" not in json.dumps(doc)
    # Without --json nothing is recorded, and the warnings print as before.
    res = runner.invoke(main, [*argv[:-2], "-o", str(tmp_path / "mi2.parquet"), "-q"])
    assert res.exit_code == 0 and res.stderr.count("Warning: 1 labelled study has no image") == 1


def test_validate_summary_keeps_its_shape_for_a_manifest_not_read():
    """Every entry has rows and labels (null when the manifest could not be built), so readers need no key check."""
    from types import SimpleNamespace

    from mdprep.summaries import validate_summary

    doc = validate_summary([("x.parquet", None, [SimpleNamespace(check="metadata", message="broken")])])
    assert doc["manifests"] == [{"path": "x.parquet", "valid": False, "rows": None, "labels": None, "violations": [{"check": "metadata", "message": "broken"}]}]
    assert doc["valid"] is False


def test_json_loses_no_warning_when_the_ingest_fails(runner, tmp_path):
    """With --json, the warnings were held back for the summary and lost when an error followed them."""
    (tmp_path / "t.csv").write_text("image_id,patient_id,labels\na.png, P1 ,A\na.png,P2,B\n")
    argv = ["ingest", "table", str(tmp_path / "t.csv"), "--labels-col", "labels", "-o", str(tmp_path / "m.parquet")]
    plain = runner.invoke(main, argv)
    with_json = runner.invoke(main, [*argv, "--json", str(tmp_path / "s.json")])
    assert plain.exit_code == with_json.exit_code == 2 and "Warning: removed white space around identifiers" in plain.stderr
    assert with_json.stderr == plain.stderr and not (tmp_path / "s.json").exists()


def test_no_output_replaces_an_image_of_the_tree_being_read(runner, tmp_path):
    """``--json ROOT/.../view1_frontal.png`` (or -o, --errors) wrote JSON over a raw image of the ingest or hash root."""
    from mdprep.fileio import IMAGE_FILE_SUFFIXES
    from mdprep.imaging import _DICOM_SUFFIXES
    from mdprep.ingest.images import IMAGE_EXTENSIONS
    from mdprep.nifti import NIFTI_EXTENSIONS

    assert {*IMAGE_EXTENSIONS, *NIFTI_EXTENSIONS, *_DICOM_SUFFIXES} <= set(IMAGE_FILE_SUFFIXES)
    root = tmp_path / "imgs"
    write_image_tree(root, patients=2, studies=1, seed=0, plant_bad_files=False)
    image = next(root.rglob("*.png"))
    disguised = root / "patient00000" / "scan"  # no ending: told by its first bytes
    disguised.write_bytes(image.read_bytes())
    before = image.read_bytes()
    regex = r"(?P<patient>patient\d+)/"
    m = tmp_path / "m.parquet"
    for flag, target in (("--json", image), ("--errors", image), ("-o", disguised)):
        argv = ["ingest", "images", str(root), "--patient-regex", regex, "-o", str(m), "--workers", "1", "-q"]
        res = runner.invoke(main, [*argv, flag, str(target)] if flag != "-o" else [*argv[:-5], "-o", str(target), "--workers", "1", "-q"])
        assert res.exit_code == 2 and "is an image under ROOT" in res.stderr and "never writes over its inputs" in res.stderr, (flag, res.output)
    assert image.read_bytes() == before and disguised.read_bytes() == before
    # A new file under the root, and rewriting a manifest there, are fine.
    for _ in range(2):
        res = runner.invoke(main, ["ingest", "images", str(root), "--patient-regex", regex, "-o", str(root / "m.parquet"), "--workers", "1", "-q"])
        assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["hash", str(root / "m.parquet"), "--root", str(root), "-o", str(tmp_path / "h.parquet"), "--json", str(image), "-q"])
    assert res.exit_code == 2 and "is an image under the image root" in res.stderr and image.read_bytes() == before


def test_summaries_are_strict_json_whatever_the_numbers():
    """pandas' NA and NaT and numpy arrays made json.dumps raise (exit 3); NaN and infinities must never be written as tokens."""
    import numpy as np
    import pandas as pd

    from mdprep.summaries import document

    doc = document("x", a=pd.NA, b=pd.NaT, c=np.array([1.0, np.nan]), d=np.float32("inf"), e=(np.int64(2), np.bool_(True)))
    assert json.loads(json.dumps(doc, allow_nan=False)) == {**doc, "a": None, "b": None, "c": [1.0, None], "d": None, "e": [2, True]}


def test_check_stopped_by_bad_input_leaves_no_stale_passing_report(runner, cohort, tmp_path):
    """A passing run's --junit/--json/--markdown stayed in place when the next check stopped with exit 2 (an unreadable manifest)."""
    import xml.etree.ElementTree as ET

    out = {k: tmp_path / f"r.{k}" for k in ("json", "junit", "markdown")}
    reports = [a for k, p in out.items() for a in (f"--{k}", str(p))]
    assert runner.invoke(main, ["check", str(cohort / "s.parquet"), *reports, "-q"]).exit_code == 0
    assert json.loads(out["json"].read_text())["exit_code"] == 0
    garbage = tmp_path / "g.parquet"
    garbage.write_text("not parquet")
    for argv in (["check", str(cohort / "s.parquet"), str(garbage)], ["check", str(cohort / "s.parquet"), "--temporal"]):
        res = runner.invoke(main, [*argv, *reports, "-q"])
        assert res.exit_code == 2, res.output
        doc = json.loads(out["json"].read_text())
        assert doc["result"] == "error" and doc["exit_code"] == 2 and doc["verdict"].startswith("ERROR: the gate could not run")
        suite = ET.parse(out["junit"]).getroot()
        assert suite.get("errors") == "1" and suite.find("testcase/error") is not None
        assert "ERROR: the gate could not run" in out["markdown"].read_text()
    # An output that names an input is refused before anything is written: the manifest stays intact.
    before = (cohort / "s.parquet").read_bytes()
    assert runner.invoke(main, ["check", str(cohort / "s.parquet"), "--junit", str(cohort / "s.parquet")]).exit_code == 2
    assert (cohort / "s.parquet").read_bytes() == before


def test_pseudonymized_notes_keep_their_words(runner, tmp_path):
    """Hiding quoted values took "reader's ... 'any'" for a quote and mangled the note: "each reader'…'any'"."""
    (tmp_path / "t.csv").write_text("image_id,patient_id,finding,rad\na.png,P1,A,R1\na.png,P1,A,R2\nb.png,P2,B,R1\n")
    key = tmp_path / "k.key"
    assert runner.invoke(main, ["keygen", "-o", str(key), "-q"]).exit_code == 0
    res = runner.invoke(main, ["ingest", "table", str(tmp_path / "t.csv"), "--labels-col", "finding", "--aggregate", "majority", "--reader-col", "rad",
                               "-o", str(tmp_path / "m.parquet"), "--pseudonymize", "--key-file", str(key), "--json", "-", "-q"])  # fmt: skip
    assert res.exit_code == 0, res.output
    (note,) = json.loads(res.stdout)["notes"]
    assert "labels combined by 'majority', each reader's rows first combined by" in note and "reader'…" not in note


def test_a_warning_before_an_error_is_shown_with_pseudonymize_too(runner, tmp_path):
    table = tmp_path / "dup.csv"
    table.write_text("image_id,patient_id,labels\na.png, p1 ,X\na.png,p2,Y\nb.png,p3,X\n")
    key = tmp_path / "k.key"
    assert runner.invoke(main, ["keygen", "-o", str(key), "-q"]).exit_code == 0
    base = ["ingest", "table", str(table), "--labels-col", "labels", "-o", str(tmp_path / "x.parquet")]
    for extra in ([], ["--pseudonymize", "--key-file", str(key)]):
        res = runner.invoke(main, [*base, *extra])
        lines = res.stderr.splitlines()
        assert res.exit_code == 2 and len(lines) == 2, res.stderr
        assert lines[0].startswith("Warning: removed white space around identifiers") and lines[1].startswith("Error: ")
        assert ("p1" in res.stderr) == (not extra)  # the raw id only without --pseudonymize


def test_split_quiet_prints_no_notes(runner, cohort, tmp_path):
    res = runner.invoke(main, ["split", str(cohort / "m.parquet"), "--ratios", "0.6,0.2,0.2", "--folds", "2", "-o", str(tmp_path / "sf.parquet"), "-q"])
    assert res.exit_code == 0 and "Note:" not in res.stderr
    res = runner.invoke(main, ["split", str(cohort / "m.parquet"), "--ratios", "0.6,0.2,0.2", "--folds", "2", "-o", str(tmp_path / "sf2.parquet")])
    assert "Note: folds cover" in res.stderr


def test_empty_or_meaningless_values_are_usage_errors(runner, cohort, tmp_path):
    d = cohort
    out = str(tmp_path / "o.parquet")
    cases = [
        (["split", str(d / "m.parquet"), "-o", out, "--names", ""], "--names is empty"),
        (["split", str(d / "m.parquet"), "-o", out, "--stratify", ""], "--stratify is empty"),
        (["split", str(d / "m.parquet"), "-o", out, "--stratify-by", ""], "--stratify-by is empty"),
        (["split", str(d / "m.parquet"), "-o", out, "--ratios", "0.7,0.3,0"], "must each be above 0"),
        (["split", str(d / "m.parquet"), "-o", out, "--ratios", "nan,0.5"], "must be finite numbers"),
        (["weights", str(d / "s.parquet"), "-o", str(tmp_path / "w.json"), "--labels", ""], "--labels is empty"),
        (["ingest", "table", str(d / "t.csv"), "--preset", "nih", "--metadata", str(d / "t.csv"), "-o", out], "only for --preset mimic"),
        (["train", str(d / "s.parquet"), "-o", str(tmp_path / "run"), "--folds", "2"], "--folds N is split's option"),
        (["train", str(d / "s.parquet"), "-o", str(tmp_path / "run"), "--folds", "all", "--fold", "1"], "give --fold only"),
    ]
    for argv, message in cases:
        res = runner.invoke(main, argv)
        assert res.exit_code == 2 and message in res.stderr, (argv, res.stderr)
    assert not (tmp_path / "o.parquet").exists() and not (tmp_path / "run").exists()


def test_a_resampled_manifest_is_not_split_again(runner, cohort, tmp_path):
    ros = tmp_path / "ros.parquet"
    assert runner.invoke(main, ["resample", str(cohort / "s.parquet"), "--strategy", "over", "--target", "Effusion", "--ratio", "1", "-o", str(ros), "-q"]).exit_code == 0
    res = runner.invoke(main, ["split", str(ros), "-o", str(tmp_path / "again.parquet")])
    assert res.exit_code == 2 and "made by mdprep resample" in res.stderr and "split the manifest first" in res.stderr


def test_unlabeled_rows_are_counted_after_uncertain(runner, tmp_path):
    from mdprep.synthetic import write_chexpert_table

    table = tmp_path / "chex.csv"
    write_chexpert_table(table, patients=30)
    text = table.read_text().splitlines()
    header = text[0].split(",")
    labels = [i for i, h in enumerate(header) if i >= header.index("AP/PA") + 1] if "AP/PA" in header else list(range(5, len(header)))
    row = text[1].split(",")
    for i in labels:
        row[i] = "-1.0"  # one row whose every label is uncertain
    table.write_text("\n".join([text[0], ",".join(row), *text[2:]]) + "\n")
    counts = set()
    for extra in ([], ["--aggregate", "any"]):  # the Arrow path and the pandas path
        res = runner.invoke(main, ["ingest", "table", str(table), "--preset", "chexpert", "--uncertain", "ignore", "-o", str(tmp_path / "c.parquet"), "-q", *extra])
        assert res.exit_code == 0, res.stderr
        doc = _json(runner, ["ingest", "table", str(table), "--preset", "chexpert", "--uncertain", "ignore", "-o", str(tmp_path / "c2.parquet"), "-q", *extra])
        counts.add((doc["counts"]["unlabeled"], doc["manifest"]["unlabeled_rows"]))
    (unlabeled, rows), = counts
    assert unlabeled == rows >= 1


def test_pseudonymize_refuses_a_weak_or_text_key():
    import hashlib

    import pandas as pd

    import mdprep
    from mdprep.errors import UsageError
    from mdprep.pseudonyms import MissingKeyError

    m = mdprep.Manifest(pd.DataFrame({"image_id": ["a"], "path": ["a.png"], "patient_id": ["p1"]}))
    for weak in (b"a", b"0123456789abcdef0123456789abcdef"):
        with pytest.raises(MissingKeyError, match="too short or too regular"):
            mdprep.pseudonymize(m, weak)
    with pytest.raises(UsageError, match="must be bytes"):
        mdprep.pseudonymize(m, "0" * 64)
    assert len(mdprep.pseudonymize(m, hashlib.sha256(b"k").digest()).manifest.frame) == 1


def test_ingest_json_lists_every_warning_stderr_shows(runner, tmp_path):
    from mdprep.synthetic import write_ct_tree

    write_ct_tree(tmp_path / "ct", patients=2, slices=8, shape=(16, 16), seed=0)
    res = runner.invoke(main, ["ingest", "dicom", str(tmp_path / "ct"), "--level", "series", "-o", str(tmp_path / "s.parquet"),
                               "--workers", "1", "--json", str(tmp_path / "s.json"), "-q"])  # fmt: skip
    assert res.exit_code == 0, res.stderr
    shown = [line.removeprefix("Warning: ") for line in res.stderr.splitlines() if line.startswith("Warning: ")]
    doc = json.loads((tmp_path / "s.json").read_text())
    assert shown and doc["warnings"] == shown and any("series have volume problems" in w for w in shown)
