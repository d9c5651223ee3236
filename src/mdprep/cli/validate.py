"""``mdprep validate``: check manifests against the contract, report every violation."""

from __future__ import annotations

import click

from ..fileio import check_outputs
from ._ui import EXIT_CHECK_FAILED, echo


@click.command("validate")
@click.argument("manifests", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-q", "--quiet", is_flag=True, help="Print only the violations.")
def validate(manifests, quiet):
    """Check each MANIFEST against the contract (docs/manifest.md) and list every violation.

    \b
    Exit codes: 0 all valid, 1 a manifest breaks the contract, 2 a file cannot be read.

    \b
    Example:
      mdprep validate train.parquet test.parquet
    """
    from ..manifest import inspect_manifest

    check_outputs({"MANIFESTS": list(manifests)}, {})
    failed = False
    for path in manifests:
        manifest, violations = inspect_manifest(path)
        if violations:
            failed = True
            click.echo(f"{path}: {len(violations)} violation(s) of the manifest contract", err=True)
            for v in violations:
                click.echo(f"  - [{v.check}] {v.message}", err=True)
        else:
            echo(f"{path}: valid ({len(manifest.frame):,} rows, {len(manifest.labels)} label columns)", quiet)
    if failed:
        click.get_current_context().exit(EXIT_CHECK_FAILED)
