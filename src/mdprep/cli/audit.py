"""``mdprep hash`` and ``mdprep audit-leakage``."""

from __future__ import annotations

import contextlib
import os

import click

from ..choices import ALL_CHECKS, PERSON_COLUMNS
from ..fileio import check_outputs, check_outputs_spare_images
from ._ui import file_progress, print_table
from ._options import (
    check_incremental,
    comma_list,
    given_list,
    incremental_options,
    json_option,
    output_option,
    quiet_option,
    root_option,
    scheduler_options,
    workers_option,
    write_json_summary,
)


class ByteSize(click.ParamType):
    """A size in bytes: ``2147483648``, or with a binary unit: ``512K``, ``64M``, ``2G``, ``1T`` (``2GiB`` too)."""

    name = "SIZE"
    _UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        import re

        match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:I?B)?\s*", str(value).upper())
        if not match or int(match[1]) < 1:
            self.fail(f"{value!r} is not a size; give bytes (2147483648) or a number with K, M, G or T (2G)", param, ctx)
        return int(match[1]) * self._UNITS[match[2]]


#: ``--path-map``, shared by the commands that read the images of a pseudonymised manifest (hash, train).
path_map_option = click.option(
    "--path-map",
    type=click.Path(dir_okay=False),
    help="The private path map `mdprep pseudonymize --path-map` wrote: read each image at its real path; outputs keep the pseudonymised ones.",
)

#: ``--allow-outside-root``, shared by the commands that read image files (hash, train).
allow_outside_root_option = click.option(
    "--allow-outside-root",
    is_flag=True,
    help="Read files outside the root (manifest paths such as ../x or absolute ones, symlinks out of it) instead of refusing or skipping them.",
)


@click.command("hash")
@click.argument("manifest", type=click.Path(dir_okay=False))
@output_option("OUT.parquet", "Manifest to write with file_sha256, pixel_sha256 and phash columns; '-' for stdout.")
@root_option
@workers_option
@scheduler_options
@click.option("--errors", "errors_path", metavar="FILE", help="Write the files that could not be hashed (.csv or .parquet).")
@click.option("--max-bytes", type=ByteSize(), default="2G", show_default=True, help="Largest file read, and largest uncompressed voxel data of a NIfTI volume; more is a failed row (TooLarge). Units K, M, G, T are powers of 1024.")
@allow_outside_root_option
@path_map_option
@incremental_options
@json_option
@quiet_option
def hash_cmd(manifest, output, root, workers, scheduler, errors_path, max_bytes, allow_outside_root, path_map, update, record_signatures, json_path, quiet):
    """Hash every image of MANIFEST once (bytes, decoded pixels, perceptual hash) for the audit.

    \b
    Only regular files under the root are read: paths that lead outside it are
    refused (--allow-outside-root reads them), and folders, FIFOs, devices and files
    over --max-bytes are failed rows.

    \b
    NIfTI volumes (.nii, .nii.gz) are hashed whole: pixel_sha256 of the voxel
    array and phash of its three maximum-intensity projections, after turning
    it to the closest canonical (RAS) axes, so a re-oriented copy matches.

    \b
    Needs the hash extra: pip install 'mdprep[hash]' (and 'mdprep[nifti]' for volumes).

    \b
    Examples:
      mdprep hash dicom.parquet -o dicom-hashed.parquet --errors hash-errors.csv --record-signatures
      mdprep hash dicom-v2.parquet --update dicom-hashed.parquet -o dicom-v2-hashed.parquet   # hashes only new and changed files
    """
    from ..hashing import hash_manifest
    from ..incremental import write_signatures
    from ..ingest import write_errors
    from ..manifest import read_manifest, write_manifest
    from ..pseudonyms import load_path_map

    more_inputs, more_outputs = check_incremental(update, record_signatures, output, pseudonymised=path_map is not None)
    check_outputs(
        {"MANIFEST": manifest, "--path-map": path_map, **more_inputs}, {"-o/--output": output, "--errors": errors_path, "--json": json_path, **more_outputs},
        stdout={"-o/--output", "--json"},
    )
    m = read_manifest(manifest)
    check_outputs_spare_images(root or m.root, {"-o/--output": output, "--errors": errors_path, "--json": json_path, **more_outputs}, "the image root")
    real_paths = load_path_map(path_map) if path_map else None
    with file_progress("Hashing images", quiet) as bar:
        result = hash_manifest(
            m, root=root, workers=workers, on_progress=bar.advance, max_bytes=max_bytes, allow_outside_root=allow_outside_root, path_map=real_paths,
            update=update, record_signatures=record_signatures, on_found=bar.found,
            scheduler=scheduler,
        )
    write_manifest(result.manifest, output)
    if result.signatures is not None:
        write_signatures(result.signatures, output)  # after the manifest: it records the manifest's SHA-256
    if errors_path:
        write_errors(result.errors, errors_path)
    if json_path:
        from ..summaries import hash_summary

        write_json_summary(json_path, hash_summary(result, len(m.frame), output))
    if result.failed or not quiet:
        hint = f"listed in {errors_path}" if errors_path else "pass --errors FILE to list them"
        line = f"{len(m.frame)} images = {result.hashed} hashed + {result.failed} failed"
        click.echo(line + (f" ({hint}); failed rows keep null hashes and count as unchecked" if result.failed else ""), err=True)
    if result.update is not None and not quiet:
        click.echo(f"Update: {result.update.text()}; {result.update.read} file(s) read", err=True)


