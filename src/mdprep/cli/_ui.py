"""Everything the command line shows a person: errors, warnings, progress, summaries.

All of it goes to stderr; data goes to files or stdout. ``--quiet`` silences the
progress bars and summaries (errors and warnings are still printed). rich is
imported only when something is drawn, so ``mdprep --help`` never loads it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import threading
import traceback
import warnings
from typing import TYPE_CHECKING, Callable, Iterator

import click

from ..errors import MAX_LISTED_VIOLATIONS, ManifestValidationError, MdprepError, MdprepWarning, more_violations_text

#: Exit codes, decided here and nowhere else (docs/getting-started.md#exit-codes):
#: 0 success, 1 a check ran and failed, 2 bad input, usage or environment,
#: 3 a bug in mdprep (an unexpected exception), 130 interrupted (Ctrl-C), 128 + N terminated
#: by signal N (143 for SIGTERM, 129 for SIGHUP).
EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
#: Set to 1 (or pass ``mdprep --debug``) to see the traceback of an internal error.
DEBUG_ENV = "MDPREP_DEBUG"

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table


def stderr_console() -> Console:
    # Built on demand so click's test runner, which swaps sys.stderr, captures it.
    from rich.console import Console

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


class EnvironmentProblem(click.ClickException):
    """The machine, not mdprep, said no (disk full, read-only folder, out of memory): exit code 2."""

    exit_code = EXIT_BAD_INPUT


class InternalError(click.ClickException):
    """An exception mdprep did not expect: a bug, exit code 3, never mistaken for a failed check."""

    exit_code = EXIT_INTERNAL


class Interrupted(click.ClickException):
    exit_code = EXIT_INTERRUPTED

    def __init__(self, message: str, exit_code: int = EXIT_INTERRUPTED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP) arrived: unwinds like Ctrl-C so atomic writes remove their temporary files."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def termination_unwinds() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGHUP raise :class:`Terminated` instead of killing the process.

    Python's default for them is to die on the spot, leaving the temporary files of
    :func:`~mdprep.fileio.atomic_write` behind; raised as an exception, they unwind
    the stack like Ctrl-C and every ``finally`` runs. Worker processes forked
    meanwhile keep the default (die at once). A signal already ignored (``nohup``)
    or handled by the embedding program is left alone, and so is everything outside
    the main thread (where signal handlers cannot be set).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()

    def handler(signum, frame):
        if os.getpid() != owner:  # a forked worker inherited this handler: die as the signal says
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated(signum)

    # Only signals that would kill the process: one ignored on purpose (nohup) stays ignored.
    signums = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None and signal.getsignal(s) == signal.SIG_DFL]
    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def _os_error_text(exc: OSError) -> str:
    """``No space left on device: 'out.parquet'`` with what to do, for the errors the environment gives."""
    reason = exc.strerror or type(exc).__name__
    where = f": {exc.filename!r}" if exc.filename is not None else ""
    hint = {
        errno.ENOSPC: "free some space or write elsewhere",
        errno.EACCES: "check the permissions, or write elsewhere",
        errno.EROFS: "the file system is read-only; write elsewhere",
        errno.EISDIR: "give a file name, not a folder",
        errno.ENOENT: "check the path",
        errno.ENOTDIR: "a part of the path is a file, not a folder; check the path",
    }.get(exc.errno, "check the path and the disk")
    return f"{reason}{where}; {hint}"


def debug_wanted() -> bool:
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx else None
    return bool(root and root.params.get("debug")) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _command_name(exc: BaseException) -> str:
    """The command that was running (``mdprep ingest table``): the deepest click context the error passed."""
    deepest = click.get_current_context(silent=True)
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        ctx = frame.f_locals.get("ctx")
        if isinstance(ctx, click.Context):
            deepest = ctx
    return deepest.command_path if deepest else "mdprep"


@contextlib.contextmanager
def reported_errors() -> Iterator[None]:
    """Map every way a command can end to its exit code, in one place.

    Library errors (:class:`~mdprep.errors.MdprepError`) and errors of the environment
    (``OSError``: disk full, read-only folder; ``MemoryError``) become one ``Error:``
    line and exit code 2. Any other exception is a bug: one line naming the command
    and the exception, exit code 3, and the traceback only with ``--debug`` or
    ``MDPREP_DEBUG=1``. Library warnings become ``Warning:`` lines.
    """
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
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt as exc:
            if isinstance(exc, Terminated):
                name = signal.Signals(exc.signum).name
                raise Interrupted(f"terminated ({name}); outputs written so far are complete, nothing half-written was left", 128 + exc.signum) from None
            raise Interrupted("interrupted; outputs written so far are complete, nothing half-written was left") from None
        except OSError as exc:
            if debug_wanted():
                traceback.print_exc()
            raise EnvironmentProblem(_os_error_text(exc)) from exc
        except MemoryError as exc:
            raise EnvironmentProblem("out of memory; close other programs, or give fewer rows or --workers 1") from exc
        except Exception as exc:  # noqa: BLE001 - the one place that turns a bug into exit code 3
            if debug_wanted():
                traceback.print_exc()
                hint = "the traceback is above"
            else:
                hint = f"rerun with --debug (or {DEBUG_ENV}=1) for the traceback"
            detail = " ".join(str(exc).split())[:200]
            raise InternalError(
                f"internal error in `{_command_name(exc)}`: {type(exc).__name__}: {detail} (a bug in mdprep, not a "
                f"problem with your data; {hint}, and please report it)"
            ) from exc


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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

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
