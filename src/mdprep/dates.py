"""Reading dates written as text: the formats dataset tables and DICOM exports use.

Touches pandas Series only. One reader serves the table ingest (``study_date`` and its
spellings) and pseudonymisation (every date column, whatever its name), so a date that
one reads the other moves.
"""

from __future__ import annotations

import re

import pandas as pd

_ISO_DATE = r"\d{8}|\d{4}[-./]\d{1,2}[-./]\d{1,2}([ T].*)?"
_TIME = r"(?:[ T]+(?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2}(?:\.\d+)?))?)?"
_DAY_MONTH = re.compile(r"(?P<a>\d{1,2})(?P<sep>[/.-])(?P<b>\d{1,2})(?P=sep)(?P<y>\d{4})" + _TIME)
_DAY_MON = re.compile(r"(?P<d>\d{1,2})[- ](?P<mon>[A-Za-z]{3})[- ](?P<y>\d{4})" + _TIME)
_MONTHS = {m: i for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)}


def read_dates(values: pd.Series) -> tuple[pd.Series, str]:
    """Parse distinct text values as dates; NaT where none reads, and a note on an assumed field order.

    Reads ISO 8601 (``YYYY-MM-DD``, ``YYYYMMDD``, ``YYYY.MM.DD``), ``MM/DD/YYYY`` or
    ``DD/MM/YYYY`` (also with ``.`` or ``-``), and ``DD-Mon-YYYY``, each with an
    optional ``HH:MM[:SS]``. Day and month are told apart once for the whole
    column and separator: a first field over 12 means day first, a second field
    over 12 month first; when neither occurs, ``.`` reads day first and ``/`` or
    ``-`` month first, and the note says so.

    >>> v, note = read_dates(pd.Series(["03/01/2019", "22.11.1951", "01-Mar-2019 10:30", "2019-03-01", "13/13/2019"]))
    >>> [str(d) for d in v]
    ['2019-03-01 00:00:00', '1951-11-22 00:00:00', '2019-03-01 10:30:00', '2019-03-01 00:00:00', 'NaT']
    >>> note
    'day and month could be either way round: read month first (MM/DD/YYYY)'
    >>> [str(d) for d in read_dates(pd.Series(["03/01/2019", "25/12/2019"]))[0]]
    ['2019-01-03 00:00:00', '2019-12-25 00:00:00']
    """
    t = values.astype("str").str.strip()
    out = pd.Series(pd.NaT, index=t.index, dtype="datetime64[ns]")
    iso = t.str.fullmatch(_ISO_DATE)
    out[iso] = pd.to_datetime(t[iso], format="ISO8601", errors="coerce")
    note = ""
    dm = t.str.extract(_DAY_MONTH.pattern)
    dm = dm[dm["y"].notna() & ~iso]
    for sep, part in dm.groupby("sep", sort=True):
        a, b = part["a"].astype(int), part["b"].astype(int)
        day_over, month_over = bool(((a > 12) & (b <= 12)).any()), bool(((b > 12) & (a <= 12)).any())
        day_first = day_over or (not month_over and sep == ".")
        if not (day_over or month_over):
            order = "day first (DD.MM.YYYY)" if day_first else f"month first (MM{sep}DD{sep}YYYY)"
            note = f"day and month could be either way round: read {order}"
        day, month = (a, b) if day_first else (b, a)
        out[part.index] = _assemble(part["y"], month, day, part)
    mon = t.str.extract(_DAY_MON.pattern)
    mon = mon[mon["y"].notna() & ~iso]
    if len(mon):
        out[mon.index] = _assemble(mon["y"], mon["mon"].str.lower().map(_MONTHS), mon["d"].astype(int), mon)
    return out, note


def _assemble(year: pd.Series, month: pd.Series, day: pd.Series, parts: pd.DataFrame) -> pd.Series:
    """Timestamps from year, month, day and optional h/mi/s columns; NaT where the date does not exist."""
    when = pd.to_datetime(pd.DataFrame({"year": year.astype(int), "month": month, "day": day}), errors="coerce")
    seconds = parts["h"].astype(float).fillna(0) * 3600 + parts["mi"].astype(float).fillna(0) * 60 + parts["s"].astype(float).fillna(0)
    return when + pd.to_timedelta(seconds, unit="s")


def parse_dates(text: pd.Series) -> pd.Series:
    """Dates from text in the formats :func:`read_dates` reads; NaT where none parses.

    Parses each distinct value once and maps the result back to the rows.
    """
    t = text.astype("str").str.strip()
    distinct = pd.Series(pd.unique(t.dropna().to_numpy(dtype=object)), dtype="str")
    parsed, _ = read_dates(distinct)
    lookup = pd.Series(parsed.to_numpy(), index=distinct.to_numpy())
    return pd.Series(pd.to_datetime(t.map(lookup)), index=text.index)
