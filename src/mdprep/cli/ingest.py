"""``mdprep ingest dicom|images|table``."""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import re
import sys
import warnings
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Iterator

import click

from ..choices import (
    AGGREGATE_POLICIES,
    BLANK_POLICIES,
    DATE_POLICIES,
    INGEST_LEVELS,
    LABEL_WHEN_SYNTAX,
    MISSING_PATIENT_POLICIES,
    PATH_POLICIES,
    PRESETS,
    UNCERTAIN_POLICIES,
)
from ..errors import InputError, MdprepError, MdprepWarning, UsageError, examples_text
from ..fileio import check_outputs, check_outputs_spare_images
from ._options import (
    check_incremental,
    choice_option,
    comma_list,
    described,
    incremental_options,
    json_option,
    key_file_option,
    output_option,
    quiet_option,
    scheduler_options,
    workers_option,
    write_json_summary,
)
from .audit import allow_outside_root_option
from ._ui import file_progress, print_table, status

if TYPE_CHECKING:
    from ..ingest import IngestResult
    from ..ingest.table_arrow import ArrowIngest
    from ..manifest import ManifestSummary


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


@dataclass(frozen=True)
class Pseudonymization:
    """What ``--pseudonymize`` and its options ask of an ingest command."""

    on: bool = False
    key_file: str | None = None
    dates: str = "shift"
    paths: str = "auto"
    path_map: str | None = None
    keep_columns: tuple[str, ...] = ()
    drop_columns: tuple[str, ...] = ()

    def check(self) -> None:
        given = [name for name, value in (("--paths", self.paths != "auto"), ("--dates", self.dates != "shift"), ("--path-map", self.path_map),
                 ("--keep-columns", self.keep_columns), ("--drop-columns", self.drop_columns)) if value]
        if given and not self.on:
            raise UsageError(f"{', '.join(given)}: only with --pseudonymize; add it, or leave them out")
        if self.path_map and self.paths in ("keep", "drop"):
            raise UsageError(f"--path-map needs pseudonymised paths; with --paths {self.paths} there is nothing to map")


def pseudonymize_options(command):
    """``--pseudonymize`` and its options, handed to the command as one ``pseudo`` argument."""

    @functools.wraps(command)
    def wrapper(*args, pseudonymize, key_file, dates, paths, path_map, keep_columns, drop_columns, **kwargs):
        pseudo = Pseudonymization(pseudonymize, key_file, dates, paths, path_map, tuple(comma_list(keep_columns)), tuple(comma_list(drop_columns)))
        pseudo.check()
        return command(*args, pseudo=pseudo, **kwargs)

    options = [
        click.option("--pseudonymize", is_flag=True, help="Replace identifiers with keyed pseudonyms before anything is written or printed (see mdprep pseudonymize)."),
        key_file_option,
        click.option("--dates", type=click.Choice(DATE_POLICIES), default="shift", show_default=True, help="With --pseudonymize: every date shifted per patient, cut to the year, or dropped."),
        click.option("--paths", type=click.Choice(PATH_POLICIES), default="auto", show_default=True, help="With --pseudonymize: paths pseudonymised (auto: when one spells out an identifier), kept or emptied."),
        click.option("--path-map", metavar="FILE.csv", help="With --pseudonymize: write pseudonymised path -> real path (0600, never commit it), for hash and train."),
        click.option("--keep-columns", multiple=True, metavar="COL,...", help="With --pseudonymize: keep these columns as they are."),
        click.option("--drop-columns", multiple=True, metavar="COL,...", help="With --pseudonymize: drop these columns."),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


@contextlib.contextmanager
def ingest_messages(pseudo: Pseudonymization, json_path: str | None) -> Iterator[tuple[set[str], list[str]]]:
    """The warnings and errors of an ingest, caught once: yields ``(keep, warned)``.

    With --pseudonymize no warning or error shows a quoted cell value: column names,
    label names and the user's own arguments (``keep``, which the block may extend once
    it knows the columns) are still quoted; everything else quoted becomes ``'…'``.
    With ``--json``, ``warned`` gets the text of every mdprep warning as shown, for the
    summary's ``warnings``. The warnings are shown once the block ends, even when it
    fails: a warning given before an error is still printed. Without either option,
    nothing is caught.
    """
    keep: set[str] = set()
    warned: list[str] = []
    if not pseudo.on and not json_path:
        yield keep, warned
        return
    from ..pseudonyms import redact_quoted

    if pseudo.on:
        given: list[str] = []  # the user's own option values and arguments
        ctx = click.get_current_context(silent=True)
        while ctx is not None:
            for value in ctx.params.values():
                given += [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)] if isinstance(value, (tuple, list)) else []
            ctx = ctx.parent
        keep.update(given)
        keep.update(part.strip() for arg in given for part in arg.replace("=", ",").replace(":", ",").split(","))
    error = None
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield keep, warned
            except MdprepError as exc:
                if not pseudo.on:
                    raise
                fields = exc.fields or {}
                for name in ("present", "missing", "column", "columns"):
                    value = fields.get(name)
                    keep.update([value] if isinstance(value, str) else (value or ()))
                error = InputError(redact_quoted(exc.message, keep))
    finally:
        for w in caught:
            ours = issubclass(w.category, MdprepWarning)
            message = redact_quoted(str(w.message), keep) if ours and pseudo.on else w.message
            if ours and json_path:
                warned.append(str(message))
            warnings.warn_explicit(message, w.category, w.filename, w.lineno)
    if error is not None:
        raise error from None


