"""Checks of numeric parameters, shared by every library entry point that takes them.

Each check returns the value when it is usable and raises
:class:`~mdprep.errors.UsageError` otherwise, with a message that quotes the value
and says what is allowed. The command line applies the same bounds in its option
types (``mdprep.cli._options``), so a bad value is refused before anything is read;
these checks make a call from Python just as safe.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from .errors import UsageError, short_repr

#: Seeds are 32-bit unsigned integers: every generator mdprep seeds (numpy, torch, scikit-learn) takes them.
SEED_MAX = 2**32 - 1
#: Bounds of ``mdprep train --image-size``: below 16 pixels the models pool the image away; above 4096 one batch fills gigabytes.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 4096
#: The largest ``mdprep train --lr``: AdamW moves every weight by about lr per step, so 1 is already far too much.
MAX_LR = 1.0
#: The largest ``mdprep train --batch-size``: 65,536 images of 224 x 224 pixels already fill 40 GB.
MAX_BATCH_SIZE = 65536


def check_seed(seed: Any, option: str = "--seed") -> int:
    """``seed`` as an int when it is an integer from 0 to 2**32-1, else a :class:`UsageError`.

    >>> check_seed(7)
    7
    >>> check_seed(-1)
    Traceback (most recent call last):
    ...
    mdprep.errors.UsageError: --seed -1: give an integer from 0 to 4294967295 (2**32-1)
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) <= SEED_MAX:
        raise UsageError(f"{option} {short_repr(seed)}: give an integer from 0 to {SEED_MAX} (2**32-1)", option=option, value=seed)
    return int(seed)


def check_number(
    value: Any,
    option: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    integer: bool = False,
) -> Any:
    """``value`` when it is a finite number (an integer with ``integer``) within the bounds.

    ``minimum`` and ``maximum`` are inclusive, ``above`` is an exclusive lower bound.
    NaN, infinities, booleans and text are refused.

    >>> check_number(0.001, "--lr", above=0)
    0.001
    >>> check_number(float("nan"), "--lr", above=0)
    Traceback (most recent call last):
    ...
    mdprep.errors.UsageError: --lr nan: give a finite number above 0
    """
    kind = "an integer" if integer else "a finite number"
    bounds = []
    if above is not None:
        bounds.append(f"above {above:g}")
    if minimum is not None:
        bounds.append(f"from {minimum:g}")
    if maximum is not None:
        bounds.append(f"up to {maximum:g}")
    wanted = f"{kind} {' '.join(bounds)}".strip()
    number_type = numbers.Integral if integer else numbers.Real
    ok = not isinstance(value, bool) and isinstance(value, number_type) and math.isfinite(value)
    if ok:
        ok = (above is None or value > above) and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        raise UsageError(f"{option} {short_repr(value)}: give {wanted}", option=option, value=value)
    return value
