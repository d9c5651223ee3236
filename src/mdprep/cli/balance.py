"""``mdprep weights`` and ``mdprep resample``: class-imbalance remedies from the training rows."""

from __future__ import annotations

import json

import click

from ..choices import SCHEMES, STRATEGIES
from ..errors import UsageError
from ..fileio import check_outputs, file_fingerprint, write_text
from ._ui import print_table
from ._options import FiniteFloat, given_list, json_option, output_option, quiet_option, seed_option, write_json_summary


@click.command("weights")
@click.argument("manifest", type=click.Path(dir_okay=False))
@output_option("weights.json", "Weights document to write (schema mdprep-weights v1); '-' for stdout.")
@click.option("--split", default="train", show_default=True, help="Rows to count: a split name, or 'all' (warns when that includes val/test).")
@click.option("--split-col", default="split", show_default=True, help="Column holding the split names.")
@click.option("--fold", type=click.IntRange(min=0), metavar="K", help="Count the training part of fold K (the non-test rows of the other folds) instead of --split, so the weights never see fold K's validation labels.")
@click.option("--fold-col", default="fold", show_default=True, help="Column holding the folds (with --fold).")
@click.option("--scheme", type=click.Choice(SCHEMES), default="balanced", show_default=True, help="How counts become weights (docs/weights.md).")
@click.option("--beta", default=0.999, show_default=True, type=FiniteFloat(0, 1, min_open=True, max_open=True), help="effective: the beta of Cui et al. 2019, between 0 and 1.")
@click.option("--sqrt", is_flag=True, help="Take the square root of every weight (softer).")
@click.option("--clip", type=FiniteFloat(min=0, min_open=True), metavar="MAX", help="Cap every weight at MAX (above 0).")
@click.option("--labels", metavar="A,B,...", help="Only these label columns [default: all].")
@click.option("--drop-empty", is_flag=True, help="Leave out labels with no positives (or no negatives) instead of giving them neutral weights.")
@json_option
@quiet_option
def weights(manifest, output, split, split_col, fold, fold_col, scheme, beta, sqrt, clip, labels, drop_empty, json_path, quiet):
    """Per-label positive and negative weights for a weighted loss, from the training rows only.

    \b
    Uncertain (-1) and missing labels are not counted (reported as ignored).
    A label with no positives or no negatives in those rows gets neutral weights
    (pos_weight 1) and a warning, unless --drop-empty leaves it out.

    \b
    Examples:
      mdprep weights nih-split.parquet -o weights.json
      mdprep weights nih-split.parquet --scheme pos-weight --sqrt --clip 50 -o weights.json
      mdprep weights folds.parquet --fold 2 -o weights-fold2.json
    """
    if fold is not None and click.get_current_context().get_parameter_source("split") is click.core.ParameterSource.COMMANDLINE:
        raise UsageError("--split and --fold choose the rows in two different ways; give one of them")
    from ..manifest import read_manifest
    from ..weights import compute_weights

    check_outputs({"MANIFEST": manifest}, {"-o/--output": output, "--json": json_path}, stdout={"-o/--output", "--json"})
    m = read_manifest(manifest)
    result = compute_weights(
        m, split=split, split_col=split_col, scheme=scheme, beta=beta, sqrt=sqrt, clip=clip,
        labels=given_list("--labels", labels), drop_empty=drop_empty, fold=fold, fold_col=fold_col,
    )
    doc = result.document({"manifest": file_fingerprint(manifest), "manifest_history": list(m.history)})
    write_text(output, json.dumps(doc, indent=2) + "\n")
    rows_from = split if fold is None else f"fold {fold} training"
    if json_path:
        from ..summaries import weights_summary

        write_json_summary(json_path, weights_summary(result, scheme=scheme, rows_from=rows_from, output=output))
    if quiet:  # notes too: -q leaves warnings and errors only (the --json summary keeps the notes)
        return
    for note in result.notes:
        click.echo(f"Note: {note}", err=True)
    from rich.table import Table

    table = Table(title=f"{scheme} weights from {result.rows:,} {rows_from} rows", title_justify="left")
    for col, just in (("label", "left"), ("positive", "right"), ("negative", "right"), ("ignored", "right"), ("w_pos", "right"), ("w_neg", "right")):
        table.add_column(col, justify=just)
    for w in result.weights:
        mark = " (neutral)" if w.neutral else ""
        table.add_row(f"{w.label}{mark}", f"{w.n_pos:,}", f"{w.n_neg:,}", f"{w.n_ignored:,}", f"{w.w_pos:.4f}", f"{w.w_neg:.4f}")
    print_table(table)
    click.echo(f"Wrote {output}", err=True)


