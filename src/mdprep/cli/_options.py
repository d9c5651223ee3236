"""Option helpers shared by several commands."""

from __future__ import annotations

from typing import Iterable

import click

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