_AUDIT_OPTIONS = [
    click.option("--names", help="Split names of the manifests, one per file [default: the file names]."),
    click.option("--split-col", default="split", show_default=True, help="With one manifest: the column naming each row's split."),
    click.option("--group", default="patient_id", show_default=True, help="Column for patient_overlap."),
    click.option("--checks", "checks", multiple=True, metavar="CHECK,...", help=f"Checks to run [default: all]: {', '.join(ALL_CHECKS)}."),
    click.option("--fail-on", multiple=True, metavar="CHECK,...", help="Checks whose findings fail the gate [default: all but same_person]."),
    click.option(
        "--require", multiple=True, metavar="CHECK,...|all",
        help="Checks that must fully run: the gate fails (exit 1) when one is skipped, leaves rows unchecked, or (patient_overlap) runs on a degenerate grouping.",
    ),
    click.option("--allow", "allow_path", type=click.Path(dir_okay=False), help="JSON list of reviewed findings ({check, key, reason}) reported but not failing."),
    click.option("--threshold", default=4, show_default=True, type=click.IntRange(0, 16), help="Hamming distance for near_duplicate (0 to 16 bits)."),
    click.option("--person-cols", default=",".join(PERSON_COLUMNS), show_default=True, help="Columns that together suggest one person (same_person)."),
    click.option("--time-col", help="Date column for the temporal check."),
    click.option("--temporal", is_flag=True, help="The split is by time: fail when val/test images predate the latest train image."),
    click.option("--train-split", default="train", show_default=True, help="Name of the training split (temporal check)."),
    json_option,
    click.option("--junit", "junit_path", metavar="FILE", help="Write JUnit XML: one test case per check."),
    click.option("--markdown", "markdown_path", metavar="FILE", help="Write a short Markdown summary for a pull request."),
    click.option(
        "--suggest", is_flag=True,
        help="When the gate fails, print the `mdprep split --keep-existing --link ...` command whose split would pass, how many rows it moves, and whether that was verified.",
    ),
    quiet_option,
]


def check_audit_outputs(manifests, options) -> None:
    """The report files of `audit-leakage` and `check` never overwrite a manifest, the allow list or each other."""
    reports = {"--json": options["json_path"], "--junit": options["junit_path"], "--markdown": options["markdown_path"]}
    check_outputs({"MANIFESTS": list(manifests), "--allow": options["allow_path"]}, reports, stdout=set(reports))


def audit_options(command):
    """The options shared by `audit-leakage` and `check`."""
    for option in reversed(_AUDIT_OPTIONS):
        command = option(command)
    return command


