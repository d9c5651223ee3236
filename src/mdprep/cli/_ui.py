"""Everything the command line shows a person: errors, warnings, progress, summaries.

All of it goes to stderr; data goes to files or stdout. ``--quiet`` silences the
progress bars and summaries (errors and warnings are still printed).
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from typing import Callable, Iterator

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..errors import MAX_LISTED_VIOLATIONS, ManifestValidationError, MdprepError, MdprepWarning, more_violations_text

#: Exit codes, decided here and nowhere else.
EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def stderr_console() -> Console:
    # Built on demand so click's test runner, which swaps sys.stderr, captures it.
    return Console(file=sys.stderr, soft_wrap=True, highlight=False)


class BadInput(click.ClickException):
    """A library error shown as one ``Error: ...`` line, exit code 2."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, error: MdprepError) -> None:
        super().__init__(_error_text(error))
        self.error = error


def _error_text(error: MdprepError) -> str:
    if isinstance(error, ManifestValidationError) and len(error.violations) > 1:
        # The summary, then every violation on a line of its own.
        where = f"{error.path}: " if error.path else ""
        lines = [f"{where}the manifest breaks {len(error.violations)} rules of the contract (docs/manifest.md):"]
        lines += [f"  - {v.message}" for v in error.violations[:MAX_LISTED_VIOLATIONS]]
        more = more_violations_text(error.violations)
        if more:
            lines.append(f"  {more}")
        return "\n".join(lines)
    return error.message


@contextlib.contextmanager
def reported_errors() -> Iterator[None]:
    """Turn library errors into exit code 2 and library warnings into ``Warning:`` lines."""
    with warnings.catch_warnings():
        original = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, MdprepWarning):
                click.echo(f"Warning: {message}", err=True)
            else:  # third-party warnings keep their usual form
                original(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        warnings.simplefilter("always", MdprepWarning)
        try:
            yield
        except MdprepError as exc:
            raise BadInput(exc) from exc


class FileProgress:
    """Callbacks for a library function: ``found(total)`` then ``advance(n)``."""

    def __init__(self, progress: Progress | None, description: str) -> None:
        self._progress = progress
        self._task = progress.add_task(description, total=None) if progress else None

    def found(self, total: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, total=total)

    def advance(self, n: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)


def _animate(quiet: bool) -> Console | None:
    """A console for progress bars, or None when silenced or stderr is not a terminal (CI logs)."""
    if quiet:
        return None
    console = stderr_console()
    return console if console.is_terminal else None


@contextlib.contextmanager
def file_progress(description: str, quiet: bool) -> Iterator[FileProgress]:
    console = _animate(quiet)
    if console is None:
        yield FileProgress(None, description)
        return
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    with progress:
        yield FileProgress(progress, description)


@contextlib.contextmanager
def status(message: str, quiet: bool) -> Iterator[None]:
    console = _animate(quiet)
    if console is None:
        yield
        return
    with console.status(message):
        yield


def echo(message: str, quiet: bool = False) -> None:
    if not quiet:
        click.echo(message, err=True)


def print_table(table: Table, quiet: bool = False) -> None:
    if not quiet:
        stderr_console().print(table)


ProgressCallback = Callable[[int], None]
