"""Typed exceptions and warnings raised by the mdprep library.

Every exception derives from :class:`MdprepError` and carries structured fields
(which file, which column, which rows) besides its message, so a caller can act on
them without parsing text. The command line turns any :class:`MdprepError` into one
``Error: ...`` line and exit code 2 (bad input or usage); exit code 1 is reserved
for a check that ran and failed (the leakage audit).

Messages say what is wrong, quote the bad value, and say how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence


class MdprepWarning(UserWarning):
    """Degraded but usable input: reported on stderr, never fatal."""


class MdprepError(Exception):
    """Base class of every error mdprep raises on bad input or usage.

    ``code`` is a stable machine-readable reason (``"missing_column"``, ...).
    """

    code = "error"

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message


class InputError(MdprepError):
    """An input file cannot be used as given (unreadable, wrong format, ...)."""

    code = "bad_input"

    def __init__(self, message: str, *, path: str | None = None, **fields: Any) -> None:
        super().__init__(message, path=path, **fields)
        self.path = path


class EmptyInputError(InputError):
    """An input has no data rows or no files."""

    code = "empty_input"


class EncodingError(InputError):
    """A text input is not valid in the expected encoding."""

    code = "bad_encoding"

    def __init__(self, message: str, *, path: str, line: int, encoding: str) -> None:
        super().__init__(message, path=path, line=line, encoding=encoding)
        self.line = line
        self.encoding = encoding


class MissingColumnError(InputError):
    """Columns that the operation needs are absent."""

    code = "missing_column"

    def __init__(
        self,
        missing: Sequence[str],
        present: Sequence[str],
        *,
        path: str | None = None,
        hint: str = "",
    ) -> None:
        where = f" in {path}" if path else ""
        miss = examples_text(missing, len(missing), limit=20)
        have = examples_text(present, len(present), limit=50)
        msg = f"column{'s' if len(missing) > 1 else ''} {miss} not found{where}; the columns present are: {have}"
        if hint:
            msg += f". {hint}"
        super().__init__(msg, path=path, missing=list(missing), present=list(present))
        self.missing = list(missing)
        self.present = list(present)


class UsageError(MdprepError):
    """Options that contradict each other or a parameter with a bad value."""

    code = "bad_usage"


class EngineError(MdprepError):
    """The compute engine let the run down: a Dask scheduler that cannot be reached, or a cluster that lost the work.

    ``scheduler`` names the address; the message says how to fix it. Exit code 2, like bad input.
    """

    code = "engine"

    def __init__(self, message: str, *, scheduler: str, **fields: Any) -> None:
        super().__init__(message, scheduler=scheduler, **fields)
        self.scheduler = scheduler


class ComponentTooLargeError(UsageError):
    """A ``--link`` joined more rows into one group than ``--max-component`` allows.

    Usually one placeholder value (an empty accession, the hash of a blank image)
    glues unrelated patients together. ``link`` names the link whose joins alone
    make most of the component. Exit code 2.
    """

    code = "component_too_large"


class LeakageError(MdprepError):
    """The manifest's splits (or folds) share patients or images; training on them would overstate every metric.

    Raised by the commands that refuse a leaking manifest unless told otherwise
    (``train`` and ``export``, with ``--allow-leakage``): bad input, exit code 2.
    ``mdprep audit-leakage`` and ``check``, whose job is the audit, exit 1 instead.
    """

    code = "leakage"


@dataclass(frozen=True)
class Violation:
    """One broken rule of the manifest contract.

    Attributes
    ----------
    check : str
        Stable name of the rule (``"missing_column"``, ``"duplicate_image_id"``,
        ``"null_value"``, ``"bad_label_value"``, ``"bad_type"``, ``"metadata"``).
    column : str or None
        The column concerned, if any.
    count : int
        How many rows (or columns) break the rule.
    examples : tuple
        A few offending values, for the message.
    message : str
        One human sentence, saying how to fix it where we can.
    """

    check: str
    column: str | None
    count: int
    examples: tuple = field(default_factory=tuple)
    message: str = ""

    def describe(self) -> str:
        return self.message


#: Violations a message lists; the others are counted, with their columns.
MAX_LISTED_VIOLATIONS = 10


def more_violations_text(violations: Sequence[Violation]) -> str:
    """``... and N more rules broken (columns 'a', 'b', ...)`` for the violations a message leaves out, or ``""``.

    >>> more_violations_text([Violation("bad_label_value", f"L{i}", 1) for i in range(12)])
    "... and 2 more rules broken (columns 'L10', 'L11')"
    """
    rest = list(violations)[MAX_LISTED_VIOLATIONS:]
    if not rest:
        return ""
    columns = list(dict.fromkeys(v.column for v in rest if v.column))
    where = f" (columns {examples_text(columns, len(columns), limit=10)})" if columns else ""
    return f"... and {len(rest)} more rule{'s' if len(rest) != 1 else ''} broken{where}"


class ManifestValidationError(MdprepError):
    """The manifest breaks its contract; ``violations`` lists every broken rule.

    The message lists the first :data:`MAX_LISTED_VIOLATIONS` and counts the rest;
    ``violations`` holds them all.
    """

    code = "invalid_manifest"

    def __init__(self, violations: Sequence[Violation], *, path: str | None = None) -> None:
        self.violations = list(violations)
        where = f"{path}: " if path else ""
        n = len(self.violations)
        head = f"{where}the manifest breaks {n} rule{'s' if n != 1 else ''} of the contract (docs/manifest.md)"
        listed = [v.describe() for v in self.violations[:MAX_LISTED_VIOLATIONS]]
        more = more_violations_text(self.violations)
        body = "; ".join(listed + ([more] if more else []))
        super().__init__(f"{head}: {body}", path=path, violations=self.violations)
        self.path = path


#: The longest quoted value in a message; longer ones are cut with an ellipsis.
EXAMPLE_WIDTH = 60


def short_repr(value: Any, width: int = EXAMPLE_WIDTH) -> str:
    """``repr(value)``, cut to ``width`` characters with ``…`` (a string keeps its closing quote).

    >>> short_repr("1 2 3 " * 20, width=16)
    "'1 2 3 1 2 3 1…'"
    >>> short_repr(12)
    '12'
    """
    text = repr(value)
    if len(text) <= width:
        return text
    if isinstance(value, str):
        return text[: width - 2] + "…" + text[-1]
    return text[: width - 1] + "…"


def cut_text(text: str, width: int = 200) -> str:
    """``text`` cut to ``width`` characters with ``…``, for messages that quote a library's error.

    >>> cut_text("Failed to parse string: 'xxxxxxxx'", width=30)
    "Failed to parse string: 'xxxx…"
    """
    return text if len(text) <= width else text[: width - 1] + "…"


def examples_text(values: Sequence[Any], total: int, limit: int = 5) -> str:
    """Render up to ``limit`` example values as ``'a', 'b', ... (N in all)``.

    Each value is quoted by :func:`short_repr`, so a message stays short however
    long the values are (run-length-encoded masks, free-text reports).

    >>> examples_text(["a", "x" * 100], 7)
    "'a', 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…', ... (7 in all)"
    """
    shown = ", ".join(short_repr(v) for v in list(values)[:limit])
    more = f", ... ({total} in all)" if total > limit else ""
    return shown + more
