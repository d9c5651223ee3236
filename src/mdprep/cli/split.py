"""``mdprep split``: patient-grouped, multi-label stratified splits and folds."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ..choices import MISSING_GROUP_POLICIES, PERSON_COLUMNS
from ._ui import print_table, status
from ._options import comma_list, given_list, json_option, output_option, quiet_option, renamed_option, seed_option, write_json_summary

if TYPE_CHECKING:
    from rich.table import Table

    from ..splitting import SplitQuality


def _floats(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers, for example 0.7,0.1,0.2") from None


def quality_table(q: SplitQuality, title: str, groups: str = "groups") -> Table:
    """Per part: images, patients, size against target, and per label positives, prevalence and deviation."""
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    t.add_column("label")
    t.add_column("overall", justify="right")
    for p in q.parts:
        t.add_column(p.name, justify="right")
    t.add_row("images", "", *[f"{p.images:,} ({p.size_deviation:+.1%})" for p in q.parts])
    t.add_row(groups, "", *[f"{p.groups:,}" for p in q.parts], end_section=True)
    for label in q.labels:
        t.add_row(
            label,
            f"{q.overall_prevalence[label]:.2%}",
            *[f"{p.positives[label]:,} {p.prevalence[label]:.2%} ({p.deviation[label] * 100:+.2f})" for p in q.parts],
        )
    return t


def components_table(linked, group: str) -> Table:
    """The largest merged components: rows, groups, the links that joined them, some of their group values."""
    from rich.markup import escape as escape_markup
    from rich.table import Table

    from ..audit import visible

    t = Table(title=f"Largest merged components (--link; limit {linked.max_component:,} rows)", title_justify="left")
    t.add_column("rows", justify="right")
    t.add_column(f"{group} values", justify="right")
    t.add_column("joined by (pairs)")
    t.add_column("for example", overflow="fold")
    for c in linked.largest:
        joined = ", ".join(f"{k} ({v:,})" for k, v in c.links.items() if v)
        t.add_row(f"{c.rows:,}", f"{c.groups:,}", escape_markup(visible(joined)), escape_markup(visible(", ".join(c.examples))))
    return t


def _summary(q: SplitQuality) -> str:
    return (
        f"LD {q.label_distribution:.5f}, ED {q.examples_distribution:.1f} images, "
        f"max prevalence deviation {q.max_prevalence_deviation * 100:.2f} points, "
        f"{q.zero_positive_pairs} ({q.kind}, label) pair(s) without positives, group overlap {q.group_overlap}"
    )


@click.command("split")
@click.argument("manifest", type=click.Path(dir_okay=False))
@output_option("OUT.parquet", "Manifest to write with a split and/or fold column; '-' for stdout.")
@click.option("--group", default="patient_id", show_default=True, help="Column whose values never cross parts (patient, study, site).")
@click.option("--ratios", help="Shares of the images per part, summing to 1 [default: 0.7,0.1,0.2 unless --folds alone].")
@click.option("--names", help="Part names [default: train,val,test for 3 ratios, train,test for 2].")
@click.option("--folds", type=click.IntRange(min=2), help="Also (or only) write a fold column 0..K-1; with --ratios the last part is held out.")
@seed_option()
@click.option("--stratify", multiple=True, metavar="LABEL,...", help="Label columns to balance [default: all label columns].")
@click.option(
    "--stratify-by", multiple=True, metavar="COL,...",
    help="Metadata columns to balance too (sex, view, site). COL:WIDTH or COL:EDGE,EDGE,... bins a numeric column; age is binned in decades by default.",
)


@click.option(
    "--keep-existing", is_flag=True,
    help="Rows that already have a split (and fold) keep it and their groups follow them; a group torn between splits goes whole to where most of its rows are, so the fewest rows move.",
)


@click.option("--missing-group", type=click.Choice(MISSING_GROUP_POLICIES), default="error", show_default=True, help="Rows without a group: fail, or make each its own group.")
@click.option(
    "--link", "links", multiple=True, metavar="COL,...",
    help="Also keep together rows sharing a value of these columns (study_id, accession, file_sha256, pixel_sha256), "
    "near-identical images (phash, phash:T for T bits) or person columns (same_person).",
)


@click.option(
    "--max-component", metavar="ROWS|P%",
    help="The most rows --link may join to a group's largest patient, in rows or a share of the manifest [default: 1%, at least 100 rows]; more is an error naming the link.",
)


@click.option("--person-cols", default=",".join(PERSON_COLUMNS), show_default=True, help="Columns that together suggest one person (--link same_person).")
@json_option
@quiet_option
@renamed_option("--report", "--json", "json_path", metavar="FILE")
def split(manifest, output, group, ratios, names, folds, seed, stratify, stratify_by, keep_existing, missing_group, links, max_component, person_cols, json_path, quiet):
    """Split MANIFEST into train/val/test and/or K folds; no patient ever crosses parts.

    \b
    Groups (patients) are assigned whole by iterative stratification, rarest label
    first, so every label's prevalence stays close to the whole manifest's. Uncertain
    (-1) and missing labels are not counted as positives.

    \b
    Examples:
      mdprep split nih.parquet --ratios 0.7,0.1,0.2 --seed 0 -o nih-split.parquet
      mdprep split nih.parquet --folds 5 --stratify-by sex,view -o nih-5fold.parquet
      mdprep split chex.parquet --stratify-by sex,age:0,18,40,65,120 -o chex-split.parquet
      mdprep split nih.parquet --ratios 0.8,0.2 --names trainval,test --folds 5 -o cv.parquet --json split.json
      mdprep split hashed.parquet --link study_id,file_sha256,pixel_sha256,phash -o linked-split.parquet
    """
    from ..audit import visible
    from ..fileio import check_outputs, file_fingerprint
    from ..linking import link_items
    from ..manifest import read_manifest, write_manifest
    from ..splitting import split_manifest, stratify_by_items

    check_outputs({"MANIFEST": manifest}, {"-o/--output": output, "--json": json_path}, stdout={"-o/--output", "--json"})
    if links and not link_items(links):
        raise click.UsageError("--link is empty; give column names, phash[:T] or same_person, for example --link study_id,file_sha256")
    names_list = given_list("--names", names)
    if stratify_by and not any(item.strip() for item in stratify_by):
        raise click.UsageError("--stratify-by is empty; give at least one column (sex, view, age:10, ...), or leave the option out")
    with status(f"Splitting {manifest}", quiet):
        # Text stays in Arrow as read (no pandas copy of it): split_manifest and the writer take it as it is.
        # The input manifest is not kept beside the result: the columns the split replaced go before the write.
        result = split_manifest(
            read_manifest(manifest, arrow_text=True),
            group=group,
            ratios=_floats(ratios),
            names=names_list,
            folds=folds,
            seed=seed,
            stratify=given_list("--stratify", stratify),
            stratify_by=stratify_by_items(stratify_by),
            keep_existing=keep_existing,
            missing_group=missing_group,
            links=link_items(links),
            max_component=max_component,
            person_columns=comma_list([person_cols]),
            inputs=[file_fingerprint(manifest)],
        )
        write_manifest(result.manifest, output)
    write_json_summary(json_path, result.report())
    for note in result.notes if not quiet else ():
        click.echo(visible(f"Note: {note}"), err=True)
    if result.links is not None and result.links.largest and not quiet:
        print_table(components_table(result.links, group))
    for q, title in ((result.split_quality, "Split"), (result.fold_quality, "Folds")):
        if q is None:
            continue
        if not quiet:
            groups = "groups (linked)" if result.links is not None else "groups"
            print_table(quality_table(q, f"{title}: positives, prevalence (deviation in points)", groups))
            click.echo(f"{title}: {_summary(q)}", err=True)
    if not quiet:
        click.echo(f"Wrote {output}", err=True)
