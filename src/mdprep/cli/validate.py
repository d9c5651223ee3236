"""``mdprep validate``: check manifests against the contract, report every violation."""

from __future__ import annotations

import click

from ..fileio import check_outputs
from ._options import json_option, quiet_option, write_json_summary
from ._ui import EXIT_CHECK_FAILED, echo


@click.command("validate")
@click.argument("manifests", nargs=-1, required=True, type=click.Path(dir_okay=False))
@json_option
@quiet_option
def validate(manifests, json_path, quiet):
    """Check each MANIFEST against the contract (docs/manifest.md) and list every violation.

    \b
    Exit codes: 0 all valid, 1 a manifest breaks the contract, 2 a file cannot be read.

    \b
    Example:
      mdprep validate train.parquet test.parquet --json contract.json
    """
    from ..audit import visible
    from ..manifest import inspect_manifest

    check_outputs({"MANIFESTS": list(manifests)}, {"--json": json_path}, stdout={"--json"})
    checked = []
    for path in manifests:
        manifest, violations = inspect_manifest(path)
        checked.append((path, manifest, violations))
        shown = visible(path)  # no control character of a file name reaches the terminal
        if violations:
            click.echo(f"{shown}: {len(violations)} violation(s) of the manifest contract", err=True)
            for v in violations:
                click.echo(f"  - [{v.check}] {v.message}", err=True)
        else:
            echo(f"{shown}: valid ({len(manifest.frame):,} rows, {len(manifest.labels)} label columns)", quiet)
    if json_path:
        from ..summaries import validate_summary

        write_json_summary(json_path, validate_summary(checked))
    if any(vs for _, _, vs in checked):
        click.get_current_context().exit(EXIT_CHECK_FAILED)
