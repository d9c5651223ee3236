"""``mdprep demo``: a synthetic cohort and the pipeline run on it, step by step."""

from __future__ import annotations

import importlib.util
import os
import shlex

import click

from .audit import audit_leakage, hash_cmd, report
from .balance import resample, weights
from ._options import output_option, quiet_option, renamed_option, seed_option
from ._ui import echo
from .ingest import ingest_dicom_cmd, ingest_images_cmd, ingest_table_cmd
from .split import split
from .validate import validate

IMAGE_REGEX = r"(?P<patient>patient\d+)/(?P<study>study\d+)/view\d+_(?P<view>frontal|lateral)"


def _step(title: str, argv: list[str], quiet: bool) -> None:
    echo("", quiet)
    echo(f"== {title}", quiet)
    echo("$ mdprep " + " ".join(shlex.quote(a) for a in argv), quiet)


@click.command("demo")
@output_option("DIR", "Folder for the cohort and the manifests.", required=False, default="demo-output", show_default=True, type=click.Path(file_okay=False))
@click.option("--patients", default=40, show_default=True, type=click.IntRange(min=2), help="Patients per synthetic source.")
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
    NIH-style table.

    \b
    Example:
      mdprep demo -o /tmp/mdprep-demo
    """
    from ..synthetic import write_ct_tree, write_dicom_tree, write_image_tree, write_nih_table

    data = os.path.join(output, "data")
    manifests = os.path.join(output, "manifests")
    os.makedirs(manifests, exist_ok=True)
    echo(f"Writing a synthetic cohort under {data} (seed {seed})", quiet)
    dicom_root = os.path.join(data, "dicom")
    images_root = os.path.join(data, "images")
    nih_table = os.path.join(data, "Data_Entry_2017.csv.gz")
    if not os.path.isdir(dicom_root):
        write_dicom_tree(dicom_root, patients=patients, images_per_patient=3, shape=(64, 64), seed=seed, plant_bad_files=True)
    if not os.path.isdir(images_root):
        write_image_tree(images_root, patients=patients, studies=2, seed=seed, plant_bad_files=True)
    write_nih_table(nih_table, patients=patients * 5, seed=seed)
    ct_root = os.path.join(data, "ct")
    if not os.path.isdir(ct_root):
        # Clean axial series, plus one series for each volume problem and an Enhanced CT multi-frame file.
        write_ct_tree(ct_root, patients=max(2, patients // 8), slices=16, shape=(32, 32), seed=seed)

    out = lambda name: os.path.join(manifests, name)  # noqa: E731
    _step("Ingest a DICOM tree (headers only; bad files are counted, not dropped)",
          ["ingest", "dicom", dicom_root, "-o", out("dicom.parquet"), "--errors", out("dicom-errors.csv")], quiet)
    ctx.invoke(ingest_dicom_cmd, root=dicom_root, output=out("dicom.parquet"), tags=(), files_from=None, workers=None,
               errors_path=out("dicom-errors.csv"), pseudonymize=False, key_file=None, quiet=quiet)
    _step("Ingest CT series at series level: one row per scan, volume problems flagged, not dropped",
          ["ingest", "dicom", ct_root, "--level", "series", "-o", out("ct-series.parquet"), "--errors", out("ct-errors.csv")], quiet)
    ctx.invoke(ingest_dicom_cmd, root=ct_root, output=out("ct-series.parquet"), level="series", errors_path=out("ct-errors.csv"), quiet=quiet)
    _step("Ingest a folder of PNGs; patient and study come from the path",
          ["ingest", "images", images_root, "--patient-regex", IMAGE_REGEX, "-o", out("images.parquet"), "--errors", out("images-errors.csv")], quiet)
    ctx.invoke(ingest_images_cmd, root=images_root, patient_regex=IMAGE_REGEX, output=out("images.parquet"), files_from=None,
               workers=None, errors_path=out("images-errors.csv"), pseudonymize=False, key_file=None, quiet=quiet)
    _step("Ingest an NIH ChestX-ray14 style label table",
          ["ingest", "table", nih_table, "--preset", "nih", "-o", out("nih.parquet")], quiet)
    ctx.invoke(ingest_table_cmd, table=nih_table, preset="nih", output=out("nih.parquet"), metadata=None, uncertain="keep",
               image_col=None, patient_col="patient_id", path_col=None, study_col=None, labels_col=None, labels_sep="|",
               label_cols=(), sep=None, encoding="utf-8", image_ext="jpg", image_root=None, pseudonymize=False, key_file=None,
               quiet=quiet)
    _step("Split by patient into train/val/test, stratified on every label",
          ["split", out("nih.parquet"), "--ratios", "0.7,0.1,0.2", "--seed", "0", "-o", out("nih-split.parquet"),
           "--json", out("nih-split.json")], quiet)
    ctx.invoke(split, manifest=out("nih.parquet"), output=out("nih-split.parquet"), group="patient_id", ratios="0.7,0.1,0.2",
               names=None, folds=None, seed=0, stratify=(), stratify_by=(), keep_existing=False, missing_group="error",
               json_path=out("nih-split.json"), quiet=quiet)
    _step("Five patient-grouped folds of the DICOM cohort, balanced on sex and view",
          ["split", out("dicom.parquet"), "--folds", "5", "--stratify-by", "sex,view", "-o", out("dicom-folds.parquet")], quiet)
    ctx.invoke(split, manifest=out("dicom.parquet"), output=out("dicom-folds.parquet"), group="patient_id", ratios=None,
               names=None, folds=5, seed=0, stratify=(), stratify_by=("sex,view",), keep_existing=False, missing_group="error",
               json_path=None, quiet=quiet)
    _step("Class weights for a weighted loss, from the training rows only",
          ["weights", out("nih-split.parquet"), "--scheme", "balanced", "--clip", "50", "-o", out("weights.json")], quiet)
    ctx.invoke(weights, manifest=out("nih-split.parquet"), output=out("weights.json"), split="train", split_col="split",
               scheme="balanced", beta=0.999, sqrt=False, clip=50.0, labels=None, drop_empty=True, quiet=quiet)
    _step("Multi-label random oversampling of the training rows (every row traceable)",
          ["resample", out("nih-split.parquet"), "--strategy", "ml-ros", "--percent", "25", "-o", out("nih-ros.parquet")], quiet)
    ctx.invoke(resample, manifest=out("nih-split.parquet"), output=out("nih-ros.parquet"), strategy="ml-ros", split="train",
               split_col="split", target=None, ratio=None, percent=25.0, cap=None, features=None, seed=0, removed_path=None,
               quiet=quiet)
    _audit_steps(ctx, data, out, quiet)
    _train_steps(ctx, data, out, quiet)
    checked = (out("dicom.parquet"), out("images.parquet"), out("nih-split.parquet"), out("dicom-folds.parquet"), out("nih-ros.parquet"))
    _step("Check the manifests against the contract", ["validate", *checked], quiet)
    ctx.invoke(validate, manifests=checked, quiet=quiet)
    echo(f"\nDone. Manifests are in {manifests}; open them with pandas.read_parquet or mdprep.read_manifest.", quiet)


def _audit_steps(ctx, data, out, quiet) -> None:
    """Hash a cohort with planted leaks and show the gate failing on each of them."""
    if importlib.util.find_spec("imagehash") is None:
        echo("\n(Skipping the leakage audit steps: they need the hash extra, pip install 'mdprep[hash]'.)", quiet)
        return
    from ..manifest import Manifest, write_manifest
    from ..synthetic import write_leaky_cohort

    leaky_root = os.path.join(data, "leaky")
    frame, _ = write_leaky_cohort(leaky_root)
    write_manifest(Manifest(frame, root=os.path.abspath(leaky_root)), out("leaky.parquet"))
    _step("Hash every image once (bytes, pixels, perceptual hash) so the audit runs on manifests alone",
          ["hash", out("leaky.parquet"), "-o", out("leaky-hashed.parquet")], quiet)
    ctx.invoke(hash_cmd, manifest=out("leaky.parquet"), output=out("leaky-hashed.parquet"), root=None, workers=None,
               errors_path=None, quiet=quiet)
    argv = ["audit-leakage", out("leaky-hashed.parquet"), "--suggest", "--json", out("audit.json"), "--markdown", out("audit.md"), "--junit", out("audit.xml")]
    _step("Audit a split with planted leaks: a shared patient, a shared study, a copied file, "
          "a re-encoded and a brightened copy (the gate fails with exit code 1, and --suggest gives the fix)", argv, quiet)
    try:
        ctx.invoke(audit_leakage, manifests=(out("leaky-hashed.parquet"),), json_path=out("audit.json"), junit_path=out("audit.xml"),
                   markdown_path=out("audit.md"), suggest=True, quiet=quiet)
    except click.exceptions.Exit as exc:  # the gate's exit code, shown rather than raised
        echo(f"(exit code {exc.exit_code}: in CI this fails the build)", quiet)
    # The fix: the suggested re-split, which keeps every row where it is unless its linked group is torn.
    import json

    with open(out("audit.json"), encoding="utf-8") as fh:
        suggested = json.load(fh)["suggestion"]["argv"]
    suggested[suggested.index("-o") + 1] = out("leaky-fixed.parquet")
    _step("The fix: run the suggested split, which links the images the audit found and moves the fewest rows",
          suggested[1:], quiet)
    sub = split.make_context("split", list(suggested[2:]), parent=ctx)
    ctx.invoke(split, **{**sub.params, "quiet": quiet})
    _step("Audit the fixed split (the gate passes with exit code 0)", ["audit-leakage", out("leaky-fixed.parquet")], quiet)
    try:
        ctx.invoke(audit_leakage, manifests=(out("leaky-fixed.parquet"),), quiet=quiet)
    except click.exceptions.Exit as exc:
        echo(f"(exit code {exc.exit_code})", quiet)
    _step("One HTML page with the splits, label prevalence, patients, quality and the failed audit",
          ["report", out("leaky-hashed.parquet"), "--audit", out("audit.json"), "-o", out("report.html")], quiet)
    ctx.invoke(report, manifest=out("leaky-hashed.parquet"), output=out("report.html"), audit_path=out("audit.json"), title=None)


def _train_steps(ctx, data, out, quiet) -> None:
    """Split, weigh and train the small model for two epochs on a labelled shapes image set."""
    if importlib.util.find_spec("torch") is None:
        echo("\n(Skipping the training step: it needs the train extra, pip install 'mdprep[train]'.)", quiet)
        return
    from ..manifest import Manifest, write_manifest
    from ..splitting import split_manifest
    from ..synthetic import SHAPE_LABELS, write_shapes_dataset
    from .train import train

    shapes_root = os.path.join(data, "shapes")
    frame = write_shapes_dataset(shapes_root, images=240, size=48, dicom_every=10)
    labelled = Manifest(frame, labels=SHAPE_LABELS, root=os.path.abspath(shapes_root))
    write_manifest(labelled, out("shapes.parquet"))
    write_manifest(split_manifest(labelled, ratios=(0.7, 0.15, 0.15), seed=0).manifest, out("shapes-split.parquet"))
    ctx.invoke(weights, manifest=out("shapes-split.parquet"), output=out("shapes-weights.json"), split="train", split_col="split",
               scheme="balanced", beta=0.999, sqrt=False, clip=None, labels=None, drop_empty=False, quiet=True)
    argv = ["train", out("shapes-split.parquet"), "--weights", out("shapes-weights.json"), "-o", out("run"),
            "--arch", "small", "--epochs", "2", "--image-size", "48", "--evaluate-test"]
    _step("Train the bundled small CNN for two epochs on a labelled image set (split by patient, weighted loss)", argv, quiet)
    ctx.invoke(train, manifest=out("shapes-split.parquet"), root=None, weights_path=(out("shapes-weights.json"),), output=out("run"),
               arch="small", epochs=2, batch_size=32, image_size=48, lr=3e-3, pretrained=None, freeze_backbone=False,
               augment="cxr-safe", hflip=False, device="auto", seed=0, workers=0, evaluate_test=True, allow_leakage=False,
               quiet=quiet)
    _step("Hold out a test set and make 3 patient-grouped folds of the rest, then weights from each fold's training part",
          ["split", out("shapes.parquet"), "--ratios", "0.8,0.2", "--folds", "3", "-o", out("shapes-folds.parquet"), "&&", "mdprep", "weights",
           out("shapes-folds.parquet"), "--fold", "K", "-o", out("shapes-weights-foldK.json")], quiet)
    write_manifest(split_manifest(labelled, ratios=(0.8, 0.2), folds=3, seed=0).manifest, out("shapes-folds.parquet"))
    fold_weights = []
    for k in range(3):
        fold_weights.append(out(f"shapes-weights-fold{k}.json"))
        ctx.invoke(weights, manifest=out("shapes-folds.parquet"), output=fold_weights[-1], fold=k, quiet=True)
    argv = ["train", out("shapes-folds.parquet"), "--fold", "all", *[a for w in fold_weights for a in ("--weights", w)], "-o", out("cv"),
            "--arch", "small", "--epochs", "2", "--image-size", "48", "--evaluate-test"]
    _step("3-fold cross-validation by patient: one model per fold, out-of-fold predictions for every training image (weights per fold)", argv, quiet)
    ctx.invoke(train, manifest=out("shapes-folds.parquet"), weights_path=tuple(fold_weights), output=out("cv"), fold="all",
               arch="small", epochs=2, image_size=48, lr=3e-3, evaluate_test=True, quiet=quiet)
