"""Option helpers shared by several commands."""

from __future__ import annotations

import functools
import math
from typing import Iterable

import click

from ..choices import KEY_ENV
from ..params import SEED_MAX

key_file_option = click.option(
    "--key-file", type=click.Path(dir_okay=False), help=f"Pseudonymisation key file (from mdprep keygen) [default: ${KEY_ENV}]."
)


def comma_list(values: Iterable[str | None]) -> list[str]:
    """Items of repeated and/or comma-separated option values: ``("a,b", "c")`` gives ``["a", "b", "c"]``."""
    out: list[str] = []
    for v in values:
        if v:
            out += [p.strip() for p in v.split(",") if p.strip()]
    return out


def given_list(option: str, values: str | Iterable[str | None] | None) -> list[str] | None:
    """The items of a list option (``"a,b"`` or repeated), None when it was not given; given but empty is a usage error.

    ``--names ''`` (say, an unset shell variable) would otherwise mean "not given" and run with
    the defaults, unnoticed.
    """
    if values is None or (not isinstance(values, str) and not list(values)):
        return None
    items = comma_list([values] if isinstance(values, str) else values)
    if not items:
        raise click.UsageError(f"{option} is empty; give at least one value, or leave the option out")
    return items


class Integer(click.IntRange):
    """An integer within bounds; text that is no integer is "not a valid integer" (not "integer range")."""

    name = "integer"


#: ``--seed``: the range every generator mdprep seeds accepts (mdprep.params.check_seed).
SEED = Integer(0, SEED_MAX)


class FiniteFloat(click.FloatRange):
    """A float within bounds that is also finite: ``nan``, ``inf`` and ``1e400`` are refused.

    (click's FloatRange lets NaN through: every comparison with NaN is false.)
    """

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


#: The one help text of ``--seed`` (``mdprep train`` adds what "the same" means for a training run).
SEED_HELP = "Seed, 0 to 2**32-1: the same inputs and seed give the same bytes."


def seed_option(help: str = SEED_HELP):
    """``--seed`` (default 0), an integer from 0 to 2**32-1."""
    return click.option("--seed", default=0, show_default=True, type=SEED, help=help)


# One CLI grammar (docs/cli.md): the options every command shares are defined here, once,
# so their names, help and defaults cannot drift apart (tests/test_cli_grammar.py walks the
# command tree and checks each use against these).

#: ``-q/--quiet``: the same promise on every command.
QUIET_HELP = "Nothing on stderr but warnings, errors and a gate's verdict: no progress bars, tables, summaries or notes."
quiet_option = click.option("-q", "--quiet", is_flag=True, help=QUIET_HELP)


def not_empty(ctx, param, value):
    """Refuse an empty file name (``--json ""``, ``-o "$UNSET"``): it names no file, and would silently write nothing."""
    if value == "":
        raise click.BadParameter("the path is empty (an unset variable?); give a path, or leave the option out", ctx=ctx, param=param)
    return value


#: ``--json FILE``: the command's summary (or report) as JSON; schemas in docs/cli.md.
JSON_HELP = "Write the summary as JSON to FILE ('-' for stdout); docs/cli.md gives each command's schema."
json_option = click.option("--json", "json_path", metavar="FILE", help=JSON_HELP, callback=not_empty)

#: ``--workers`` for per-file work (ingest dicom, ingest images, hash); the trainer's data loader documents its own default.
WORKERS_HELP = "Processes for the per-file work [default: all cores]; with --scheduler local, the Dask workers started."
workers_option = click.option("--workers", type=click.IntRange(min=1), default=None, help=WORKERS_HELP)


#: ``--root``: where the images of a manifest are (hash, export, train).
root_option = click.option(
    "--root", type=click.Path(file_okay=False), help="Folder the manifest's paths are relative to [default: the recorded root]."
)


def output_option(metavar: str, what: str, *, required: bool = True, **attrs):
    """``-o/--output``: the command's one main output; ``what`` says what is written there."""
    return click.option("-o", "--output", required=required, metavar=metavar, help=what, callback=not_empty, **attrs)


def renamed_option(old: str, new: str, param: str, *, required: bool = False, **attrs):
    """Keep ``old``, a former spelling of the option ``new`` (parameter ``param``), working: hidden, with a warning.

    The value given under ``old`` fills ``param``; giving both is a usage error. ``required``
    is checked here (after the alias is folded in), so ``new`` itself must be declared
    ``required=False``.
    """
    hidden = f"renamed_{param}"

    def decorator(command):
        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            value = kwargs.pop(hidden)
            if value is not None:
                source = click.get_current_context().get_parameter_source(param)
                if source in (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT):
                    raise click.UsageError(f"{old} is the former name of {new}; give {new} only")
                click.echo(f"Warning: {old} is deprecated and will be removed; use {new}", err=True)
                kwargs[param] = value
            if required and kwargs.get(param) is None:
                raise click.UsageError(f"Missing option {new}.")
            return command(*args, **kwargs)

        return click.option(old, hidden, hidden=True, callback=not_empty, **attrs)(wrapper)

    return decorator