@click.command("audit-leakage")
@click.argument("manifests", nargs=-1, required=True, type=click.Path(dir_okay=False))
@audit_options
def audit_leakage(manifests, **options):
    """Find every way a patient or an image crosses splits; exit 1 when leakage is found.

    \b
    Give one manifest with a split column (and optionally a fold column, audited
    between folds too), or several manifests, each one split. Hash columns from
    `mdprep hash` enable the duplicate and near-duplicate checks; checks that cannot
    run are reported as skipped, and rows without a value are counted as unchecked.
    The verdict line says how many checks ran; --require makes a check that could
    not fully run fail the gate.

    \b
    Exit codes: 0 no leakage, 1 leakage found or a required check did not fully run
    (the gate fails), 2 bad input or usage.

    \b
    Examples:
      mdprep audit-leakage nih-split.parquet --junit audit.xml --markdown audit.md
      mdprep audit-leakage train.parquet val.parquet test.parquet --allow reviewed.json
      mdprep audit-leakage hashed-split.parquet --require patient_overlap,duplicate_pixels,near_duplicate
    """
    check_audit_outputs(manifests, options)
    with reports_on_error(options):
        code = run_audit(manifests, **options)
    click.get_current_context().exit(code)


def write_gate_reports(options, reports: dict[str, str]) -> None:
    """Write the gate's report files (``--json``, ``--junit``, ``--markdown``) that were asked for, from ``reports``."""
    from ..fileio import write_text

    for key, fmt in (("json_path", "json"), ("junit_path", "junit"), ("markdown_path", "markdown")):
        if options[key]:
            write_text(options[key], reports[fmt])


@contextlib.contextmanager
def reports_on_error(options, checked: list | None = None, command: str = "audit-leakage"):
    """On bad input (exit 2), the report files say the gate could not run: those of an earlier, passing run would still say "passed"."""
    from ..errors import MdprepError
    from ..audit import contract_failure

    try:
        yield
    except (MdprepError, click.UsageError) as exc:
        message = exc.message if isinstance(exc, MdprepError) else exc.format_message()
        write_gate_reports(options, contract_failure(checked or [], error=message, command=command))
        raise


def _read_for_audit(path, columns, lean, split_col):
    """One manifest as the audit needs it.

    When the file has what the audit requires (``image_id``, and the split column of a
    single manifest), only the ``lean`` columns that the checks look at are read and
    validated, ``path``, which no check reads, is validated in the file when its
    statistics allow, and text stays in Arrow (:func:`mdprep.manifest.read_manifest`).
    Otherwise all ``columns`` are read, so that the error names the columns present.
    """
    from ..manifest import manifest_columns, read_manifest

    names = manifest_columns(path)
    if names is not None and "image_id" in names and (split_col is None or split_col in names):
        return read_manifest(path, columns=lean, check_only=["path"], arrow_text=True)
    return read_manifest(path, columns=columns)


def _check_columns(checks, person_columns, time_col) -> list[str]:
    """The columns the checks named (every check when None) may look at; the audit reads no others."""
    from ..choices import VALUE_CHECKS
    from ..audit import GROUPING_COLUMNS

    wanted = ALL_CHECKS if checks is None else checks
    columns = [VALUE_CHECKS[c] for c in wanted if c in VALUE_CHECKS]
    if checks is None or "patient_overlap" in wanted:
        columns += list(GROUPING_COLUMNS)  # a degenerate grouping is told by study_id and series_uid
    if checks is None or "near_duplicate" in wanted:
        columns.append("phash")
    if checks is None or "same_person" in wanted:
        columns += list(person_columns)
    return columns + ([time_col] if time_col else [])


def _fingerprints(manifests) -> list:
    """A function per manifest that returns its :func:`mdprep.fileio.file_fingerprint`.

    The files are hashed on another thread from now on (hashlib lets go of the GIL), while
    the libraries load and the manifests are read; a function raises what the hashing raised,
    when it is called, where the fingerprint was computed before. Standard input is
    fingerprinted when asked, as its copy is made by the first reader.
    """
    from ..fileio import file_fingerprint, is_stdio

    if any(is_stdio(p) for p in manifests):
        return [lambda p=p: file_fingerprint(p) for p in manifests]
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1)
    futures = [pool.submit(file_fingerprint, p) for p in manifests]
    pool.shutdown(wait=False)
    return [f.result for f in futures]


