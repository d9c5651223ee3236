"""``mdprep keygen`` and ``mdprep pseudonymize``."""

from __future__ import annotations

import click

from ..choices import DATE_POLICIES, PATH_POLICIES
from ..errors import UsageError
from ..fileio import check_outputs
from ._ui import echo
from ._options import comma_list, given_list, json_option, key_file_option, output_option, quiet_option, write_json_summary


def summary(result, quiet: bool, path_map: str | None = None) -> None:
    """Every column with its treatment (pseudonymised, shifted, cut to year, dropped, kept, emptied) and why.

    Columns that share a treatment and a reason share a line. Names only, never values.
    """
    from ..pseudonyms import PSEUDONYMISED

    t = result.treatments
    echo(f"Pseudonymised with key fingerprint {result.fingerprint} ({len(result.manifest.frame):,} rows, {len(t)} columns)", quiet)
    groups: dict[tuple[str, str], list[str]] = {}
    for col, treatment, reason in t[["column", "treatment", "reason"]].itertuples(index=False):
        groups.setdefault((treatment, reason), []).append(col)
    for (treatment, reason), cols in groups.items():
        echo(f"  {treatment:<13} {', '.join(cols)}: {reason}", quiet)
    paths_done = bool(len(t[(t["column"] == "path") & (t["treatment"] == PSEUDONYMISED)]))
    if paths_done and not path_map and not quiet:  # a note: -q leaves warnings and errors only
        click.echo(
            "Note: paths were pseudonymised and no path map was written, so `mdprep hash` and `mdprep train` cannot find "
            "the files from this manifest; keep the raw manifest private, or pseudonymise it with --path-map FILE "
            "(or --paths keep)",
            err=True,
        )


@click.command("keygen")
@click.argument("key_file", required=False, type=click.Path(dir_okay=False))
@output_option("KEY_FILE", "The key file to write (permissions 0600; never over an existing file).", required=False, type=click.Path(dir_okay=False))
@quiet_option
def keygen(key_file, output, quiet):
    """Write a new secret pseudonymisation key (32 random bytes, hex) to KEY_FILE with permissions 0600.

    \b
    Keep the key out of the repository: whoever holds it can link pseudonyms back to ids.
    The file is given with -o/--output, as every command's output (a plain KEY_FILE
    argument still works).

    \b
    Example:
      mdprep keygen -o ~/.mdprep/site.key
    """
    from ..pseudonyms import write_key_file

    if key_file and output:
        raise UsageError(f"give the key file once: -o {output} or KEY_FILE {key_file}, not both")
    target = output or key_file
    if not target:
        raise click.UsageError("Missing option '-o' / '--output': the key file to write, for example -o ~/.mdprep/site.key")
    check_outputs({}, {"-o/--output": target})
    write_key_file(target)
    if not quiet:
        click.echo(f"Wrote a new key to {target} (permissions 0600); keep it secret and out of version control", err=True)


@click.command("pseudonymize")
@click.argument("manifest", type=click.Path(dir_okay=False))
@output_option("OUT.parquet", "Pseudonymised manifest to write; '-' for stdout.")
@key_file_option
@click.option("--columns", metavar="COL,...", help="More identifier columns (names ending in 'uid' become UIDs).")
@click.option("--dates", type=click.Choice(DATE_POLICIES), default="shift", show_default=True, help="Every date and date-time: shift per patient (intervals kept), keep the year, or drop.")
@click.option(
    "--paths",
    type=click.Choice(PATH_POLICIES),
    default="auto",
    show_default=True,
    help="Paths: pseudonymise them (auto: when any path spells out an identifier of its row), keep them, or empty them.",
)


@click.option("--path-map", "path_map", metavar="FILE.csv", help="Also write pseudonymised path -> real path (0600; never commit it), for hash and train.")
@click.option("--keep-columns", multiple=True, metavar="COL,...", help="Keep these columns as they are (after checking they identify no one).")
@click.option("--drop-columns", multiple=True, metavar="COL,...", help="Drop these columns.")
@click.option("--cap-age/--no-cap-age", default=True, show_default=True, help="Ages over 89 become 90.")
@click.option("--mapping", "mapping_path", metavar="FILE.csv", help="Also write original-to-pseudonym pairs (0600; never commit it).")
@json_option
@quiet_option
def pseudonymize_cmd(manifest, output, key_file, columns, dates, paths, path_map, keep_columns, drop_columns, cap_age, mapping_path, json_path, quiet):
    """Replace identifiers with keyed pseudonyms so the manifest can be committed.

    \b
    Patient, study, accession and image ids become keyed hex strings; DICOM UIDs
    become 2.25 UIDs; paths that spell out an identifier become keyed names; every
    date moves by one offset per patient; DICOM attributes get their PS3.15 Annex E
    action; names, record numbers, addresses, telephone numbers and e-mail are
    dropped; free text is refused until --keep-columns or --drop-columns names it.
    The same key always gives the same pseudonyms, so splits and audits still work.

    \b
    Example:
      MDPREP_PSEUDONYM_KEY=$(cat site.key) mdprep pseudonymize dicom.parquet -o dicom-pseudo.parquet --path-map private/paths.csv
    """
    from ..manifest import read_manifest, write_manifest
    from ..pseudonyms import load_key, pseudonymize, write_mapping, write_path_map

    check_outputs(
        {"MANIFEST": manifest, "--key-file": key_file},
        {"-o/--output": output, "--mapping": mapping_path, "--path-map": path_map, "--json": json_path},
        stdout={"-o/--output", "--json"},
    )
    key = load_key(key_file)
    m = read_manifest(manifest)
    if path_map and paths in ("keep", "drop"):
        raise UsageError(f"--path-map needs pseudonymised paths; with --paths {paths} there is nothing to map")
    result = pseudonymize(
        m,
        key,
        columns=given_list("--columns", columns) or (),
        dates=dates,
        cap_age=cap_age,
        keep_mapping=bool(mapping_path),
        paths=paths,
        keep_columns=comma_list(keep_columns),
        drop_columns=comma_list(drop_columns),
    )
    write_manifest(result.manifest, output)
    if mapping_path:
        write_mapping(result.mapping, mapping_path)
        click.echo(f"Warning: {mapping_path} links pseudonyms back to real ids (permissions 0600); never commit it", err=True)
    if path_map:
        if len(result.path_map):
            write_path_map(result.path_map, path_map)
            click.echo(f"Warning: {path_map} links pseudonymised paths back to real ones (permissions 0600); never commit it", err=True)
        else:
            echo(f"Note: no path spells out an identifier, so paths were kept and {path_map} was not written", quiet)
    if json_path:
        from ..summaries import pseudonymize_summary

        write_json_summary(json_path, pseudonymize_summary(result, output))
    summary(result, quiet, path_map=path_map if len(result.path_map) else None)