def write_json_summary(path: str | None, doc: dict) -> None:
    """Write ``doc`` (a command's summary, :mod:`mdprep.summaries`) as JSON to ``path`` ('-' for stdout); nothing when None."""
    if path:
        import json

        from ..fileio import write_text
        from ..summaries import jsonable

        # Never a NaN or Infinity token (not JSON): what is not finite is null, in split's report too.
        write_text(path, json.dumps(jsonable(doc), indent=2, sort_keys=True, allow_nan=False) + "\n")


def described(choices: dict[str, str]) -> str:
    """``"a: what a does; b: what b does"`` for an option's help, from a ``{choice: description}`` table."""
    return "; ".join(f"{k}: {v}" for k, v in choices.items())


def choice_option(name: str, choices: dict[str, str], default: str, what: str):
    """An option that picks one of ``choices`` (a ``{choice: description}`` table), each described in the help."""
    return click.option(name, type=click.Choice(list(choices)), default=default, show_default=True, help=f"{what}: {described(choices)}.")


def check_incremental(update: str | None, record_signatures: bool, output: str, *, pseudonymised: bool = False) -> tuple[dict, dict]:
    """Refuse --update/--record-signatures where they cannot work; the inputs and outputs they add, for check_outputs."""
    from ..incremental import refuse_unusable, signatures_path

    refuse_unusable(update=update, record_signatures=record_signatures, pseudonymised=pseudonymised, stdout=output == "-")
    inputs = {"--update": update, "--update's signatures": signatures_path(update)} if update else {}
    outputs = {"-o/--output's signatures": signatures_path(output)} if update or record_signatures else {}
    return inputs, outputs


#: ``--update OLD.parquet`` and ``--record-signatures``, shared by ingest dicom, ingest images and hash.
update_options = [
    click.option(
        "--update",
        metavar="OLD.parquet",
        type=click.Path(dir_okay=False),
        help="Read only the files that are new or changed (size, modification time) since OLD.parquet was made, take the rest from it, "
        "drop files that are gone: the output is what a full run gives. Needs OLD.parquet.signatures (--record-signatures); "
        "writes OUT.parquet.signatures.",
    ),
    click.option(
        "--record-signatures",
        is_flag=True,
        help="Also write OUT.parquet.signatures (each file's size and modification time, never in the manifest) for a later --update.",
    ),
]


def incremental_options(command):
    """``--update`` and ``--record-signatures``, handed to the command as ``update`` and ``record_signatures``."""
    for option in reversed(update_options):
        command = option(command)
    return command


def scheduler_options(command):
    """``--scheduler ADDRESS`` (or ``$MDPREP_SCHEDULER``) and ``--scheduler-timeout``, handed to the command as one ``scheduler``.

    ``scheduler`` is None (the local process pool) or a :class:`~mdprep.executor.DaskScheduler`.
    Dask itself is imported only when the command runs with a scheduler.
    """
    from ..choices import CONNECT_TIMEOUT, LOCAL_SCHEDULER, SCHEDULER_ENV

    @functools.wraps(command)
    def wrapper(*args, scheduler, scheduler_timeout, **kwargs):
        if scheduler is None:
            spec = None
        else:
            from ..executor import DaskScheduler  # process pools and Dask only for the commands that use them

            spec = DaskScheduler(scheduler, timeout=scheduler_timeout)
        return command(*args, scheduler=spec, **kwargs)

    options = [
        click.option(
            "--scheduler",
            envvar=SCHEDULER_ENV,
            show_envvar=True,
            metavar="ADDRESS|local",
            help=f"Read the files on a Dask cluster: its scheduler's address (tcp://HOST:8786), or '{LOCAL_SCHEDULER}' to start "
            "one on this machine with --workers processes. Same output as without. Needs pip install 'mdprep[dask]'.",
        ),
        click.option(
            "--scheduler-timeout",
            type=FiniteFloat(min=0, min_open=True),
            default=CONNECT_TIMEOUT,
            show_default=True,
            metavar="SECONDS",
            help="With --scheduler: how long to wait for the scheduler to answer.",
        ),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper
