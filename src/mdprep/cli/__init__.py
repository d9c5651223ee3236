"""The ``mdprep`` command: a thin layer over the library.

Each command parses options, calls one library function, writes its result and
prints a summary on stderr. Library and environment errors become ``Error: ...``
and exit code 2 in one place (:class:`MdprepGroup`); exit code 1 means a check ran
and failed; an unexpected exception is a bug, exit code 3.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping
from gettext import gettext as _

import click

from .. import __version__
from ._ui import reported_errors, termination_unwinds

#: Every command: name -> (module under mdprep.cli, attribute, the first line of its help).
#: A command's module is imported only when the command runs or is asked for its help;
#: ``mdprep --help`` lists the commands from this table without importing any of them
#: (tests/test_cli.py checks each line against the command's own help).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "ingest": ("ingest", "ingest", "Build a manifest (one row per image) from DICOM files, image folders or dataset tables."),
    "split": ("split", "split", "Split MANIFEST into train/val/test and/or K folds; no patient ever crosses parts."),
    "hash": ("audit", "hash_cmd", "Hash every image of MANIFEST once (bytes, decoded pixels, perceptual hash) for the audit."),
    "audit-leakage": ("audit", "audit_leakage", "Find every way a patient or an image crosses splits; exit 1 when leakage is found."),
    "check": ("audit", "check", "The one-stop CI gate: the manifest contract, then the leakage audit."),
    "report": ("audit", "report", "Write one self-contained HTML page about MANIFEST: splits, prevalence, patients, quality, leakage."),
    "weights": ("balance", "weights", "Per-label positive and negative weights for a weighted loss, from the training rows only."),
    "resample": ("balance", "resample", "Over- or under-sample the training rows; every output row traces to an input row."),
    "train": ("train", "train", "Train a multi-label classifier on the train rows (or folds), pick the epoch on the validation rows."),
    "export": ("export", "export", "Write MANIFEST for a trainer outside mdprep: one part per split, folds and labels kept."),
    "keygen": ("pseudonymize", "keygen", "Write a new secret pseudonymisation key (32 random bytes, hex) to KEY_FILE with permissions 0600."),
    "pseudonymize": ("pseudonymize", "pseudonymize_cmd", "Replace identifiers with keyed pseudonyms so the manifest can be committed."),
    "validate": ("validate", "validate", "Check each MANIFEST against the contract (docs/manifest.md) and list every violation."),
    "demo": ("demo", "demo", "Generate a small synthetic cohort and run mdprep on it, printing each equivalent command."),
}


class LazyCommands(MutableMapping):
    """A group's ``commands`` mapping that imports a command's module on first look-up.

    Iterating, ``len`` and ``in`` give the names without importing anything; reading
    ``commands[name]`` (what :meth:`click.Group.get_command` does) imports the one
    module that defines the command.
    """

    def __init__(self, table: dict[str, tuple[str, str, str]]) -> None:
        self._table = dict(table)
        self._loaded: dict[str, click.Command] = {}

    def summary(self, name: str) -> str | None:
        """The first line of the help of a command not imported yet (None once it is)."""
        return None if name in self._loaded or name not in self._table else self._table[name][2]

    def __getitem__(self, name: str) -> click.Command:
        if name not in self._loaded:
            module, attr = self._table[name][:2]  # KeyError for an unknown name, as a dict
            self._loaded[name] = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
        return self._loaded[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        if name not in self:
            raise KeyError(name)
        self._table.pop(name, None)
        self._loaded.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._table or name in self._loaded

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*self._table, *self._loaded]))

    def __len__(self) -> int:
        return len(set(self._table) | set(self._loaded))


class MdprepGroup(click.Group):
    """A click group that maps every library error of its commands in one place.

    SIGTERM and SIGHUP unwind the command like Ctrl-C (:func:`._ui.termination_unwinds`),
    so no temporary file of an atomic write is left behind.
    """

    def invoke(self, ctx: click.Context):
        with reported_errors(), termination_unwinds():
            return super().invoke(ctx)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The "Commands" section of ``mdprep --help``, as click writes it, without importing the commands.

        A command not imported yet is described by its line in :data:`COMMANDS`,
        shortened as click shortens a help text.
        """
        summary = getattr(self.commands, "summary", lambda name: None)
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            text = summary(name)
            if text is not None:  # shortened by click, as the command's own help would be
                rows.append((name, click.Command(name, help=text).get_short_help_str(limit)))
                continue
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit)))
        with formatter.section(_("Commands")):
            formatter.write_dl(rows)


@click.group(
    cls=MdprepGroup,
    commands=LazyCommands(COMMANDS),
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="""\b
Example:
  mdprep demo                                   # the whole pipeline on a generated cohort
  mdprep ingest table Data_Entry_2017.csv.gz --preset nih -o nih.parquet
  mdprep split nih.parquet --ratios 0.7,0.1,0.2 --seed 0 -o nih-split.parquet
  mdprep check nih-split.parquet --junit check.xml
  mdprep export nih-split.parquet --format hf -o nih-hf/

Shell completion: eval "$(_MDPREP_COMPLETE=bash_source mdprep)" (docs/getting-started.md).

Exit codes: 0 success, 1 a check failed, 2 bad input, usage or environment, 3 a bug in mdprep.
""",
)
@click.version_option(__version__, prog_name="mdprep")
@click.option("--debug", is_flag=True, help="Show the traceback of an internal error (exit code 3); also MDPREP_DEBUG=1.")
def main(debug: bool) -> None:
    """Prepare medical-imaging datasets for deep learning and prove they are safe to train on."""