_APOSTROPHE = re.compile(r"(?<=\w)'(?=\w)")


def _redacted_note(note: str, keep: set[str]) -> str:
    """``note`` with its quoted values hidden (:func:`mdprep.pseudonyms.redact_quoted`), an apostrophe inside a word
    ("each reader's rows") not taken for a quote: a quoted value that holds one ('O'Brien') is hidden whole.

    >>> _redacted_note("labels combined by 'majority', each reader's rows first combined by 'any'", {"majority"})
    "labels combined by 'majority', each reader's rows first combined by '…'"
    """
    from ..pseudonyms import redact_quoted

    return redact_quoted(_APOSTROPHE.sub("\ue000", note), keep).replace("\ue000", "'")  # a private-use character stands in


def _pseudonymized(result: IngestResult, pseudo: Pseudonymization, quiet: bool, keep: set[str] = frozenset()) -> IngestResult:
    """With --pseudonymize, replace identifiers before anything reaches disk, the error table included.

    The report loses what could quote a raw value: its invalid examples, and every quoted
    value of its notes (and of a series summary's notes) that is not in ``keep`` (column
    names and the user's own arguments, :func:`ingest_messages`), since the notes
    are printed and written to ``--json``.
    """
    if not pseudo.on:
        return result
    import pandas as pd

    from ..pseudonyms import load_key, map_distinct, path_pseudonym, write_path_map
    from ..pseudonyms import pseudonymize as apply
    from .pseudonymize import summary

    key = load_key(pseudo.key_file)
    done = apply(
        result.manifest, key, dates=pseudo.dates, paths=pseudo.paths, keep_columns=pseudo.keep_columns, drop_columns=pseudo.drop_columns
    )
    errors = result.errors
    path_map = done.path_map
    if len(errors) and pseudo.paths != "keep":
        # Inputs that gave no row are named by the same keyed pseudonym a row's path gets.
        real = errors["path"].astype("str")
        shown = map_distinct(real, lambda p: path_pseudonym(key, p))
        messages = [m.replace(r, s) for m, r, s in zip(errors["message"].astype("str"), real, shown)]
        errors = errors.assign(path=shown, message=messages)
        if pseudo.paths != "drop":
            path_map = pd.concat([path_map, pd.DataFrame({"path": shown, "original_path": real})]).drop_duplicates().sort_values("path", ignore_index=True)
    if pseudo.path_map:
        write_path_map(path_map, pseudo.path_map)
    summary(done, quiet, path_map=pseudo.path_map)
    # Quoted values are raw values: a note may quote one (the StudyInstanceUID of a study with several PatientIDs).
    rep = result.report
    series = rep.series if rep.series is None else replace(rep.series, notes=tuple(_redacted_note(n, keep) for n in rep.series.notes))
    report = replace(rep, invalid_examples={}, notes=tuple(_redacted_note(n, keep) for n in rep.notes), series=series)
    return replace(result, manifest=done.manifest, errors=errors, report=report)


def _write_outputs(result: IngestResult, output: str, errors_path: str | None) -> None:
    from ..incremental import write_signatures
    from ..ingest import write_errors
    from ..manifest import write_manifest

    write_manifest(result.manifest, sys.stdout.buffer if output == "-" else output)
    if result.signatures is not None:
        write_signatures(result.signatures, output)  # after the manifest: it records the manifest's SHA-256
    if errors_path:
        write_errors(result.errors, errors_path)


def render_summary(
    result: IngestResult | ArrowIngest,
    output: str,
    errors_path: str | None,
    quiet: bool,
    summary: Callable[[], ManifestSummary] | None = None,
    *,
    command: str,
    json_path: str | None = None,
    warned: list[str] | tuple[str, ...] = (),
) -> None:
    """Rows, patients, images per patient, reconciled counts, label prevalence, warnings and notes.

    ``quiet`` keeps what reports lost or changed data: the reconciled counts when an
    input was skipped, failed or aggregated into another row, and the warnings. Notes
    (informational) and the summary tables are left out. ``summary`` gives the
    manifest's summary (by default :func:`mdprep.manifest.summarize` of ``result.manifest``).
    With ``json_path``, the same facts are also written as JSON (:func:`mdprep.summaries.ingest_summary`), with
    ``warned``, the library's warnings the command printed (:func:`ingest_messages`).
    """
    rep = result.report
    facts = functools.cache(summary if summary is not None else lambda: _summarize(result.manifest))
    shown = report_warnings(rep)
    if json_path:
        from ..summaries import ingest_summary

        write_json_summary(json_path, ingest_summary(command, rep, output, facts(), warnings=[*warned, *shown]))
    # What was not ingested as a row of its own is reported even with --quiet: nothing is lost silently.
    lost = bool(rep.skipped or rep.failed)
    if rep.series is not None:
        _render_series(rep, errors_path, quiet)
    elif lost or rep.aggregated or not quiet:
        line = f"{rep.found} found = {rep.ingested} ingested + {rep.skipped} skipped + {rep.failed} failed"
        if rep.aggregated:
            line += f" + {rep.aggregated} aggregated"
        if rep.lenient:
            line += f" ({rep.lenient} read without the DICOM preamble, marked lenient_read)"
        click.echo(line, err=True)
    if lost and rep.series is None:  # a series-level run said it already
        reasons = ", ".join(f"{k.split(':', 1)[1]} {v}" for k, v in rep.reasons.items())
        hint = f"listed in {errors_path}" if errors_path else "pass --errors FILE to list them"
        click.echo(f"Not ingested: {reasons} ({hint})", err=True)
    if rep.update is not None and not quiet:
        click.echo(f"Update: {rep.update.text()}; {rep.update.read} file(s) read", err=True)
    for warning in shown:
        click.echo(f"Warning: {warning}", err=True)
    if quiet:
        return
    from rich.table import Table

    s = facts()
    for note in rep.notes:
        click.echo(f"Note: {note}", err=True)
    table = Table(title=f"Wrote {output}", title_justify="left", show_header=False, box=None)
    table.add_row("rows", f"{s.rows:,}")
    table.add_row("patients", f"{s.patients:,}")
    per = "series per patient" if rep.series is not None else "images per patient"
    table.add_row(per, f"median {s.images_per_patient_median:g}, max {s.images_per_patient_max}")
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


def _summarize(manifest) -> ManifestSummary:
    from ..manifest import summarize

    return summarize(manifest)


def _render_series(rep, errors_path: str | None, quiet: bool) -> None:
    """The reconciled counts of a series-level ingest, and its volume problems (a warning: printed even with --quiet)."""
    series = rep.series
    lost = bool(rep.skipped or rep.failed or rep.dropped)
    if lost or not quiet:
        line = (
            f"{rep.found} files found = {series.instances} in {series.series} series rows + {rep.dropped} in "
            f"{series.dropped_series} dropped series + {rep.skipped} skipped + {rep.failed} failed"
        )
        if rep.lenient:
            line += f" ({rep.lenient} read without the DICOM preamble, marked lenient_read)"
        click.echo(line, err=True)
    hint = f"listed in {errors_path}" if errors_path else "pass --errors FILE to list them"
    if rep.skipped or rep.failed:
        reasons = ", ".join(f"{k.split(':', 1)[1]} {v}" for k, v in rep.reasons.items() if not k.startswith("dropped:"))
        click.echo(f"Not ingested: {reasons} ({hint})", err=True)
    if series.dropped_series:
        click.echo(
            f"Dropped {series.dropped_series} series ({rep.dropped} files) with volume problems: {series.problems_text()} "
            f"(--drop-bad-series; {hint})",
            err=True,
        )


