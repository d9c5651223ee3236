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


def seed_option(help: str):
    """``--seed`` (default 0), an integer from 0 to 2**32-1."""
    return click.option("--seed", default=0, show_default=True, type=SEED, help=help)


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
