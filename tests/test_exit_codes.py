"""The exit-code contract: 0 pass, 1 a check failed, 2 bad input/usage/environment, 3 a bug."""

from __future__ import annotations

import errno

import pytest

from mdprep.cli import main
from mdprep.cli._ui import EXIT_BAD_INPUT, EXIT_INTERNAL
from mdprep.synthetic import write_nih_table

# `mdprep ingest table` imports the library functions it calls when it runs: they are replaced where they live.
INGEST_TABLE, WRITE_MANIFEST = "mdprep.ingest.ingest_table", "mdprep.manifest.write_manifest"
#: `ingest table --preset nih` builds its manifest here, without pandas (ingest_table where this declines).
INGEST_TABLE_ARROW = "mdprep.ingest.table_arrow.ingest_table_arrow"


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "Data_Entry_2017.csv"
    write_nih_table(path, patients=3)
    return path


def _ingest(runner, table, tmp_path, *extra):
    return runner.invoke(main, [*extra, "ingest", "table", str(table), "--preset", "nih", "-o", str(tmp_path / "m.parquet"), "-q"])


def test_an_unexpected_exception_is_exit_3_with_one_line_and_no_traceback(runner, table, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError(0)

    monkeypatch.setattr(INGEST_TABLE, broken)
    monkeypatch.setattr(INGEST_TABLE_ARROW, broken)
    monkeypatch.delenv("MDPREP_DEBUG", raising=False)
    res = _ingest(runner, table, tmp_path)
    assert res.exit_code == EXIT_INTERNAL == 3
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    # CliRunner names the program after the function (`main`); the installed command is `mdprep`.
    assert lines[0].startswith("Error: internal error in `main ingest table`: KeyError: 0 (a bug in mdprep")
    assert "--debug" in lines[0] and "Traceback" not in res.stderr
    assert not (tmp_path / "m.parquet").exists()


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback_and_keeps_exit_3(runner, table, tmp_path, monkeypatch, how):
    def broken(*args, **kwargs):
        raise ValueError("boom")

    monkeypatch.setattr(INGEST_TABLE, broken)
    monkeypatch.setattr(INGEST_TABLE_ARROW, broken)
    if how == "env":
        monkeypatch.setenv("MDPREP_DEBUG", "1")
        res = _ingest(runner, table, tmp_path)
    else:
        monkeypatch.delenv("MDPREP_DEBUG", raising=False)
        res = _ingest(runner, table, tmp_path, "--debug")
    assert res.exit_code == EXIT_INTERNAL
    assert "Traceback" in res.stderr and "ValueError: boom" in res.stderr
    assert "the traceback is above" in res.stderr


@pytest.mark.parametrize(
    "code, words",
    [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system"), (errno.EACCES, "Permission denied")],
)
def test_the_environment_saying_no_is_exit_2(runner, table, tmp_path, monkeypatch, code, words):
    import os

    def full(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(tmp_path / "m.parquet"))

    monkeypatch.setattr("mdprep.manifest.write_table", full)  # ingest table writes the manifest it has checked
    res = _ingest(runner, table, tmp_path)
    assert res.exit_code == EXIT_BAD_INPUT
    assert res.stderr.startswith(f"Error: {words}: ") and "m.parquet" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


def test_ctrl_c_is_130_not_1(runner, table, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(INGEST_TABLE, interrupted)
    monkeypatch.setattr(INGEST_TABLE_ARROW, interrupted)
    res = _ingest(runner, table, tmp_path)
    assert res.exit_code == 130 and res.stderr.startswith("Error: interrupted")
