"""``mdprep train``: the bundled trainer (PyTorch, or Keras 3 on its torch backend)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ..errors import UsageError
from ..fileio import check_outputs, file_fingerprint
from ..params import MAX_BATCH_SIZE, MAX_IMAGE_SIZE, MAX_LR, MIN_IMAGE_SIZE
from ._ui import _animate, print_table
from ._options import FiniteFloat, output_option, quiet_option, renamed_option, root_option, seed_option
from .audit import allow_outside_root_option, path_map_option

if TYPE_CHECKING:
    from rich.table import Table

ARCHES = ("densenet121", "resnet18", "small")


class FoldParam(click.ParamType):
    """A fold number (0 or more) or ``all``."""

    name = "K|all"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == "all":
            return value
        text = str(value).strip()
        if text.isascii() and text.isdigit():
            return int(text)
        self.fail(f"{value!r} is not a fold number (0, 1, ...) or 'all'", param, ctx)


@click.command("train")
@click.argument("manifest", type=click.Path(dir_okay=False))
@root_option
@click.option(
    "--weights", "weights_path", multiple=True, type=click.Path(dir_okay=False),
    help="weights.json from `mdprep weights` [default: unweighted loss]; with --fold all, one per fold (`mdprep weights --fold K`) may be given.",
)


@output_option(
    "RUN_DIR", "Run folder: best.pt (fold-K/best.pt with --fold all), predictions.parquet and metrics.json.", required=False,
    type=click.Path(file_okay=False),
)


@click.option("--framework", type=click.Choice(["torch", "keras"]), default="torch", show_default=True, help="PyTorch, or Keras 3 on its torch backend (the keras extra).")
@click.option(
    "--arch", default="densenet121", show_default=True,
    help="Model: densenet121 (the CheXNet choice), resnet18, resnet50, small (a quick CNN), or tv:NAME (torchvision's model zoo, when torchvision imports); keras: densenet121, resnet50, small.",
)


@click.option("--fold", "fold", type=FoldParam(), help="Cross-validate: fold K of the non-test rows validates, the others train; 'all' trains one model per fold and writes out-of-fold predictions.")
@click.option("--train-split", help="The split that trains [default: train].")
@click.option("--val-split", help="The split that picks the epoch [default: the one named val, valid, validation or dev].")
@click.option("--test-split", help="The split held out for --evaluate-test [default: the one named test or testing].")
@click.option("--no-val", is_flag=True, help="Train without validation rows (the last epoch is kept).")
@click.option("--epochs", default=5, show_default=True, type=click.IntRange(min=1), help="Passes over the train rows (at least 1).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, MAX_BATCH_SIZE), help=f"Images per step (1 to {MAX_BATCH_SIZE}).")
@click.option("--image-size", default=224, show_default=True, type=click.IntRange(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE), help=f"Images are resized to SIZE x SIZE ({MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}).")
@click.option("--lr", default=1e-3, show_default=True, type=FiniteFloat(0, MAX_LR, min_open=True), help=f"AdamW learning rate (above 0, up to {MAX_LR:g}).")
@click.option(
    "--pretrained",
    type=click.Path(dir_okay=False),
    help="A local state dict to start from (nothing is downloaded). For ImageNet weights, save torchvision's "
    "densenet121/resnet18/resnet50 state_dict() to a file on a machine with internet access and pass it here; "
    "the old 1000-class head is reported and skipped.",
)


@click.option("--freeze-backbone", is_flag=True, help="Train only the new head.")
@click.option("--augment", type=click.Choice(["cxr-safe", "none"]), default="cxr-safe", show_default=True, help="Training-time augmentation.")
@click.option(
    "--normalize", type=click.Choice(["auto", "imagenet", "none"]), default="auto", show_default=True,
    help="Input normalisation; auto: ImageNet mean/std when --pretrained weights go into a 3-channel model (a best.pt keeps its own).",
)


@click.option("--hflip", is_flag=True, help="Allow horizontal flips in cxr-safe (off: anatomy is not left-right symmetric).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True, help="Where to train: auto picks cuda when a GPU is present, else cpu.")
@seed_option("Seed, 0 to 2**32-1: on the CPU the same inputs and seed give the same run.")
@click.option(
    "--workers", default=0, show_default=True, type=click.IntRange(min=0),
    help="Processes loading images for the data loader; unlike the per-file commands, 0 by default (load in the main process): "
    "worker processes pay off only when decoding, not the model, is the bottleneck.",
)


@click.option("--evaluate-test", is_flag=True, help="Score the test rows once, with the selected checkpoint, at the end.")
@click.option("--allow-leakage", is_flag=True, help="Train even if patients appear in more than one split (not recommended).")
@allow_outside_root_option
@path_map_option
@click.option("--skip-missing", is_flag=True, help="Leave out rows whose image is missing or does not decode (counted, listed in metrics.json) instead of refusing to start.")
@click.option("--bootstrap", default=1000, show_default=True, type=click.IntRange(min=0), help="Bootstrap replicates (drawn over patients) for the AUC confidence intervals; 0: no intervals.")
@quiet_option
@click.option("--folds", "folds_all", hidden=True, metavar="all", help="Former spelling of --fold all.")
@renamed_option("--out", "-o/--output", "output", required=True, type=click.Path(file_okay=False))
def train(manifest, root, weights_path, output, framework, arch, fold, train_split, val_split, test_split, no_val, bootstrap, epochs, batch_size, image_size, lr, pretrained, freeze_backbone, augment, normalize, hflip, device, seed, workers, evaluate_test, allow_leakage, allow_outside_root, path_map, skip_missing, quiet, folds_all):
    """Train a multi-label classifier on the train rows (or folds), pick the epoch on the validation rows.

    \b
    Before the first epoch every image to read is checked: it must lie under the
    root (--allow-outside-root reads others) and decode (--skip-missing leaves out
    those that do not).

    \b
    Needs the train extra (torch): pip install 'mdprep[train]'; install the CPU or CUDA
    build of torch first as the PyTorch install guide describes.

    \b
    Examples:
      mdprep train nih-split.parquet --root images/ --weights weights.json -o runs/densenet \\
        --arch densenet121 --epochs 10 --evaluate-test
      mdprep train folds.parquet --fold all --arch small -o runs/cv
    """
    if folds_all is not None:
        # `split --folds N` makes N folds; here a number would quietly train one fold, so only `--folds all` is kept.
        if folds_all.strip().lower() != "all":
            raise click.UsageError(
                f"--folds {folds_all}: train takes --fold K (train with fold K validating) or --fold all (one model per fold); "
                "--folds N is split's option, the number of folds to make"
            )
        if fold is not None:
            raise click.UsageError("--folds all is the former spelling of --fold all; give --fold only")
        click.echo("Warning: --folds all is deprecated and will be removed; use --fold all", err=True)
        fold = "all"
    inputs = {"MANIFEST": manifest, "--pretrained": pretrained, "--path-map": path_map}
    inputs.update({f"--weights {w}": w for w in weights_path})
    written = ("best.pt", "best.keras", "predictions.parquet", "metrics.json")
    check_outputs(inputs, {"-o/--output": output}, folders={"-o/--output": written})
    try:
        from ..training import train as train_model
    except ImportError as exc:
        raise UsageError(f"mdprep train needs torch ({exc}); install it with pip install 'mdprep[train]'") from None
    from ..manifest import read_manifest
    from ..pseudonyms import load_path_map

    m = read_manifest(manifest)
    if fold == "all" and "fold" in m.frame.columns:  # each fold's checkpoint, in fold-K/, must not be an input either
        folds = sorted(int(k) for k in m.frame["fold"].dropna().unique())
        check_outputs(inputs, {"-o/--output": output}, folders={"-o/--output": [f"fold-{k}/{name}" for k in folds for name in written[:2]]})
    # Files by size and SHA-256, not by path: outputs do not depend on where the inputs lie, and name no patient.
    provenance = {"manifest": _content(manifest), "weights": [_content(w) for w in weights_path]}
    real_paths = load_path_map(path_map) if path_map else None
    console = _animate(quiet)
    progress = None
    if console:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True)
    state = {"task": None, "epoch": 1}

    def on_batch(step, total):
        if progress is None:
            return
        if state["task"] is None:
            state["task"] = progress.add_task(f"epoch {state['epoch']}/{epochs}", total=total)
        progress.update(state["task"], completed=step)

    def on_epoch(record):
        if progress is not None and state["task"] is not None:
            progress.remove_task(state["task"])
        state["task"], state["epoch"] = None, record["epoch"] + 1
        if not quiet:
            auc = record.get("val_mean_auc")
            click.echo(
                ("" if record.get("fold") is None else f"fold {record['fold']} ")
                + f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}"
                + (f", val loss {record['val_loss']:.4f}, val mean AUC {auc:.4f}" if auc is not None else "")
                + f" ({record['images_per_second']:.0f} images/s)",
                err=True,
            )

    if progress is not None:
        progress.start()
    try:
        result = train_model(
            m, root=root, out_dir=output, weights_path=list(weights_path), framework=framework, fold=fold, train_split=train_split,
            val_split=val_split, test_split=test_split, no_val=no_val, bootstrap=bootstrap, provenance=provenance, arch=arch, epochs=epochs, batch_size=batch_size,
            image_size=image_size, lr=lr, pretrained=pretrained, freeze=freeze_backbone, augment=augment, normalize=normalize, hflip=hflip,
            device=device, seed=seed, evaluate_test=evaluate_test, allow_leakage=allow_leakage, workers=workers,
            allow_outside_root=allow_outside_root, skip_missing=skip_missing, path_map=real_paths,
            on_batch=on_batch, on_epoch=on_epoch,
        )
    finally:
        if progress is not None:
            progress.stop()
    metrics = result.metrics
    for run in metrics["runs"]:
        report = run.get("pretrained")
        if report:
            click.echo(f"Pretrained weights: {report['loaded']} tensors loaded; skipped (shape differs): {', '.join(report['skipped']) or 'none'}", err=True)
    if quiet:
        return
    print_table(summary_table(metrics, epochs))
    click.echo(f"Wrote {output}/predictions.parquet and {output}/metrics.json", err=True)


def _content(path: str) -> dict:
    return {k: v for k, v in file_fingerprint(path).items() if k != "path"}


def _auc_cell(summary: dict | None, label: str | None = None) -> str:
    """``0.8123 [0.79, 0.83]``: an AUC and its bootstrap interval, or ``undefined``."""
    if not summary:
        return ""
    value = summary["mean_auc"] if label is None else summary["auc"].get(label)
    ci = summary["mean_auc_ci"] if label is None else summary["ci"].get(label)
    if value is None:
        return "undefined"
    return f"{value:.4f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def summary_table(metrics: dict, epochs: int) -> Table:
    """Per label: the validation AUC (out-of-fold with every fold) and the test AUC, with 95% intervals over patients."""
    from rich.table import Table

    runs = metrics["runs"]
    if "out_of_fold" in metrics:
        val, test = metrics["out_of_fold"], metrics.get("test_mean_of_folds")
        folds = ", ".join(f"fold {r['fold']}: epoch {r['best_epoch']}" for r in runs)
        title = f"{len(runs)}-fold cross-validation ({metrics['framework']} {metrics['arch']}, {metrics['device']}); best {folds}"
        names = ("out-of-fold AUC", "test AUC, folds averaged")
    else:
        run = runs[0]
        val, test = run["val"], run["test"]
        if not val and not test:
            return Table(title=f"Kept epoch {run['best_epoch']} of {epochs} ({metrics['framework']} {metrics['arch']}, {metrics['device']}): no validation or test rows were scored", title_justify="left")
        where = "" if run["fold"] is None else f", fold {run['fold']} validating"
        title = f"Best epoch {run['best_epoch']} of {epochs} ({metrics['framework']} {metrics['arch']}, {metrics['device']}{where})"
        names = ("val AUC", "test AUC")
    table = Table(title=title, title_justify="left", caption="95% intervals from a bootstrap over patients" if val or test else None)
    table.add_column("label")
    fold_mean = metrics.get("fold_mean")
    if fold_mean:
        table.add_column("AUC per fold", justify="right")
    for name, part in zip(names, (val, test)):
        if part:
            table.add_column(name, justify="right")
    for label in [*metrics["labels"], None]:
        cells = [_auc_cell(part, label) for part in (val, test) if part]
        if fold_mean:
            spread = fold_mean["mean_auc"] if label is None else fold_mean["auc"][label]
            cells.insert(0, "undefined" if spread is None else f"{spread['mean']:.4f} ± {spread['sd']:.3f}")
        table.add_row("mean" if label is None else label, *cells)
    return table
