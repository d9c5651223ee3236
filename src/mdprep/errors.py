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
        miss = ", ".join(repr(c) for c in missing)
        have = ", ".join(repr(c) for c in present)
        msg = f"column{'s' if len(missing) > 1 else ''} {miss} not found{where}; the columns present are: {have}"
        if hint:
            msg += f". {hint}"
        super().__init__(msg, path=path, missing=list(missing), present=list(present))
        self.missing = list(missing)
        self.present = list(present)


class UsageError(MdprepError):
    """Options that contradict each other or a parameter with a bad value."""

    code = "bad_usage"


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


class ManifestValidationError(MdprepError):
    """The manifest breaks its contract; ``violations`` lists every broken rule."""

    code = "invalid_manifest"

    def __init__(self, violations: Sequence[Violation], *, path: str | None = None) -> None:
        self.violations = list(violations)
        where = f"{path}: " if path else ""
        n = len(self.violations)
        head = f"{where}the manifest breaks {n} rule{'s' if n != 1 else ''} of the contract (docs/manifest.md)"
        body = "; ".join(v.describe() for v in self.violations)
        super().__init__(f"{head}: {body}", path=path, violations=self.violations)
        self.path = path


def examples_text(values: Sequence[Any], total: int, limit: int = 5) -> str:
    """Render up to ``limit`` example values as ``'a', 'b', ... (N in all)``."""
    shown = ", ".join(repr(v) for v in list(values)[:limit])
    more = f", ... ({total} in all)" if total > limit else ""
    return shown + more