def report_warnings(rep) -> list[str]:
    """The warnings an ingest report calls for (printed even with --quiet, and listed in --json): values that did
    not parse, rows without any label, series kept with volume problems."""
    out = []
    for column, n in rep.invalid_values.items():
        bad = rep.invalid_examples.get(column, ())
        shown = f": {examples_text(bad, len(bad))}" if bad else ""
        out.append(f"{n} value(s) of {column!r} did not parse and were stored as null{shown}")
    if rep.unlabeled:
        out.append(f"{rep.unlabeled} row(s) have no label at all; kept with null labels")
    series = rep.series
    if series is not None and series.flagged and not series.dropped_series:
        out.append(
            f"{series.flagged} of {series.series} series have volume problems: {series.problems_text()}; "
            "kept, flagged in their columns and in series_problems (--drop-bad-series leaves them out)"
        )
    return out


_output = output_option("OUT.parquet", "Manifest to write (atomically); '-' for stdout.")
_errors = click.option(
    "--errors", "errors_path", metavar="FILE", help="Write every file that gave no row (path, outcome, error type, message); .csv or .parquet."
)
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


@choice_option("--missing-patient", MISSING_PATIENT_POLICIES, "error", "Files without PatientID")
@choice_option("--level", INGEST_LEVELS, "instance", "One row per")
@click.option(
    "--drop-bad-series",
    is_flag=True,
    help="With --level series: leave out the series with a volume problem (counted, their files listed with --errors) instead of flagging them.",
)


@click.option(
    "--spacing-tolerance",
    type=float,
    default=0.1,
    show_default=True,
    metavar="FRACTION",
    help="With --level series: how far a step between slice positions may be from the median step (or a whole multiple of it, "
    "for missing slices), as a fraction of the median step; above 0, below 0.5.",
)