@click.command("resample")
@click.argument("manifest", type=click.Path(dir_okay=False))
@output_option("OUT.parquet", "Resampled manifest to write; '-' for stdout.")
@click.option("--strategy", type=click.Choice(STRATEGIES), required=True, help="over, under (one --target), ml-ros, ml-rus (all labels), patient-cap, smote, adasyn (--features).")
@click.option("--split", default="train", show_default=True, help="The split to resample; val and test are refused.")
@click.option("--split-col", default="split", show_default=True, help="Column holding the split names.")
@click.option("--target", help="over/under/smote/adasyn: the label or categorical column to balance.")
@click.option("--ratio", help="over/under/smote/adasyn: imbalanced-learn's sampling_strategy (a float, or auto, minority, not majority, ...).")
@click.option("--percent", default=25.0, show_default=True, type=FiniteFloat(0, 100, min_open=True), help="ml-ros/ml-rus: rows to clone or remove, in % of the split (above 0, up to 100).")
@click.option("--cap", type=click.IntRange(min=1), help="patient-cap: the most images kept per patient (at least 1).")
@click.option("--features", metavar="COL,...", help="smote/adasyn: numeric feature columns (embeddings, radiomics).")
@seed_option()
@click.option("--removed", "removed_path", metavar="FILE", help="Write the removed rows (.csv or .parquet).")
@json_option
@quiet_option
def resample(manifest, output, strategy, split, split_col, target, ratio, percent, cap, features, seed, removed_path, json_path, quiet):
    """Over- or under-sample the training rows; every output row traces to an input row.

    \b
    Output rows carry source_image_id and copy_index (0 original, 1.. clones); clones get
    image ids IMAGE#copyK. Other splits pass through unchanged.

    \b
    Examples:
      mdprep resample nih-split.parquet --strategy ml-ros --percent 25 -o nih-ros.parquet
      mdprep resample nih-split.parquet --strategy over --target Hernia --ratio 0.1 -o hernia.parquet
      mdprep resample nih-split.parquet --strategy patient-cap --cap 10 --removed capped.csv -o capped.parquet
    """
    from ..ingest import write_errors
    from ..manifest import read_manifest, write_manifest
    from ..resample import resample_manifest

    check_outputs({"MANIFEST": manifest}, {"-o/--output": output, "--removed": removed_path, "--json": json_path}, stdout={"-o/--output", "--json"})
    m = read_manifest(manifest)
    result = resample_manifest(
        m, strategy=strategy, split=split, split_col=split_col, target=target, ratio=ratio, percent=percent, cap=cap,
        features=given_list("--features", features) or (), seed=seed, inputs=[file_fingerprint(manifest)],
    )
    write_manifest(result.manifest, output)
    if removed_path:
        write_errors(result.removed, removed_path)
    elif len(result.removed):
        click.echo(f"{len(result.removed):,} row(s) removed from {split}; pass --removed FILE to keep a record of them", err=True)
    if json_path:
        from ..summaries import resample_summary

        write_json_summary(json_path, resample_summary(result, strategy=strategy, split=split, output=output))
    if quiet:
        return
    from rich.table import Table

    b, a = result.before, result.after
    table = Table(title=f"{split}: before and after {strategy}", title_justify="left")
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_row("rows", f"{b.rows:,}", f"{a.rows:,}")
    table.add_row("patients", f"{b.patients:,}", f"{a.patients:,}")
    table.add_row("MeanIR", f"{b.mean_ir:.2f}", f"{a.mean_ir:.2f}", end_section=True)
    for label in b.positives:
        table.add_row(f"{label} (positives, IRLbl)", f"{b.positives[label]:,} ({b.irlbl[label]:.1f})", f"{a.positives[label]:,} ({a.irlbl[label]:.1f})")
    print_table(table)
    click.echo(f"Wrote {output}", err=True)
