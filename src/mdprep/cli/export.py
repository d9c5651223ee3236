"""``mdprep export``: a manifest for trainers outside mdprep (MONAI, Hugging Face, CSV)."""

from __future__ import annotations

import click

from ..choices import EXPORT_FORMATS as FORMATS, EXPORT_MISSING as MISSING, EXPORT_UNCERTAIN as UNCERTAIN
from ..fileio import check_outputs, file_fingerprint
from ._options import described, given_list, json_option, output_option, quiet_option, root_option, write_json_summary
from ._ui import echo, print_table


@click.command("export")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", required=True, type=click.Choice(list(FORMATS)), help=f"What to write: {described(FORMATS)}.")
@output_option("OUT", "monai: the datalist JSON file ('-' for stdout); hf, csv: the folder to write.")
@root_option
@click.option("--relative", is_flag=True, help="Write the paths as the manifest holds them, relative to the root (MONAI's base_dir), instead of absolute.")
@click.option("--uncertain", type=click.Choice(list(UNCERTAIN)), help=f"monai: how an uncertain (-1) label is written [default: ignore]: {described(UNCERTAIN)}.")
@click.option("--missing", type=click.Choice(list(MISSING)), help=f"monai: how a missing (null) label is written [default: ignore]: {described(MISSING)}.")
@click.option("--columns", multiple=True, metavar="COL,...", help="More manifest columns to carry (view, sex, age, ...).")
@click.option("--allow-leakage", is_flag=True, help="Export even if patients or images appear in more than one split or fold (not recommended; recorded).")
@json_option
@quiet_option
def export(manifest, fmt, output, root, relative, uncertain, missing, columns, allow_leakage, json_path, quiet):
    """Write MANIFEST for a trainer outside mdprep: one part per split, folds and labels kept.

    \b
    Parts: train (splits train, trainval), validation (val, valid, dev), test; any other
    split keeps its name; rows with no split are the part 'unassigned'. Every row is written once
    (synthetic rows of `mdprep resample`, which have no image, are left out and counted).
    Image paths are absolute (the root joined) unless --relative.

    \b
    First the leakage checks that read the manifest only (patients, studies, ids,
    hashes across splits and folds) run: leakage refuses the export (exit code 2,
    as `mdprep train` does) unless --allow-leakage.

    \b
    Examples:
      mdprep export nih-split.parquet --format monai -o nih-datalist.json
      mdprep export nih-split.parquet --format hf -o nih-hf/ --columns view,sex,age
      mdprep export nih-split.parquet --format csv -o nih-csv/
    """
    from ..export import CARD_NAME, export_files, export_manifest
    from ..manifest import read_manifest

    def guard(names):  # monai writes one file; hf and csv a folder of files named after the splits
        folders = {"-o/--output": names} if fmt != "monai" else None
        check_outputs(
            {"MANIFEST": manifest}, {"-o/--output": output, "--json": json_path}, stdout={"-o/--output", "--json"} if fmt == "monai" else {"--json"},
            folders=folders,
        )

    guard((CARD_NAME,))
    m = read_manifest(manifest)
    guard(export_files(m, fmt))
    result = export_manifest(
        m, fmt, output, root=root, relative=relative, uncertain=uncertain, missing=missing, columns=given_list("--columns", columns) or [],
        allow_leakage=allow_leakage, inputs=[file_fingerprint(manifest)],
    )
    if json_path:
        from ..summaries import export_summary

        write_json_summary(json_path, export_summary(result, output))
    if quiet:
        return
    from rich.markup import escape as escape_markup
    from rich.table import Table

    from ..audit import visible

    echo(f"Leakage audit: {result.verdict}")
    table = Table(title=f"{result.rows:,} rows exported ({fmt})", title_justify="left")
    for col, just in (("part", "left"), ("written as", "left"), ("rows", "right"), ("manifest splits", "left")):
        table.add_column(col, justify=just)
    for p in result.parts:
        table.add_row(p.name, p.key, f"{p.rows:,}", escape_markup(visible(", ".join(p.splits))) or "-")
    print_table(table)
    left = f"; {result.synthetic:,} synthetic row(s) left out" if result.synthetic else ""
    sums = " + ".join(f"{p.rows:,}" for p in result.parts)
    where = "standard output" if output == "-" else output
    echo(f"{result.manifest_rows:,} manifest rows = {sums} exported{left}; wrote {where}")
