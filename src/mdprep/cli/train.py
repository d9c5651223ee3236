"""``mdprep train``: the bundled PyTorch trainer."""

from __future__ import annotations

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import UsageError
from ..fileio import check_outputs
from ..manifest import read_manifest
from ..params import MAX_BATCH_SIZE, MAX_IMAGE_SIZE, MAX_LR, MIN_IMAGE_SIZE
from ._ui import _animate, print_table
from ._options import FiniteFloat, seed_option
from ..pseudonyms import load_path_map
from .audit import allow_outside_root_option, path_map_option

ARCHES = ("densenet121", "resnet18", "small")


@click.command("train")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--root", type=click.Path(file_okay=False), help="Folder the manifest's paths are relative to [default: the recorded root].")
@click.option("--weights", "weights_path", type=click.Path(dir_okay=False), help="weights.json from `mdprep weights` [default: unweighted loss].")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Run folder: best.pt and metrics.json.")
@click.option("--arch", type=click.Choice(ARCHES), default="densenet121", show_default=True, help="Model; densenet121 is the CheXNet choice, small a quick CNN.")
@click.option("--epochs", default=5, show_default=True, type=click.IntRange(min=1), help="Passes over the train rows (at least 1).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, MAX_BATCH_SIZE), help=f"Images per step (1 to {MAX_BATCH_SIZE}).")
@click.option("--image-size", default=224, show_default=True, type=click.IntRange(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE), help=f"Images are resized to SIZE x SIZE ({MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}).")
@click.option("--lr", default=1e-3, show_default=True, type=FiniteFloat(0, MAX_LR, min_open=True), help=f"AdamW learning rate (above 0, up to {MAX_LR:g}).")
@click.option(
    "--pretrained",
    type=click.Path(dir_okay=False),
    help="A local state dict to start from (nothing is downloaded). For ImageNet weights, save torchvision's "
    "densenet121/resnet18 state_dict() to a file on a machine with internet access and pass it here; "
    "the old 1000-class head is reported and skipped.",
)
@click.option("--freeze-backbone", is_flag=True, help="Train only the new head.")
@click.option("--augment", type=click.Choice(["cxr-safe", "none"]), default="cxr-safe", show_default=True, help="Training-time augmentation.")
@click.option("--hflip", is_flag=True, help="Allow horizontal flips in cxr-safe (off: anatomy is not left-right symmetric).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@seed_option("Seed, 0 to 2**32-1: on the CPU the same seed gives the same run.")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0), help="DataLoader worker processes (0: load in the main process).")
@click.option("--evaluate-test", is_flag=True, help="Score the test rows once, with the selected checkpoint, at the end.")
@click.option("--allow-leakage", is_flag=True, help="Train even if patients appear in more than one split (not recommended).")
@allow_outside_root_option
@path_map_option
@click.option("--skip-missing", is_flag=True, help="Leave out rows whose image is missing or does not decode (counted, listed in metrics.json) instead of refusing to start.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or tables.")
def train(manifest, root, weights_path, out_dir, arch, epochs, batch_size, image_size, lr, pretrained, freeze_backbone, augment, hflip, device, seed, workers, evaluate_test, allow_leakage, allow_outside_root, path_map, skip_missing, quiet):
    """Train a multi-label classifier on the train rows, pick the epoch on val.

    \b
    Before the first epoch every image to read is checked: it must lie under the
    root (--allow-outside-root reads others) and decode (--skip-missing leaves out
    those that do not).

    \b
    Needs the train extra (torch): pip install 'mdprep[train]'; install the CPU or CUDA
    build of torch first as the PyTorch install guide describes.

    \b
    Example:
      mdprep train nih-split.parquet --root images/ --weights weights.json --out runs/densenet \\
        --arch densenet121 --epochs 10 --evaluate-test
    """
    check_outputs(
        {"MANIFEST": manifest, "--weights": weights_path, "--pretrained": pretrained, "--path-map": path_map}, {"--out": out_dir}, folders={"--out": ("best.pt", "metrics.json")}
    )
    try:
        from ..training import train as train_model
    except ImportError as exc:
        raise UsageError(f"mdprep train needs torch ({exc}); install it with pip install 'mdprep[train]'") from None
    m = read_manifest(manifest)
    real_paths = load_path_map(path_map) if path_map else None
    console = _animate(quiet)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True) if console else None
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
                f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}"
                + (f", val loss {record['val_loss']:.4f}, val mean AUC {auc:.4f}" if auc is not None else "")
                + f" ({record['images_per_second']:.0f} images/s)",
                err=True,
            )

    if progress is not None:
        progress.start()
    try:
        result = train_model(
            m, root=root, out_dir=out_dir, weights_path=weights_path, arch=arch, epochs=epochs, batch_size=batch_size,
            image_size=image_size, lr=lr, pretrained=pretrained, freeze=freeze_backbone, augment=augment, hflip=hflip,
            device=device, seed=seed, evaluate_test=evaluate_test, allow_leakage=allow_leakage, workers=workers,
            allow_outside_root=allow_outside_root, skip_missing=skip_missing, path_map=real_paths,
            on_batch=on_batch, on_epoch=on_epoch,
        )
    finally:
        if progress is not None:
            progress.stop()
    metrics = result.metrics
    report = metrics.get("pretrained")
    if report:
        click.echo(f"Pretrained weights: {report['loaded']} tensors loaded; skipped (shape differs): {', '.join(report['skipped']) or 'none'}", err=True)
    if quiet:
        return
    best = next(r for r in metrics["epochs"] if r["epoch"] == result.best_epoch)
    table = Table(title=f"Best epoch {result.best_epoch} of {epochs} ({metrics['arch']}, {metrics['device']})", title_justify="left")
    table.add_column("label")
    table.add_column("val AUC", justify="right")
    if metrics["test"]:
        table.add_column("test AUC", justify="right")
    fmt = lambda v: "undefined" if v is None else f"{v:.4f}"  # noqa: E731
    for label in metrics["labels"]:
        row = [label, fmt(best.get("val_auc", {}).get(label))]
        if metrics["test"]:
            row.append(fmt(metrics["test"]["auc"][label]))
        table.add_row(*row)
    table.add_row("mean", fmt(best.get("val_mean_auc")), *([fmt(metrics["test"]["mean_auc"])] if metrics["test"] else []))
    print_table(table)
    click.echo(f"Wrote {out_dir}/best.pt and {out_dir}/metrics.json", err=True)