def run_audit(manifests, names, split_col, group, checks, fail_on, require, allow_path, threshold, person_cols, time_col, temporal, train_split, json_path, junit_path, markdown_path, suggest, quiet) -> int:
    """Load the manifests, run the audit, write the reports, print the summary; return the exit code."""
    person_columns = comma_list([person_cols])
    if temporal and not time_col:
        raise click.UsageError("--temporal needs --time-col (the date of each image)")
    if names and len(manifests) == 1:
        raise click.UsageError("--names names the splits of several manifests, one per file; with one manifest the split column (--split-col) names them")
    if suggest and len(manifests) > 1:
        raise click.UsageError(
            "--suggest re-splits one manifest with a split column; these are several files, one per split: "
            "put their rows in one manifest with a split column (pandas.concat) and audit that"
        )
    fingerprints = _fingerprints(manifests)  # on another core while the libraries load
    from ..audit import (
        DESCRIPTIONS,
        VALUE_CHECKS,
        WARNING_CHECKS,
        FrameRows,
        audit_rows,
        check_combinable,
        combine_manifests,
        finding_lines,
        load_allow_list,
        summary_line,
        to_junit,
        to_markdown,
        visible,
    )
    from ..auditscan import scan_for_audit, scannable
    from ..fileio import write_text
    from ..hashing import HASH_COLUMNS
    from ..manifest import REQUIRED_COLUMNS, read_manifest
    from ..pseudonyms import check_same_key

    check_list = comma_list(checks) if checks else None
    gate = comma_list(fail_on) if fail_on else None
    required = comma_list(require) if require else None
    if gate is None and time_col and not temporal:
        # Dates were given but the split is not by time: report early images, do not fail on them.
        gate = [c for c in ALL_CHECKS if c not in WARNING_CHECKS and c != "temporal"]
    columns = list(dict.fromkeys([*REQUIRED_COLUMNS, split_col, "fold", group, *VALUE_CHECKS.values(), *HASH_COLUMNS, *person_columns, *( [time_col] if time_col else [])]))
    lean = [c for c in columns if c in {*REQUIRED_COLUMNS, split_col, "fold", group, *_check_columns(check_list, person_columns, time_col)}]
    scan = None
    if scannable(check_list, time_col):
        # A large manifest is scanned column by column; None when it must be read (small, or anything to report).
        scan = scan_for_audit(manifests, lean, split_col=split_col, checks=check_list, group=group, one_split_per_file=len(manifests) > 1)
    if scan is None:
        loaded = [_read_for_audit(p, columns, lean, split_col if len(manifests) == 1 else None) for p in manifests]
        rows = [len(m.frame) for m in loaded]
    else:
        loaded, rows = scan.manifests, scan.rows
    inputs = [{**fingerprint(), "rows": n} for fingerprint, n in zip(fingerprints, rows)]
    check_same_key(loaded, list(manifests))
    split_names = None
    if len(loaded) > 1:
        split_names = given_list("--names", names) or [os.path.splitext(os.path.basename(p))[0] for p in manifests]
    if scan is not None:
        if split_names is not None:
            check_combinable(loaded, split_names)
        held = scan.audit_rows(split_names)
    else:
        held = FrameRows(loaded[0].frame if split_names is None else combine_manifests(loaded, split_names, split_col=split_col))
    allow = load_allow_list(allow_path) if allow_path else []
    report = audit_rows(
        held,
        split_col=split_col,
        group=group,
        checks=check_list,
        fail_on=gate,
        allow=allow,
        threshold=threshold,
        person_columns=person_columns,
        time_col=time_col,
        train_split=train_split,
        inputs=inputs,
        require=required,
    )
    if suggest and report.exit_code:
        from dataclasses import replace

        from ..remedy import suggest_split

        suggestion = suggest_split(read_manifest(manifests[0]), report, path=manifests[0], allow=allow, train_split=train_split)
        report = replace(report, suggestion=suggestion.to_dict())
    for path, text in ((json_path, report.to_json), (junit_path, lambda: to_junit(report)), (markdown_path, lambda: to_markdown(report))):
        if path:
            write_text(path, text())
    if not quiet:
        from rich.markup import escape as escape_markup
        from rich.table import Table

        table = Table(title="Leakage audit", title_justify="left")
        table.add_column("check")
        table.add_column("between")
        table.add_column("result")
        table.add_column("details", overflow="fold")
        colour = {"passed": "green", "failed": "red", "warning": "yellow", "skipped": "dim"}
        for r in report.checks:
            # Split names and reasons come from the data: never read as rich markup.
            table.add_row(r.check, f"{r.partition}s", f"[{colour[r.verdict]}]{r.verdict}[/]", escape_markup(summary_line(r)))
        print_table(table)
        for r in report.failed:
            click.echo(f"{r.check} ({r.partition}s): {DESCRIPTIONS[r.check]}", err=True)
            for line in finding_lines(r, 5):
                click.echo(f"  {line}", err=True)
    if report.unassigned_rows:
        click.echo(f"Warning: {report.unassigned_rows} row(s) have no {visible(split_col)} and were not audited", err=True)
    click.echo(report.verdict, err=True)
    if report.suggestion is not None:
        for line in suggestion.lines():
            click.echo(visible(line), err=True)
    return report.exit_code


