"""``mdprep demo``: a synthetic cohort and the pipeline run on it, step by step."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex

import click

from ._options import output_option, quiet_option, renamed_option, seed_option
from ._ui import echo

IMAGE_REGEX = r"(?P<patient>patient\d+)/(?P<study>study\d+)/view\d+_(?P<view>frontal|lateral)"


def _step(title: str, argv: list[str], quiet: bool) -> None:
    echo("", quiet)
    echo(f"== {title}", quiet)
    echo("$ " + " ".join(shlex.quote(a) for a in argv), quiet)


def _run(ctx: click.Context, title: str, argv: list[str], quiet: bool) -> int:
    """Print ``mdprep ARGV`` and run exactly that command line: the printed command is what ran.

    Returns the command's exit code (a failed gate is shown, not raised).
    """
    from . import main

    _step(title, ["mdprep", *argv], quiet)
    cmd, rest = main, list(argv)
    while isinstance(cmd, click.Group):
        cmd = cmd.get_command(ctx, rest[0])
        rest = rest[1:]
    sub = cmd.make_context(cmd.name, rest, parent=ctx)
    params = {**sub.params, **({"quiet": quiet} if "quiet" in sub.params else {})}
    try:
        ctx.invoke(cmd, **params)
    except click.exceptions.Exit as exc:  # a gate's exit code, shown rather than raised
        echo(f"(exit code {exc.exit_code}{': in CI this fails the build' if exc.exit_code else ''})", quiet)
        return exc.exit_code
    return 0


def _python(title: str, code: str, quiet: bool) -> None:
    """Print ``python3 -c CODE`` (the synthetic data has no mdprep command) and run that code."""
    _step(title, ["python3", "-c", code], quiet)
    exec(code, {})  # noqa: S102 - the demo's own fixed text, printed above so it can be rerun by hand


@click.command("demo")
@output_option("DIR", "Folder for the cohort and the manifests.", required=False, default="demo-output", show_default=True, type=click.Path(file_okay=False))
@click.option("--patients", default=40, show_default=True, type=click.IntRange(min=3), help="Patients per synthetic source (at least 3: the DICOM cohort is split into 5 folds).")
@seed_option("Seed of the synthetic cohort, 0 to 2**32-1: the same seed gives the same cohort.")
@quiet_option
@renamed_option("--out", "-o/--output", "output", type=click.Path(file_okay=False))
@click.pass_context
def demo(ctx, output, patients, seed, quiet):
    """Generate a small synthetic cohort and run mdprep on it, printing each equivalent command.

    \b
    The cohort: a DICOM tree with realistic headers (and planted non-DICOM, truncated,
    corrupt and preamble-less files), CT series ingested one row per series (with planted
    missing slices, a scout, mixed orientations, ...), a CheXpert-style PNG tree, and an
    NIH-style table. Every step prints the command that does it (``python3 -c ...`` for the
    generated data, ``mdprep ...`` for the rest), so each can be rerun by hand.

    \b
    Example:
      mdprep demo -o /tmp/mdprep-demo
    """
    data = os.path.join(output, "data")
    manifests = os.path.join(output, "manifests")
    os.makedirs(manifests, exist_ok=True)
    q = json.dumps  # a path as a Python string literal in double quotes, so the printed command needs no escaping
    dicom_root = os.path.join(data, "dicom")
    images_root = os.path.join(data, "images")
    nih_table = os.path.join(data, "Data_Entry_2017.csv.gz")
    ct_root = os.path.join(data, "ct")
    echo(f"Writing a synthetic cohort under {data} (seed {seed})", quiet)
    _python("A synthetic cohort: a DICOM tree with planted bad files, CT series, a PNG tree and an NIH-style table",
            "from mdprep.synthetic import write_ct_tree, write_dicom_tree, write_image_tree, write_nih_table; "
            f"write_dicom_tree({q(dicom_root)}, patients={patients}, images_per_patient=3, shape=(64, 64), seed={seed}, plant_bad_files=True); "
            f"write_ct_tree({q(ct_root)}, patients={max(2, patients // 8)}, slices=16, shape=(32, 32), seed={seed}); "
            f"write_image_tree({q(images_root)}, patients={patients}, studies=2, seed={seed}, plant_bad_files=True); "
            f"write_nih_table({q(nih_table)}, patients={patients * 5}, seed={seed})", quiet)

    out = lambda name: os.path.join(manifests, name)  # noqa: E731
    _run(ctx, "Ingest a DICOM tree (headers only; bad files are counted, not dropped)",
         ["ingest", "dicom", dicom_root, "-o", out("dicom.parquet"), "--errors", out("dicom-errors.csv")], quiet)
    _run(ctx, "Ingest CT series at series level: one row per scan, volume problems flagged, not dropped",
         ["ingest", "dicom", ct_root, "--level", "series", "-o", out("ct-series.parquet"), "--errors", out("ct-errors.csv")], quiet)
    _run(ctx, "Ingest a folder of PNGs; patient and study come from the path",
         ["ingest", "images", images_root, "--patient-regex", IMAGE_REGEX, "-o", out("images.parquet"), "--errors", out("images-errors.csv")], quiet)
    _run(ctx, "Ingest an NIH ChestX-ray14 style label table", ["ingest", "table", nih_table, "--preset", "nih", "-o", out("nih.parquet")], quiet)
    _run(ctx, "Split by patient into train/val/test, stratified on every label",
         ["split", out("nih.parquet"), "--ratios", "0.7,0.1,0.2", "--seed", "0", "-o", out("nih-split.parquet"), "--json", out("nih-split.json")], quiet)
    _run(ctx, "Five patient-grouped folds of the DICOM cohort, balanced on sex and view",
         ["split", out("dicom.parquet"), "--folds", "5", "--stratify-by", "sex,view", "-o", out("dicom-folds.parquet")], quiet)
    _run(ctx, "Class weights for a weighted loss, from the training rows only",
         ["weights", out("nih-split.parquet"), "--scheme", "balanced", "--clip", "50", "-o", out("weights.json")], quiet)
    _run(ctx, "Multi-label random oversampling of the training rows (every row traceable)",
         ["resample", out("nih-split.parquet"), "--strategy", "ml-ros", "--percent", "25", "-o", out("nih-ros.parquet")], quiet)
    _audit_steps(ctx, data, out, quiet)
    _train_steps(ctx, data, out, quiet)
    checked = [out("dicom.parquet"), out("images.parquet"), out("nih-split.parquet"), out("dicom-folds.parquet"), out("nih-ros.parquet")]
    _run(ctx, "Check the manifests against the contract", ["validate", *checked], quiet)
    echo(f"\nDone. Manifests are in {manifests}; open them with pandas.read_parquet or mdprep.read_manifest.", quiet)


def _audit_steps(ctx, data, out, quiet) -> None:
    """Hash a cohort with planted leaks and show the gate failing on each of them."""
    if importlib.util.find_spec("imagehash") is None:
        echo("\n(Skipping the leakage audit steps: they need the hash extra, pip install 'mdprep[hash]'.)", quiet)
        return
    q = json.dumps
    leaky_root = os.path.join(data, "leaky")
    _python("A cohort with planted leaks and its manifest (a split column, study ids, birth dates)",
            "import os; from mdprep.manifest import Manifest, write_manifest; from mdprep.synthetic import write_leaky_cohort; "
            f"frame, _ = write_leaky_cohort({q(leaky_root)}); "
            f"write_manifest(Manifest(frame, root=os.path.abspath({q(leaky_root)})), {q(out('leaky.parquet'))})", quiet)
    _run(ctx, "Hash every image once (bytes, pixels, perceptual hash) so the audit runs on manifests alone",
         ["hash", out("leaky.parquet"), "-o", out("leaky-hashed.parquet")], quiet)
    _run(ctx, "Audit a split with planted leaks: a shared patient, a shared study, a copied file, "
         "a re-encoded and a brightened copy (the gate fails with exit code 1, and --suggest gives the fix)",
         ["audit-leakage", out("leaky-hashed.parquet"), "--suggest", "--json", out("audit.json"), "--markdown", out("audit.md"), "--junit", out("audit.xml")],
         quiet)
    # The fix: the suggested re-split, which keeps every row where it is unless its linked group is torn.
    with open(out("audit.json"), encoding="utf-8") as fh:
        suggested = json.load(fh)["suggestion"]["argv"]
    suggested[suggested.index("-o") + 1] = out("leaky-fixed.parquet")
    _run(ctx, "The fix: run the suggested split, which links the images the audit found and moves the fewest rows", suggested[1:], quiet)
    _run(ctx, "Audit the fixed split (the gate passes with exit code 0)", ["audit-leakage", out("leaky-fixed.parquet")], quiet)
    _run(ctx, "One HTML page with the splits, label prevalence, patients, quality and the failed audit",
         ["report", out("leaky-hashed.parquet"), "--audit", out("audit.json"), "-o", out("report.html")], quiet)


def _train_steps(ctx, data, out, quiet) -> None:
    """Split, weigh and train the small model for two epochs on a labelled shapes image set."""
    if importlib.util.find_spec("torch") is None:
        echo("\n(Skipping the training step: it needs the train extra, pip install 'mdprep[train]'.)", quiet)
        return
    q = json.dumps
    shapes_root = os.path.join(data, "shapes")
    _python("A labelled image set (circles, squares, stripes; two images per patient) and its manifest",
            "import os; from mdprep.manifest import Manifest, write_manifest; from mdprep.synthetic import SHAPE_LABELS, write_shapes_dataset; "
            f"frame = write_shapes_dataset({q(shapes_root)}, images=240, size=48, dicom_every=10); "
            f"write_manifest(Manifest(frame, labels=SHAPE_LABELS, root=os.path.abspath({q(shapes_root)})), {q(out('shapes.parquet'))})", quiet)
    _run(ctx, "Split the image set by patient", ["split", out("shapes.parquet"), "--ratios", "0.7,0.15,0.15", "--seed", "0", "-o", out("shapes-split.parquet")], quiet)
    _run(ctx, "Class weights from its training rows", ["weights", out("shapes-split.parquet"), "-o", out("shapes-weights.json")], quiet)
    _run(ctx, "Train the bundled small CNN for two epochs on a labelled image set (split by patient, weighted loss)",
         ["train", out("shapes-split.parquet"), "--weights", out("shapes-weights.json"), "-o", out("run"),
          "--arch", "small", "--epochs", "2", "--image-size", "48", "--evaluate-test"], quiet)
    _run(ctx, "Hold out a test set and make 3 patient-grouped folds of the rest",
         ["split", out("shapes.parquet"), "--ratios", "0.8,0.2", "--folds", "3", "--seed", "0", "-o", out("shapes-folds.parquet")], quiet)
    fold_weights = []
    for k in range(3):
        fold_weights.append(out(f"shapes-weights-fold{k}.json"))
        _run(ctx, f"Weights from fold {k}'s training part", ["weights", out("shapes-folds.parquet"), "--fold", str(k), "-o", fold_weights[-1]], quiet)
    _run(ctx, "3-fold cross-validation by patient: one model per fold, out-of-fold predictions for every training image (weights per fold)",
         ["train", out("shapes-folds.parquet"), "--fold", "all", *[a for w in fold_weights for a in ("--weights", w)], "-o", out("cv"),
          "--arch", "small", "--epochs", "2", "--image-size", "48", "--evaluate-test"], quiet)
