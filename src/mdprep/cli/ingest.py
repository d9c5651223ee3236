"""``mdprep ingest dicom|images|table``."""

from __future__ import annotations

import sys
from dataclasses import replace

import click
from rich.table import Table

from ..dicom_header import MISSING_PATIENT_POLICIES, split_tag_specs
from ..errors import InputError, examples_text
from ..fileio import check_outputs
from ..ingest import PRESETS, IngestResult, ingest_dicom, ingest_images, ingest_table, write_errors
from ..labels import AGGREGATE_POLICIES, BLANK_POLICIES, LABEL_WHEN_SYNTAX, UNCERTAIN_POLICIES
from ..manifest import summarize, write_manifest
from ._options import comma_list, key_file_option
from ._ui import file_progress, print_table, status


def _read_file_list(source: str | None) -> list[str] | None:
    """Paths listed in ``source`` ('-' for stdin), one per line, with bytes that are not UTF-8 kept as surrogate escapes.

    Lines end at ``\\n`` only (one ``\\r`` before it is dropped, for lists written on
    Windows); every other character, spaces, form feeds and U+0085 included, is part of
    the name, and empty lines are ignored (by the library). A listed path that is not
    UTF-8 thus becomes an UndecodablePath error row instead of stopping the run; a list
    that cannot be opened is bad input.
    """
    if source is None:
        return None
    if source == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            with open(source, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise InputError(f"cannot read the --files-from list {source!r}: {exc.strerror or exc}", path=source) from exc
    lines = data.decode("utf-8", "surrogateescape").split("\n")
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _pseudonymized(result: IngestResult, pseudonymize: bool, key_file: str | None, quiet: bool) -> IngestResult:
    """With --pseudonymize, replace identifiers before anything reaches disk."""
    if not pseudonymize:
        return result
    from ..pseudonyms import load_key
    from ..pseudonyms import pseudonymize as apply
    from .pseudonymize import summary

    done = apply(result.manifest, load_key(key_file))
    summary(done, quiet)
    return replace(result, manifest=done.manifest)


def _write_outputs(result: IngestResult, output: str, errors_path: str | None) -> None:
    write_manifest(result.manifest, sys.stdout.buffer if output == "-" else output)
    if errors_path:
        write_errors(result.errors, errors_path)


def render_summary(result: IngestResult, output: str, errors_path: str | None, quiet: bool) -> None:
    """Rows, patients, images per patient, reconciled counts, label prevalence, warnings and notes.

    ``quiet`` keeps what reports lost or changed data: the reconciled counts when an
    input was skipped, failed or aggregated into another row, and the warnings. Notes
    (informational) and the summary tables are left out.
    """
    rep = result.report
    s = summarize(result.manifest)
    # What was not ingested as a row of its own is reported even with --quiet: nothing is lost silently.
    lost = bool(rep.skipped or rep.failed)
    if lost or rep.aggregated or not quiet:
        line = f"{rep.found} found = {rep.ingested} ingested + {rep.skipped} skipped + {rep.failed} failed"
        if rep.aggregated:
            line += f" + {rep.aggregated} aggregated"
        if rep.lenient:
            line += f" ({rep.lenient} read without the DICOM preamble, marked lenient_read)"
        click.echo(line, err=True)
    if lost:
        reasons = ", ".join(f"{k.split(':', 1)[1]} {v}" for k, v in rep.reasons.items())
        hint = f"listed in {errors_path}" if errors_path else "pass --errors FILE to list them"
        click.echo(f"Not ingested: {reasons} ({hint})", err=True)
    for column, n in rep.invalid_values.items():
        bad = rep.invalid_examples.get(column, ())
        shown = f": {examples_text(bad, len(bad))}" if bad else ""
        click.echo(f"Warning: {n} value(s) of {column!r} did not parse and were stored as null{shown}", err=True)
    if rep.unlabeled:
        click.echo(f"Warning: {rep.unlabeled} row(s) have no label at all; kept with null labels", err=True)
    if quiet:
        return
    for note in rep.notes:
        click.echo(f"Note: {note}", err=True)
    table = Table(title=f"Wrote {output}", title_justify="left", show_header=False, box=None)
    table.add_row("rows", f"{s.rows:,}")
    table.add_row("patients", f"{s.patients:,}")
    table.add_row("images per patient", f"median {s.images_per_patient_median:g}, max {s.images_per_patient_max}")
    print_table(table)
    if s.labels:
        lt = Table(title="Labels", title_justify="left")
        lt.add_column("label")
        lt.add_column("positive", justify="right")
        lt.add_column("prevalence", justify="right")
        lt.add_column("uncertain", justify="right")
        lt.add_column("not mentioned", justify="right")
        for c in s.labels:
            lt.add_row(c.label, f"{c.positive:,}", f"{c.prevalence:.2%}", f"{c.uncertain:,}", f"{c.missing:,}")
        print_table(lt)


_output = click.option("-o", "--output", required=True, metavar="OUT.parquet", help="Manifest to write (atomically); '-' for stdout.")
_quiet = click.option("-q", "--quiet", is_flag=True, help="No progress bars, summary or notes on stderr (warnings and errors stay).")
_workers = click.option("--workers", type=click.IntRange(min=1), default=None, help="Processes reading files [default: all cores].")
_errors = click.option(
    "--errors", "errors_path", metavar="FILE", help="Write every file that gave no row (path, outcome, error type, message); .csv or .parquet."
)
_pseudonymize = click.option("--pseudonymize", is_flag=True, help="Replace identifiers with keyed pseudonyms before writing (see mdprep pseudonymize).")
_files_from = click.option(
    "--files-from",
    metavar="FILE",
    help="Read the files listed in FILE instead of walking ROOT: one path per line ('\\n'-separated, spaces kept), '-' for stdin.",
)


@click.group()
def ingest() -> None:
    """Build a manifest (one row per image) from DICOM files, image folders or dataset tables."""


@ingest.command("dicom")
@click.argument("root", type=click.Path(file_okay=False))
@_output
@click.option(
    "--tags",
    multiple=True,
    metavar="TAG,...",
    help="Extra attributes besides the preset: keywords, GGGG,EEEE, (GGGG,EEEE) or GGGGEEEE; comma-separated or repeated.",
)
@click.option(
    "--missing-patient",
    type=click.Choice(list(MISSING_PATIENT_POLICIES)),
    default="error",
    show_default=True,
    help="Files without PatientID: " + "; ".join(f"{k}: {v}" for k, v in MISSING_PATIENT_POLICIES.items()) + ".",
)
@_files_from
@_workers
@_errors
@_pseudonymize
@key_file_option
@_quiet
def ingest_dicom_cmd(root, output, tags, missing_patient, files_from, workers, errors_path, pseudonymize, key_file, quiet):
    """Read the headers (never the pixels) of every DICOM file under ROOT.

    \b
    The preset columns: patient_id, study_id (StudyInstanceUID), series_uid, sop_uid,
    sop_class_uid, accession, modality, view (ViewPosition), body_part, sex, age (years),
    birth_date, study_date, rows, columns, pixel_spacing, photometric, transfer_syntax.
    Files without the DICOM preamble are read leniently (lenient_read); other files
    are skipped and counted; unreadable ones are listed with --errors.

    \b
    Example:
      mdprep ingest dicom /data/dump -o manifest.parquet --tags Manufacturer,KVP,0018,1151 --errors errors.csv
    """
    check_outputs({"--files-from": files_from, "--key-file": key_file}, {"-o/--output": output, "--errors": errors_path}, stdout={"-o/--output"})
    files = _read_file_list(files_from)
    with file_progress("Reading DICOM headers", quiet) as bar:
        result = ingest_dicom(
            root,
            files=files,
            tags=split_tag_specs(tags),
            missing_patient=missing_patient,
            workers=workers,
            on_found=bar.found,
            on_progress=bar.advance,
        )
    result = _pseudonymized(result, pseudonymize, key_file, quiet)
    _write_outputs(result, output, errors_path)
    render_summary(result, output, errors_path, quiet)


@ingest.command("images")
@click.argument("root", type=click.Path(file_okay=False))
@click.option(
    "--patient-regex",
    required=True,
    metavar="REGEX",
    help="Searched in each relative path; named groups 'patient' (required), 'study', 'view', and any other become columns.",
)
@_output
@_files_from
@_workers
@_errors
@_pseudonymize
@key_file_option
@_quiet
def ingest_images_cmd(root, patient_regex, output, files_from, workers, errors_path, pseudonymize, key_file, quiet):
    """Index the PNG/JPEG/TIFF images under ROOT; patient and study come from the path.

    \b
    Example (CheXpert layout patient00001/study1/view1_frontal.jpg):
      mdprep ingest images CheXpert-v1.0-small/train -o images.parquet \\
        --patient-regex '(?P<patient>patient\\d+)/(?P<study>study\\d+)/view\\d+_(?P<view>frontal|lateral)'
    """
    check_outputs({"--files-from": files_from, "--key-file": key_file}, {"-o/--output": output, "--errors": errors_path}, stdout={"-o/--output"})
    files = _read_file_list(files_from)
    with file_progress("Reading image headers", quiet) as bar:
        result = ingest_images(root, patient_regex=patient_regex, files=files, workers=workers, on_found=bar.found, on_progress=bar.advance)
    result = _pseudonymized(result, pseudonymize, key_file, quiet)
    _write_outputs(result, output, errors_path)
    render_summary(result, output, errors_path, quiet)


@ingest.command("table")
@click.argument("table", type=click.Path(dir_okay=False))
@click.option("--preset", type=click.Choice(list(PRESETS)), default="generic", show_default=True, help="; ".join(f"{k}: {v}" for k, v in PRESETS.items()))
@_output
@click.option("--metadata", type=click.Path(dir_okay=False), help="MIMIC-CXR: the *-metadata.csv(.gz) table to join.")
@click.option(
    "--uncertain",
    type=click.Choice(list(UNCERTAIN_POLICIES)),
    default="keep",
    show_default=True,
    help="Uncertain (-1) labels: " + "; ".join(f"{k}: {v}" for k, v in UNCERTAIN_POLICIES.items()),
)
@click.option("--image-col", help="generic: column with the image id [default: image_id, else the path column].")
@click.option(
    "--patient-col", help="generic: column with the patient id [default: patient_id, else PatientID, patientId, 'Patient ID' or subject_id]."
)
@click.option("--path-col", help="generic: column with the image path [default: path, else the image column].")
@click.option("--study-col", help="generic: column with the study id [default: study_id, else StudyInstanceUID or StudyID].")
@click.option("--labels-col", help="generic: one column listing each image's findings ('A|B' or ['A', 'B']).")
@click.option("--labels-sep", default="|", show_default=True, help="generic: separator inside --labels-col.")
@click.option("--label-cols", multiple=True, metavar="A,B,...", help="generic: one-hot label columns (1/0/-1/blank, yes/no).")
@click.option(
    "--label-when",
    "label_when",
    multiple=True,
    metavar="NAME:COLUMN==VALUE",
    help=f"A binary label from a column: {LABEL_WHEN_SYNTAX}, compared as numbers when VALUE and the column are numbers, else as stripped text; a blank cell gives null. Repeatable.",
)
@click.option(
    "--blank",
    multiple=True,
    metavar="POLICY|LABEL=POLICY",
    help="Label cells blank in the source: " + "; ".join(f"{k}: {v}" for k, v in BLANK_POLICIES.items()) + ". Global or per label (wins); repeatable [default: missing].",
)
@click.option("--label-map", metavar="FILE|cxr", help="Rename and merge label names: a CSV (source,target) or JSON file, or 'cxr' for the built-in map of public chest X-ray names.")
@click.option(
    "--aggregate",
    type=click.Choice(list(AGGREGATE_POLICIES)),
    default="error",
    show_default=True,
    help="Several rows per image: " + "; ".join(f"{k}: {v}" for k, v in AGGREGATE_POLICIES.items()) + ".",
)
@click.option("--reader-col", metavar="COLUMN", help="With --aggregate: each row's reader; one reader's rows are combined with 'any' before readers vote.")
@click.option("--col", "columns", multiple=True, metavar="CANONICAL=SOURCE", help="Take a canonical column (sex, age, view, study_date, split, ...) from a source column. Repeatable.")
@click.option("--sep", help="Field delimiter [default: from the file name, else sniffed].")
@click.option("--encoding", default="utf-8", show_default=True, help="Text encoding of the table.")
@click.option("--image-ext", default="jpg", show_default=True, help="MIMIC-CXR: file ending of the built paths (jpg or dcm).")
@click.option("--root", "image_root", type=click.Path(file_okay=False), help="Folder the table's paths are relative to (recorded in the manifest).")
@_pseudonymize
@key_file_option
@_quiet
def ingest_table_cmd(
    table, preset, output, metadata, uncertain, image_col, patient_col, path_col, study_col, labels_col, labels_sep, label_cols,
    label_when, blank, label_map, aggregate, reader_col, columns, sep, encoding, image_ext, image_root, pseudonymize, key_file, quiet,
):
    """Turn a dataset's label table (CSV, TSV, gzip, Parquet) into a manifest.

    \b
    Examples:
      mdprep ingest table Data_Entry_2017_v2020.csv.gz --preset nih -o nih.parquet
      mdprep ingest table train.csv --preset chexpert --blank negative --uncertain ignore -o chexpert.parquet
      mdprep ingest table mimic-cxr-2.0.0-chexpert.csv.gz --preset mimic \\
        --metadata mimic-cxr-2.0.0-metadata.csv.gz -o mimic.parquet
      mdprep ingest table labels.tsv --image-col file --patient-col subject --labels-col findings -o m.parquet
      mdprep ingest table vinbigdata-train.csv.gz --patient-col image_id --labels-col class_name \\
        --aggregate majority --reader-col rad_id -o vindr.parquet
      mdprep ingest table stage_2_train_labels.csv --image-col patientId --patient-col patientId \\
        --label-when 'Pneumonia:Target==1' --aggregate any -o rsna.parquet
    """
    check_outputs({"TABLE": table, "--metadata": metadata, "--label-map": label_map, "--key-file": key_file}, {"-o/--output": output}, stdout={"-o/--output"})
    with status(f"Reading {table}", quiet):
        result = ingest_table(
            table,
            preset=preset,
            metadata=metadata,
            uncertain=uncertain,
            image_col=image_col,
            patient_col=patient_col,
            path_col=path_col,
            study_col=study_col,
            labels_col=labels_col,
            labels_sep=labels_sep,
            label_cols=comma_list(label_cols),
            label_when=list(label_when),
            blank=list(blank),
            label_map=label_map,
            aggregate=aggregate,
            reader_col=reader_col,
            columns=list(columns),
            sep=sep,
            encoding=encoding,
            image_ext=image_ext,
            root=image_root,
        )
        result = _pseudonymized(result, pseudonymize, key_file, quiet)
        _write_outputs(result, output, None)
    render_summary(result, output, None, quiet)