@click.command("check")
@click.argument("manifests", nargs=-1, required=True, type=click.Path(dir_okay=False))
@audit_options
def check(manifests, **options):
    """The one-stop CI gate: the manifest contract, then the leakage audit.

    \b
    Exit codes: 0 all clean, 1 a manifest breaks the contract, leakage was found or a
    required check did not fully run, 2 bad input or usage. Takes the options and
    report formats of audit-leakage (--require included).

    \b
    Example (in CI):
      mdprep check manifests/*.parquet --junit reports/mdprep.xml --markdown reports/mdprep.md
    """
    from ..audit import visible
    from ..manifest import inspect_manifest
    from ..audit import contract_failure
    from ._ui import EXIT_CHECK_FAILED

    check_audit_outputs(manifests, options)
    checked = []
    with reports_on_error(options, checked, command="check"):
        for path in manifests:
            violations = inspect_manifest(path)[1]
            for v in violations:
                click.echo(visible(f"{path}: [{v.check}] {v.message}"), err=True)  # no control character of a file name reaches the terminal
            checked.append((path, violations))
        broken = sum(bool(vs) for _, vs in checked)
        if broken:
            # The report files say the gate failed: a CI step reading them must not find them missing or stale.
            write_gate_reports(options, contract_failure(checked))
            click.echo(f"Contract failed for {broken} manifest(s); fix them before the leakage audit can run", err=True)
            click.get_current_context().exit(EXIT_CHECK_FAILED)
        if not options["quiet"]:
            click.echo(f"Contract: {len(manifests)} manifest(s) valid", err=True)
        code = run_audit(manifests, **options)
    click.get_current_context().exit(code)


@click.command("report")
@click.argument("manifest", type=click.Path(dir_okay=False))
@output_option("report.html", "The HTML file to write (self-contained, no network needed); '-' for stdout.")
@click.option("--audit", "audit_path", type=click.Path(dir_okay=False), help="An audit report from `mdprep audit-leakage --json`.")
@click.option("--title", default=None, help="Page title [default: the manifest's file name].")
@quiet_option
def report(manifest, output, audit_path, title, quiet):
    """Write one self-contained HTML page about MANIFEST: splits, prevalence, patients, quality, leakage.

    \b
    Example:
      mdprep audit-leakage nih-split.parquet --json audit.json
      mdprep report nih-split.parquet --audit audit.json -o report.html
    """
    from ..fileio import write_text
    from ..manifest import read_manifest
    from ..report import build_report, load_audit

    check_outputs({"MANIFEST": manifest, "--audit": audit_path}, {"-o/--output": output}, stdout={"-o/--output"})
    m = read_manifest(manifest)
    page = build_report(m, audit=load_audit(audit_path) if audit_path else None, title=title or f"mdprep report: {os.path.basename(manifest)}")
    write_text(output, page)
    if not quiet:
        click.echo(f"Wrote {output}", err=True)