@_files_from
@allow_outside_root_option
@workers_option
@scheduler_options
@_errors
@incremental_options
@pseudonymize_options
@json_option
@quiet_option
def ingest_dicom_cmd(
    root, output, tags, missing_patient, level, drop_bad_series, spacing_tolerance, files_from, allow_outside_root, workers, scheduler,
    errors_path, update, record_signatures, pseudo, json_path, quiet,
):
    """Read the headers (never the pixels) of every DICOM file under ROOT.

    \b
    The preset columns: patient_id, study_id (StudyInstanceUID), series_uid, sop_uid,
    sop_class_uid, accession, modality, view (ViewPosition), body_part, sex, age (years),
    birth_date, study_date, rows, columns, pixel_spacing, photometric, transfer_syntax.
    Files without the DICOM preamble are read leniently (lenient_read); other files
    are skipped and counted; unreadable ones are listed with --errors.

    \b
    ROOT may be a URL: s3://bucket/prefix (pip install 'mdprep[s3]'), gs://, az://,
    file://; headers are read with ranged requests. Credentials and endpoints come
    from the back-end's environment (AWS_PROFILE, AWS_ENDPOINT_URL, ...).

    \b
    --level series gives one row per SeriesInstanceUID (CT, MR): its files in slice order
    (instance_paths), n_instances, n_frames, spacing_between_slices, orientation, and
    volume checks as columns (missing_slices, duplicate_positions, irregular_spacing,
    mixed_orientation, mixed_size, mixed_sop_class, localizer, mixed_patient, mixed_study,
    series_problems), summarised on stderr. Flagged series are kept unless --drop-bad-series.

    \b
    Examples:
      mdprep ingest dicom /data/dump -o manifest.parquet --tags Manufacturer,KVP,0018,1151 --errors errors.csv
      mdprep ingest dicom /data/ct -o ct-series.parquet --level series --errors ct-errors.csv
      mdprep ingest dicom /data/dump -o v1.parquet --record-signatures
      mdprep ingest dicom /data/dump --update v1.parquet -o v2.parquet   # reads only new and changed files
    """
    from ..dicom_header import split_tag_specs
    from ..ingest import ingest_dicom

    more_inputs, more_outputs = check_incremental(update, record_signatures, output, pseudonymised=pseudo.on)
    check_outputs(
        {"--files-from": files_from, "--key-file": pseudo.key_file, **more_inputs},
        {"-o/--output": output, "--errors": errors_path, "--path-map": pseudo.path_map, "--json": json_path, **more_outputs},
        stdout={"-o/--output", "--json"},
    )
    check_outputs_spare_images(root, {"-o/--output": output, "--errors": errors_path, "--path-map": pseudo.path_map, "--json": json_path, **more_outputs})
    files = _read_file_list(files_from)
    with ingest_messages(pseudo, json_path) as (keep, seen):
        with file_progress("Reading DICOM headers", quiet) as bar:
            result = ingest_dicom(
                root,
                files=files,
                tags=split_tag_specs(tags),
                missing_patient=missing_patient,
                allow_outside_root=allow_outside_root,
                workers=workers,
                on_found=bar.found,
                on_progress=bar.advance,
                update=update,
                record_signatures=record_signatures,
                scheduler=scheduler,
                level=level,
                drop_bad_series=drop_bad_series,
                spacing_tolerance=spacing_tolerance,
            )
        keep.update(result.manifest.frame.columns)
        result = _pseudonymized(result, pseudo, quiet, keep)
    _write_outputs(result, output, errors_path)
    render_summary(result, output, errors_path, quiet, command="ingest dicom", json_path=json_path, warned=seen)


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
@allow_outside_root_option
@workers_option
@scheduler_options
@_errors
@incremental_options
@pseudonymize_options
@json_option
@quiet_option
def ingest_images_cmd(
    root, patient_regex, output, files_from, allow_outside_root, workers, scheduler, errors_path, update, record_signatures, pseudo, json_path, quiet,
):
    """Index the PNG/JPEG/TIFF images, or the NIfTI volumes, under ROOT; patient and study come from the path.

    ROOT may be a URL (s3://bucket/prefix, gs://, az://), as for ingest dicom.

    \b
    NIfTI volumes (.nii, .nii.gz; pip install 'mdprep[nifti]') give one row per
    volume from the header only: width, height, depth, frames, voxel_spacing (mm),
    orientation (plane of the slices), axis_codes (RAS, LPS, ...), datatype, format.
    A tree holding both 2D images and volumes is refused: ingest each with --files-from.

    \b
    Example (CheXpert layout patient00001/study1/view1_frontal.jpg):
      mdprep ingest images CheXpert-v1.0-small/train -o images.parquet \\
        --patient-regex '(?P<patient>patient\\d+)/(?P<study>study\\d+)/view\\d+_(?P<view>frontal|lateral)'

    \b
    --update OLD.parquet reads only the images new or changed since OLD.parquet (see mdprep ingest dicom --help).
    """
    from ..ingest import ingest_images

    more_inputs, more_outputs = check_incremental(update, record_signatures, output, pseudonymised=pseudo.on)
    check_outputs(
        {"--files-from": files_from, "--key-file": pseudo.key_file, **more_inputs},
        {"-o/--output": output, "--errors": errors_path, "--path-map": pseudo.path_map, "--json": json_path, **more_outputs},
        stdout={"-o/--output", "--json"},
    )
    check_outputs_spare_images(root, {"-o/--output": output, "--errors": errors_path, "--path-map": pseudo.path_map, "--json": json_path, **more_outputs})
    files = _read_file_list(files_from)
    with ingest_messages(pseudo, json_path) as (keep, seen):
        with file_progress("Reading image headers", quiet) as bar:
            result = ingest_images(
                root, patient_regex=patient_regex, files=files, allow_outside_root=allow_outside_root, workers=workers,
                on_found=bar.found, on_progress=bar.advance, update=update, record_signatures=record_signatures, scheduler=scheduler,
            )
        keep.update(result.manifest.frame.columns)
        result = _pseudonymized(result, pseudo, quiet, keep)
    _write_outputs(result, output, errors_path)
    render_summary(result, output, errors_path, quiet, command="ingest images", json_path=json_path, warned=seen)


@ingest.command("table")
@click.argument("table", type=click.Path(dir_okay=False))
@choice_option("--preset", PRESETS, "generic", "How to read the table")
@_output
@click.option("--metadata", type=click.Path(dir_okay=False), help="MIMIC-CXR: the *-metadata.csv(.gz) table to join.")
@choice_option("--uncertain", UNCERTAIN_POLICIES, "keep", "Uncertain (-1) labels")
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
    help=f"Label cells blank in the source: {described(BLANK_POLICIES)}. Global or per label (wins); repeatable [default: missing].",
)


