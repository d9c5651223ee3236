"""Option helpers shared by several commands."""

from __future__ import annotations

import math
from typing import Iterable

import click

from ..params import SEED_MAX
from ..pseudonyms import KEY_ENV

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

