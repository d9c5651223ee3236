"""Start-up: `mdprep --help`, `--version` and every command's help import nothing heavy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click

import mdprep
from mdprep.cli import COMMANDS, LazyCommands, MdprepGroup, main

SRC = Path(__file__).resolve().parents[1] / "src"

#: Top-level packages no help or version text may import: the data stack, the trainers, the terminal UI.
HEAVY = ("pandas", "numpy", "pyarrow", "sklearn", "scipy", "imblearn", "torch", "keras", "dask", "pydicom", "PIL", "rich")

#: Runs the command line in one fresh interpreter, several times, and reports after each run
#: which heavy packages and which command modules (mdprep.cli.*) had been imported so far.
_PROBE = """
import json, sys
from mdprep.cli import main

HEAVY = set(json.loads(sys.argv[1]))
report = []
for argv in json.loads(sys.argv[2]):
    try:
        main(argv, prog_name="mdprep", standalone_mode=False)
    except SystemExit:
        pass
    loaded = sorted({m.split(".")[0] for m in sys.modules} & HEAVY)
    commands = sorted(m for m in sys.modules if m.startswith("mdprep.cli.") and m not in ("mdprep.cli._ui", "mdprep.cli._options"))
    report.append({"argv": argv, "heavy": loaded, "commands": commands})
print(json.dumps(report))
"""


def _probe(runs: list[list[str]]) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(HEAVY), json.dumps(runs)], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _help_argvs(group: click.Group, prefix: tuple[str, ...] = ()) -> list[list[str]]:
    argvs = []
    for name in group.list_commands(click.Context(group)):
        cmd = group.get_command(click.Context(group), name)
        argvs.append([*prefix, name, "--help"])
        if isinstance(cmd, click.Group):
            argvs += _help_argvs(cmd, (*prefix, name))
    return argvs


def test_version_and_help_import_no_heavy_module_and_no_command():
    version, top = _probe([["--version"], ["--help"]])
    assert version["heavy"] == [] and version["commands"] == []
    assert top["heavy"] == [], "mdprep --help imports " + ", ".join(top["heavy"])
    assert top["commands"] == [], "mdprep --help imports the command modules " + ", ".join(top["commands"])


def test_every_command_help_imports_no_heavy_module():
    argvs = _help_argvs(main)
    assert ["ingest", "table", "--help"] in argvs and ["split", "--help"] in argvs
    for run in _probe(argvs):
        assert run["heavy"] == [], f"mdprep {' '.join(run['argv'])} imports {', '.join(run['heavy'])}"


def test_import_mdprep_is_light_and_its_names_still_work():
    code = "import sys, mdprep; print(sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[1:])))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code, *HEAVY], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    from mdprep import manifest

    for name in ("CANONICAL_TYPES", "Manifest", "read_manifest", "summarize", "validate", "write_manifest"):
        assert getattr(mdprep, name) is getattr(manifest, name)
        assert name in dir(mdprep) and name in mdprep.__all__
    try:
        mdprep.no_such_name
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("mdprep.no_such_name did not raise AttributeError")


def test_the_command_table_matches_each_command_help():
    assert list(main.commands) == list(COMMANDS)
    for name, (_, _, summary) in COMMANDS.items():
        cmd = main.commands[name]
        assert cmd.name == name
        for limit in (30, 45, 80, 200):
            assert click.Command(name, help=summary).get_short_help_str(limit) == cmd.get_short_help_str(limit), name


def test_the_help_lists_the_commands_as_click_does():
    group = MdprepGroup(name="mdprep", commands=LazyCommands(COMMANDS))  # nothing imported through it yet
    for width in (60, 100, 200):
        ctx = click.Context(group, info_name="mdprep", terminal_width=width, max_content_width=width)
        lazy, eager = ctx.make_formatter(), ctx.make_formatter()
        group.format_commands(ctx, lazy)  # from the table
        assert group.commands.summary("split") is not None
        for name in group.commands:  # import every command, then let click write the section itself
            group.commands[name]
        assert group.commands.summary("split") is None
        click.Group.format_commands(group, ctx, eager)
        assert lazy.getvalue() == eager.getvalue()
        assert "Split MANIFEST into train/val/test" in lazy.getvalue()
        group = MdprepGroup(name="mdprep", commands=LazyCommands(COMMANDS))


def test_shell_completion_lists_commands_and_options(runner):
    env = {"_MDPREP_COMPLETE": "bash_complete", "COMP_WORDS": "mdprep sp", "COMP_CWORD": "1"}
    res = runner.invoke(main, [], env=env, prog_name="mdprep")
    assert res.exit_code == 0 and res.output.split() == ["plain,split"]
    env = {"_MDPREP_COMPLETE": "bash_complete", "COMP_WORDS": "mdprep ingest table --pre", "COMP_CWORD": "3"}
    res = runner.invoke(main, [], env=env, prog_name="mdprep")
    assert res.exit_code == 0 and res.output.split() == ["plain,--preset"]


def test_an_unknown_command_is_a_usage_error(runner):
    res = runner.invoke(main, ["spilt"])
    assert res.exit_code == 2 and "No such command 'spilt'" in res.output
