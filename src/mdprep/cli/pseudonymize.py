"""``mdprep keygen`` and ``mdprep pseudonymize``."""

from __future__ import annotations

import click

from ..fileio import check_outputs
from ..manifest import read_manifest, write_manifest
from ..pseudonyms import DATE_POLICIES, load_key, pseudonymize, write_key_file, write_mapping
from ._ui import echo
from ._options import comma_list, key_file_option

def summary(result, quiet: bool) -> None:
    """What was transformed, dropped and kept, with the PS3.15 Annex E handling."""
    echo(f"Pseudonymised with key fingerprint {result.fingerprint} ({len(result.manifest.frame):,} rows)", quiet)
    for col, note in result.transformed.items():
        echo(f"  transformed {col}: {note}", quiet)
    for col, note in result.dropped.items():
        echo(f"  dropped {col}: {note}", quiet)
    if result.kept:
        echo(f"  kept {', '.join(result.kept)}: Retain Patient Characteristics Option", quiet)


@click.command("keygen")
@click.argument("key_file", type=click.Path(dir_okay=False))
def keygen(key_file):
    """Write a new secret pseudonymisation key (32 random bytes, hex) to KEY_FILE with permissions 0600.

    \b
    Keep the key out of the repository: whoever holds it can link pseudonyms back to ids.
    Example:
      mdprep keygen ~/.mdprep/site.key
    """
    check_outputs({}, {"KEY_FILE": key_file})
    write_key_file(key_file)
    click.echo(f"Wrote a new key to {key_file} (permissions 0600); keep it secret and out of version control", err=True)


@click.command("pseudonymize")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, metavar="OUT.parquet", help="Pseudonymised manifest to write; '-' for stdout.")
@key_file_option
@click.option("--columns", metavar="COL,...", help="More identifier columns (names ending in 'uid' become UIDs).")
@click.option("--dates", type=click.Choice(DATE_POLICIES), default="shift", show_default=True, help="Dates: shift per patient (intervals kept), keep the year, or drop.")
@click.option("--cap-age/--no-cap-age", default=True, show_default=True, help="Ages over 89 become 90.")
@click.option("--mapping", "mapping_path", metavar="FILE.csv", help="Also write original-to-pseudonym pairs (0600; never commit it).")
@click.option("-q", "--quiet", is_flag=True, help="No summary.")
def pseudonymize_cmd(manifest, output, key_file, columns, dates, cap_age, mapping_path, quiet):
    """Replace identifiers with keyed pseudonyms so the manifest can be committed.

    \b
    Patient, study and accession ids become keyed hex strings; DICOM UIDs become
    2.25 UIDs; dates are shifted per patient; direct identifiers are dropped.
    The same key always gives the same pseudonyms, so splits and audits still work.

    \b
    Example:
      MDPREP_PSEUDONYM_KEY=$(cat site.key) mdprep pseudonymize dicom.parquet -o dicom-pseudo.parquet
    """
    check_outputs({"MANIFEST": manifest, "--key-file": key_file}, {"-o/--output": output, "--mapping": mapping_path}, stdout={"-o/--output"})
    key = load_key(key_file)
    m = read_manifest(manifest)
    result = pseudonymize(m, key, columns=comma_list([columns]) if columns else (), dates=dates, cap_age=cap_age, keep_mapping=bool(mapping_path))
    write_manifest(result.manifest, output)
    if mapping_path:
        write_mapping(result.mapping, mapping_path)
        click.echo(f"Warning: {mapping_path} links pseudonyms back to real ids (permissions 0600); never commit it", err=True)
    summary(result, quiet)