@click.option("--label-map", metavar="FILE|cxr", help="Rename and merge label names: a CSV (source,target) or JSON file, or 'cxr' for the built-in map of public chest X-ray names.")
@choice_option("--aggregate", AGGREGATE_POLICIES, "error", "Several rows per image")
@click.option("--reader-col", metavar="COLUMN", help="With --aggregate: each row's reader; one reader's rows are combined with 'any' before readers vote.")
@click.option("--col", "columns", multiple=True, metavar="CANONICAL=SOURCE", help="Take a canonical column (sex, age, view, study_date, split, ...) from a source column. Repeatable.")
@click.option("--sep", help="Field delimiter [default: from the file name, else sniffed].")
@click.option("--encoding", default="utf-8", show_default=True, help="Text encoding of the table.")
@click.option("--image-ext", default="jpg", show_default=True, help="MIMIC-CXR: file ending of the built paths (jpg or dcm).")
@click.option("--root", "image_root", type=click.Path(file_okay=False), help="Folder the table's paths are relative to (recorded in the manifest).")
@pseudonymize_options
@json_option
@quiet_option
def ingest_table_cmd(
    table, preset, output, metadata, uncertain, image_col, patient_col, path_col, study_col, labels_col, labels_sep, label_cols,
    label_when, blank, label_map, aggregate, reader_col, columns, sep, encoding, image_ext, image_root, pseudo, json_path, quiet,
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
    from .._lazy import import_numpy_single_threaded

    import_numpy_single_threaded()  # no linear algebra here: OpenBLAS's spinning threads would only cost CPU
    from ..ingest.table_arrow import ingest_table_arrow
    from ..manifest import write_table

    check_outputs(
        {"TABLE": table, "--metadata": metadata, "--label-map": label_map, "--key-file": pseudo.key_file},
        {"-o/--output": output, "--path-map": pseudo.path_map, "--json": json_path},
        stdout={"-o/--output", "--json"},
    )
    options = dict(
        preset=preset, metadata=metadata, uncertain=uncertain, image_col=image_col, patient_col=patient_col, path_col=path_col,
        study_col=study_col, labels_col=labels_col, labels_sep=labels_sep, label_cols=comma_list(label_cols),
        label_when=list(label_when), blank=list(blank), label_map=label_map, aggregate=aggregate, reader_col=reader_col,
        columns=list(columns), sep=sep, encoding=encoding, image_ext=image_ext, root=image_root,
    )  # fmt: skip
    sink = sys.stdout.buffer if output == "-" else output
    with ingest_messages(pseudo, json_path) as (keep, seen), status(f"Reading {table}", quiet):
        # The nih and chexpert presets are built in Arrow, without pandas, where that gives the very same manifest.
        fast = None if pseudo.on else ingest_table_arrow(table, **options)
        if fast is not None:
            write_table(fast.table, sink)
        else:
            from ..ingest import ingest_table
            from ..manifest import to_arrow

            result = ingest_table(table, **options)
            keep.update(result.manifest.frame.columns)
            if pseudo.on:
                result = _pseudonymized(result, pseudo, quiet, keep)
                _write_outputs(result, output, None)
            else:
                # ingest_table checked this very manifest against the contract as its last step: write it without checking again.
                write_table(to_arrow(result.manifest), sink)
    if fast is not None:
        render_summary(fast, output, None, quiet, summary=fast.summary, command="ingest table", json_path=json_path, warned=seen)
    else:
        render_summary(result, output, None, quiet, command="ingest table", json_path=json_path, warned=seen)
    _exit_without_collecting()


@functools.cache
def _exit_without_collecting() -> None:
    """When the process exits, skip the interpreter's last garbage collection over every object the command made.

    That pass costs 15 to 20 ms after ``ingest table`` (60 ms once pandas is loaded) and
    frees nothing the operating system would not. Called once the outputs are written,
    flushed and closed; the hook (registered once) runs at exit, after the command (in a
    test runner: when the test session ends), and every other exit handler still runs.
    """
    atexit.register(_freeze)


def _freeze() -> None:
    gc.disable()
    gc.freeze()
