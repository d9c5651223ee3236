"""Outputs never destroy inputs; '-' is stdin/stdout; temporary files never pile up; keygen is atomic."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mdprep.cli import main
from mdprep.cli._ui import Terminated, termination_unwinds
from mdprep.errors import UsageError
from mdprep.fileio import atomic_write, check_outputs, remove_stale_temps
from mdprep.manifest import read_manifest
from mdprep.pseudonyms import KEY_ENV
from mdprep.synthetic import write_nih_table

KEY = hashlib.sha256(b"mdprep test key").hexdigest()  # fixed, and strong enough for key_weakness


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """An NIH look-alike table, its manifest and a split manifest, made once (tests must not change them)."""
    from click.testing import CliRunner

    d = tmp_path_factory.mktemp("outputs")
    write_nih_table(d / "t.csv", patients=8)
    runner = CliRunner()
    for argv in (["ingest", "table", str(d / "t.csv"), "--preset", "nih", "-o", str(d / "m.parquet"), "-q"],
                 ["split", str(d / "m.parquet"), "--ratios", "0.5,0.25,0.25", "-o", str(d / "s.parquet"), "-q"]):
        res = runner.invoke(main, argv)
        assert res.exit_code == 0, res.stderr
    return d


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not p.is_symlink()}


def _refused(res, *paths) -> str:
    """The run was refused with exit 2 and one Error line naming every path."""
    assert res.exit_code == 2, (res.exit_code, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    for p in paths:
        assert repr(str(p)) in lines[0], (p, lines[0])
    assert res.stdout == ""
    return lines[0]


# ----------------------------------------------------------------------------- outputs vs inputs


def test_ingest_table_never_replaces_its_table_same_path_hard_or_symbolic_link(runner, tmp_path):
    victim = tmp_path / "victim.csv"
    write_nih_table(victim, patients=3)
    os.link(victim, tmp_path / "hard.csv")
    (tmp_path / "soft.csv").symlink_to(victim)
    before = _snapshot(tmp_path)
    line = _refused(runner.invoke(main, ["ingest", "table", str(victim), "--preset", "nih", "-o", str(victim)]), victim)
    assert "is the input TABLE" in line and "never writes over its inputs" in line
    line = _refused(runner.invoke(main, ["ingest", "table", str(victim), "--preset", "nih", "-o", str(tmp_path / "hard.csv")]), victim, tmp_path / "hard.csv")
    assert "through a hard link" in line
    line = _refused(runner.invoke(main, ["ingest", "table", str(tmp_path / "soft.csv"), "--preset", "nih", "-o", str(victim)]), victim, tmp_path / "soft.csv")
    assert "through a symbolic link" in line
    assert _snapshot(tmp_path) == before


def _cases(d: Path, t: Path) -> list[tuple[list[str], tuple]]:
    """(argv, paths the Error line must name) for every command that writes files."""
    m, s, csv = d / "m.parquet", d / "s.parquet", d / "t.csv"
    o, key, lst, lmap, allow = t / "o.parquet", t / "k.key", t / "list.txt", t / "map.csv", t / "allow.json"
    run = t / "run"
    return [
        (["ingest", "dicom", str(t), "-o", str(o), "--errors", str(o)], (o,)),
        (["ingest", "dicom", str(t), "--files-from", str(lst), "-o", str(lst)], (lst,)),
        (["ingest", "images", str(t), "--patient-regex", "(?P<patient>p)", "--files-from", str(lst), "-o", str(o), "--errors", str(lst)], (lst,)),
        (["ingest", "dicom", str(t), "--pseudonymize", "--key-file", str(key), "-o", str(key)], (key,)),
        (["ingest", "table", str(csv), "--preset", "mimic", "--metadata", str(lmap), "-o", str(lmap)], (lmap,)),
        (["ingest", "table", str(csv), "--label-map", str(lmap), "-o", str(lmap)], (lmap,)),
        (["ingest", "table", str(csv), "--pseudonymize", "--key-file", str(key), "-o", str(key)], (key,)),
        (["split", str(m), "-o", str(o), "--json", str(o)], (o,)),
        (["split", str(m), "-o", str(m)], (m,)),
        (["split", str(m), "-o", str(o), "--json", str(m)], (m,)),
        (["hash", str(m), "-o", str(m)], (m,)),
        (["hash", str(m), "-o", str(o), "--errors", str(o)], (o,)),
        (["audit-leakage", str(s), "--json", str(s)], (s,)),
        (["audit-leakage", str(s), "--allow", str(allow), "--junit", str(allow)], (allow,)),
        (["audit-leakage", str(m), str(s), "--markdown", str(o), "--json", str(o)], (o,)),
        (["check", str(s), "--junit", str(s)], (s,)),
        (["report", str(s), "-o", str(s)], (s,)),
        (["report", str(s), "--audit", str(allow), "-o", str(allow)], (allow,)),
        (["weights", str(s), "-o", str(s)], (s,)),
        (["resample", str(s), "--strategy", "ml-ros", "-o", str(o), "--removed", str(o)], (o,)),
        (["resample", str(s), "--strategy", "ml-ros", "-o", str(s)], (s,)),
        (["train", str(s), "-o", str(run), "--weights", str(run / "metrics.json")], (run / "metrics.json",)),
        (["train", str(s), "-o", str(run), "--pretrained", str(run / "best.pt")], (run / "best.pt",)),
        (["pseudonymize", str(m), "--key-file", str(key), "-o", str(key)], (key,)),
        (["pseudonymize", str(m), "--key-file", str(key), "-o", str(o), "--mapping", str(o)], (o,)),
        (["pseudonymize", str(m), "--key-file", str(key), "-o", str(m)], (m,)),
        (["export", str(s), "--format", "monai", "-o", str(s)], (s,)),
        (["export", str(s), "--format", "csv", "-o", str(d)], (d,)),  # d holds t.csv, which a loader would mix in
    ]


def test_every_command_refuses_an_output_that_is_an_input_or_another_output(runner, data, tmp_path):
    (tmp_path / "k.key").write_text(KEY + "\n")
    (tmp_path / "list.txt").write_text("a.dcm\n")
    (tmp_path / "map.csv").write_text("source,target\nEffusion,Pleural Effusion\n")
    (tmp_path / "allow.json").write_text("[]\n")
    (tmp_path / "o.parquet").write_bytes(b"an older output")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best.pt").write_bytes(b"weights of another run")
    (tmp_path / "run" / "metrics.json").write_text("{}\n")
    before, before_data = _snapshot(tmp_path), _snapshot(data)
    cases = _cases(data, tmp_path)
    for argv, paths in cases:
        _refused(runner.invoke(main, argv), *paths)
    assert _snapshot(tmp_path) == before and _snapshot(data) == before_data
    assert (tmp_path / "run" / "best.pt").read_bytes() == b"weights of another run"
    # Every command that writes files is covered (keygen, which reads nothing, in the tests below).
    assert {a[0] for a, _ in cases} | {"keygen"} == set(main.commands) - {"validate", "demo"}
    assert {a[1] for a, _ in cases if a[0] == "ingest"} == set(main.commands["ingest"].commands)


def test_an_existing_folder_is_not_an_output_file(runner, data, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    for argv in (["ingest", "table", str(data / "t.csv"), "--preset", "nih", "-o", str(folder)],
                 ["split", str(data / "m.parquet"), "-o", str(folder)],
                 ["weights", str(data / "s.parquet"), "-o", str(tmp_path) + "/"]):
        line = _refused(runner.invoke(main, argv))
        assert "is a folder; give a file path" in line
    res = runner.invoke(main, ["keygen", "-o", str(folder)])  # click checks this option itself
    assert res.exit_code == 2 and "is a directory" in res.stderr
    assert list(folder.iterdir()) == []
    (tmp_path / "file").write_text("x")
    res = runner.invoke(main, ["train", str(data / "s.parquet"), "-o", str(tmp_path / "file")])  # and this one
    assert res.exit_code == 2 and "is a file" in res.stderr
    with pytest.raises(UsageError, match="--out '.*file' is a file; give a folder"):
        check_outputs({}, {"--out": tmp_path / "file"}, folders={"--out": ("best.pt",)})


def test_stdout_and_stdin_only_once_and_only_where_they_make_sense(runner, data, tmp_path):
    s = str(data / "s.parquet")
    line = _refused(runner.invoke(main, ["split", s, "-o", "-", "--json", "-"]))
    assert "-o/--output and --json both go to standard output" in line
    line = _refused(runner.invoke(main, ["audit-leakage", s, "--json", "-", "--junit", "-", "--markdown", "-"]))
    assert "all go to standard output" in line
    for argv, label in ((["keygen", "-o", "-"], "-o/--output"), (["keygen", "-"], "-o/--output"), (["train", s, "-o", "-"], "-o/--output"), (["hash", s, "-o", str(tmp_path / "h.parquet"), "--errors", "-"], "--errors"),
                        (["pseudonymize", s, "-o", str(tmp_path / "p.parquet"), "--mapping", "-"], "--mapping")):
        assert f"{label} cannot be '-' (standard output)" in _refused(runner.invoke(main, argv))
    assert "read standard input ('-') 2 times" in _refused(runner.invoke(main, ["validate", "-", "-"], input=b"x"))
    assert "MANIFESTS and --allow read standard input" in _refused(runner.invoke(main, ["audit-leakage", "-", "--allow", "-"], input=b"x"))
    assert not Path("-").exists()


def test_check_outputs_rules(tmp_path):
    src = tmp_path / "labels.zip"
    src.write_bytes(b"PK")
    # An archive member is its archive; inputs that do not exist are not compared.
    with pytest.raises(UsageError, match="is the input TABLE") as err:
        check_outputs({"TABLE": f"{src}::train.csv"}, {"-o": src})
    assert err.value.fields["problems"] == [f"-o {str(src)!r} is the input TABLE {str(src)!r}; mdprep never writes over its inputs: choose another output path"]
    check_outputs({"TABLE": tmp_path / "absent.csv", "--metadata": None}, {"-o": tmp_path / "absent.csv", "--errors": None})
    # Every problem is reported at once.
    with pytest.raises(UsageError) as err:
        check_outputs({"A": src}, {"-o": src, "--errors": src, "--json": "-"})
    assert len(err.value.fields["problems"]) == 4


# ----------------------------------------------------------------------------- streams


def test_pipes_give_the_bytes_files_give(runner, data, tmp_path):
    csv = (data / "t.csv").read_bytes()
    res = runner.invoke(main, ["ingest", "table", "-", "--preset", "nih", "-o", "-"], input=csv)
    assert res.exit_code == 0, res.stderr
    ingested = res.stdout_bytes
    assert ingested[:4] == b"PAR1" and "found" in res.stderr
    res = runner.invoke(main, ["ingest", "table", "-", "--preset", "nih", "-o", str(tmp_path / "m.parquet"), "-q"], input=csv)
    assert res.exit_code == 0 and (tmp_path / "m.parquet").read_bytes() == ingested
    assert read_manifest(tmp_path / "m.parquet").history[-1]["inputs"][0]["path"] == "-"

    res = runner.invoke(main, ["split", "-", "--ratios", "0.5,0.25,0.25", "-o", "-"], input=ingested)
    assert res.exit_code == 0, res.stderr
    split = res.stdout_bytes
    assert runner.invoke(main, ["split", "-", "--ratios", "0.5,0.25,0.25", "-o", str(tmp_path / "s.parquet"), "-q"], input=ingested).exit_code == 0
    assert (tmp_path / "s.parquet").read_bytes() == split
    res = runner.invoke(main, ["validate", "-"], input=split)
    assert res.exit_code == 0 and res.stdout == "" and "-: valid" in res.stderr

    # JSON and HTML outputs: only the document on stdout, the summary on stderr.
    res = runner.invoke(main, ["split", "-", "--ratios", "0.5,0.25,0.25", "-o", str(tmp_path / "s2.parquet"), "--report", "-"], input=ingested)
    assert res.exit_code == 0 and "groups" in json.loads(res.stdout)["split"]["parts"][0]
    res = runner.invoke(main, ["weights", "-", "-o", "-"], input=split)
    assert res.exit_code == 0 and json.loads(res.stdout)["provenance"]["manifest"]["path"] == "-" and "Wrote" in res.stderr
    assert runner.invoke(main, ["weights", "-", "-o", str(tmp_path / "w.json"), "-q"], input=split).exit_code == 0
    assert (tmp_path / "w.json").read_text() == res.stdout
    res = runner.invoke(main, ["resample", "-", "--strategy", "ml-ros", "-o", "-", "-q"], input=split)
    assert res.exit_code == 0 and pq.read_table(io.BytesIO(res.stdout_bytes)).num_rows > len(pq.read_table(io.BytesIO(split)))
    res = runner.invoke(main, ["report", "-", "-o", "-"], input=split)
    assert res.exit_code == 0 and res.stdout.lstrip().lower().startswith("<!doctype html") and res.stderr == "Wrote -\n"
    res = runner.invoke(main, ["audit-leakage", "-", "--json", "-", "-q"], input=split)
    assert res.exit_code == 0 and json.loads(res.stdout)["schema"] == "mdprep-audit-report" and "No leakage found" in res.stderr
    res = runner.invoke(main, ["check", "-", "-q"], input=split)  # reads stdin twice: the contract, then the audit
    assert res.exit_code == 0, res.stderr
    res = runner.invoke(main, ["pseudonymize", "-", "-o", "-", "-q"], input=split, env={KEY_ENV: KEY})
    assert res.exit_code == 0 and pq.read_table(io.BytesIO(res.stdout_bytes)).num_rows == len(pq.read_table(io.BytesIO(split)))
    assert not Path("-").exists()


def test_empty_or_bad_stdin_is_one_error_line(runner):
    assert "standard input ('-') is empty" in _refused(runner.invoke(main, ["split", "-", "-o", "-"], input=b""))
    line = _refused(runner.invoke(main, ["validate", "-"], input=b"not parquet"))
    assert "standard input ('-') is not a readable Parquet file" in line and "mdprep-stdin" not in line


# ----------------------------------------------------------------------------- temporary files


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_sigterm_mid_write_removes_the_temp_file_and_keeps_the_old_output(runner, data, tmp_path, monkeypatch):
    out = tmp_path / "m.parquet"
    out.write_bytes(b"the previous good output")
    real = pq.write_table

    def killed_mid_write(table, where, **kw):
        real(table, where, **kw)
        assert _temps(tmp_path), "the write goes to a temporary file"
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends

    monkeypatch.setattr(pq, "write_table", killed_mid_write)
    previous = signal.getsignal(signal.SIGTERM)
    res = runner.invoke(main, ["ingest", "table", str(data / "t.csv"), "--preset", "nih", "-o", str(out), "-q"])
    assert res.exit_code == 143 and res.stderr.startswith("Error: terminated (SIGTERM)")
    assert _temps(tmp_path) == [] and out.read_bytes() == b"the previous good output"
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is only installed while a command runs


def test_termination_unwinds_only_while_installed(tmp_path):
    with pytest.raises(Terminated):
        with termination_unwinds():
            with atomic_write(tmp_path / "x.json") as tmp:
                tmp.write_text("half")
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temps_of_dead_processes_are_removed_by_the_next_write(tmp_path):
    dead, alive = _dead_pid(), os.getppid()
    for name in (f".m.parquet.{dead}.ab_12x.tmp", f".m.parquet.{alive}.cd34yz.tmp", ".m.parquet.oldstyle.tmp", f".other.parquet.{dead}.ab12xy.tmp"):
        (tmp_path / name).write_bytes(b"half")
    with atomic_write(tmp_path / "m.parquet") as tmp:
        assert Path(tmp).name.startswith(f".m.parquet.{os.getpid()}.")
        tmp.write_bytes(b"new")
    assert _temps(tmp_path) == sorted([f".m.parquet.{alive}.cd34yz.tmp", ".m.parquet.oldstyle.tmp", f".other.parquet.{dead}.ab12xy.tmp"])
    assert remove_stale_temps(tmp_path / "other.parquet") == [str(tmp_path / f".other.parquet.{dead}.ab12xy.tmp")]


def test_kill_9_mid_write_leaves_a_temp_that_the_next_run_removes(runner, data, tmp_path):
    """A real SIGKILL cannot be handled: the temporary file stays until the next write of that output."""
    out, ready = tmp_path / "m.parquet", tmp_path / "ready"
    script = (
        "import sys, time, pyarrow.parquet as pq\n"
        "real = pq.write_table\n"
        "def slow(table, where, **kw):\n"
        "    real(table, where, **kw); open(sys.argv[2], 'w').close(); time.sleep(60)\n"
        "pq.write_table = slow\n"
        "from mdprep.cli import main\n"
        "main(['ingest', 'table', sys.argv[1], '--preset', 'nih', '-o', sys.argv[3], '-q'])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}
    proc = subprocess.Popen([sys.executable, "-c", script, str(data / "t.csv"), str(ready), str(out)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "the child reached the write"
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    stale = _temps(tmp_path)
    assert len(stale) == 1 and stale[0].startswith(f".m.parquet.{proc.pid}.") and not out.exists()
    res = runner.invoke(main, ["ingest", "table", str(data / "t.csv"), "--preset", "nih", "-o", str(out), "-q"])
    assert res.exit_code == 0 and _temps(tmp_path) == [] and read_manifest(out).frame.shape[0] > 0


# ----------------------------------------------------------------------------- keygen


def test_keygen_is_atomic_and_never_overwrites(runner, tmp_path, monkeypatch):
    key = tmp_path / "keys" / "site.key"
    res = runner.invoke(main, ["keygen", "-o", str(key)])
    assert res.exit_code == 0 and oct(key.stat().st_mode & 0o777) == "0o600" and len(key.read_text().strip()) == 64
    first = key.read_bytes()
    res = runner.invoke(main, ["keygen", "-o", str(key)])
    assert res.exit_code == 2 and "already exists" in res.stderr and key.read_bytes() == first

    def disk_full():
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("mdprep.pseudonyms.generate_key", disk_full)
    res = runner.invoke(main, ["keygen", "-o", str(tmp_path / "new.key")])
    assert res.exit_code == 2 and res.stderr.startswith("Error: No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys"]  # no empty key, no temporary file


def test_a_device_or_fifo_output_is_written_into_never_replaced(tmp_path):
    """`-o /dev/null` or a named pipe: the bytes go into it; renaming over it would replace the device (as root, /dev/null itself)."""
    import stat
    import threading

    from mdprep.fileio import write_text

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = {}
    reader = threading.Thread(target=lambda: got.setdefault("bytes", fifo.read_bytes()))
    reader.start()
    write_text(fifo, "hello\n")
    reader.join(timeout=10)
    assert got["bytes"] == b"hello\n"
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"]  # no temp file left beside it
    if stat.S_ISCHR(os.stat(os.devnull).st_mode):
        write_text(os.devnull, "discarded\n")
        assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
