"""Keyed pseudonyms for identifiers, so manifests can be committed and checked in CI.

Touches DataFrames and the key only. A pseudonym is an HMAC-SHA256 of the value
under a secret key and a per-column namespace, so:

* the same key and value always give the same pseudonym, in any run and any file,
  and grouping, splitting and the leakage audit work unchanged;
* someone holding the original ids but not the key cannot recompute them, which an
  unkeyed hash would allow;
* different columns never collide, because each has its own namespace.

Patient, study and accession ids become 20-character hex strings. DICOM UIDs become
valid UIDs ``2.25.<decimal of the HMAC>``, cut to the 64-character limit. Dates are
shifted by one keyed offset per patient (intervals kept), cut to the year, or
dropped. Ages over 89 become 90. Direct identifiers with no analytic use are dropped.

The key is never written, printed or logged; manifests record only its
fingerprint, an HMAC of a fixed string.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from .errors import InputError, MdprepError, MdprepWarning, MissingColumnError, UsageError, short_repr
from .fileio import atomic_write
from .manifest import Manifest, provenance_step

KEY_ENV = "MDPREP_PSEUDONYM_KEY"
MIN_KEY_BYTES = 32
ALGORITHM = "HMAC-SHA256"
HEX_LENGTH = 20
DATE_POLICIES = ("shift", "year", "drop")
MAX_SHIFT_DAYS = 365

#: Identifier columns replaced by hex pseudonyms, and by UID pseudonyms.
HEX_COLUMNS = ("patient_id", "study_id", "accession")
UID_COLUMNS = ("series_uid", "sop_uid")
#: Date columns transformed by the date policy.
DATE_COLUMNS = ("study_date", "birth_date")
#: Direct identifiers dropped, with the DICOM PS3.15 Annex E handling that applies.
DROPPED_COLUMNS = {
    "patient_name": "Basic Application Level Confidentiality Profile: Patient's Name removed",
    "other_patient_names": "Basic Profile: Other Patient Names removed",
    "other_patient_ids": "Basic Profile: Other Patient IDs removed",
    "patient_address": "Basic Profile: Patient's Address removed",
    "referring_physician_name": "Basic Profile: Referring Physician's Name removed",
    "performing_physician_name": "Basic Profile: Performing Physicians' Name removed",
    "operators_name": "Basic Profile: Operators' Name removed",
    "institution_name": "Basic Profile: Institution Name removed (Retain Institution Identity Option not used)",
    "institution_address": "Basic Profile: Institution Address removed",
    "study_description": "Basic Profile: Study Description removed (Clean Descriptors Option not used)",
    "series_description": "Basic Profile: Series Description removed (Clean Descriptors Option not used)",
    "requested_procedure_description": "Basic Profile: removed (Clean Descriptors Option not used)",
    "performed_procedure_step_description": "Basic Profile: removed (Clean Descriptors Option not used)",
    "additional_patient_history": "Basic Profile: Additional Patient History removed",
    "patient_comments": "Basic Profile: Patient Comments removed",
}
#: Options of PS3.15 Annex E that describe what is kept or transformed.
OPTION_NOTES = {
    "hex": "Basic Profile: identifiers replaced by keyed pseudonyms",
    "uid": "Basic Profile: UIDs replaced (2.25 form; Retain UIDs Option not used)",
    "shift": "Retain Longitudinal Temporal Information with Modified Dates Option",
    "year": "Basic Profile: dates modified (year kept)",
    "drop": "Basic Profile: dates removed",
    "age": "Retain Patient Characteristics Option (age over 89 set to 90)",
    "kept": "Retain Patient Characteristics Option",
}


class MissingKeyError(MdprepError):
    """No usable pseudonymisation key."""

    code = "no_key"


# ----------------------------------------------------------------------------- keys


def generate_key() -> str:
    """A new key: 32 random bytes as 64 hex characters."""
    return secrets.token_hex(MIN_KEY_BYTES)


def write_key_file(path: str | os.PathLike) -> None:
    """Write a new key to ``path`` with permissions 0600; refuses to overwrite a file.

    The write is atomic: a failure (disk full, interrupted) leaves no empty or partial
    key file behind, and a file that appears meanwhile is never replaced.
    """
    p = os.fspath(path)
    try:
        with atomic_write(p, mode=0o600, exclusive=True) as tmp:
            tmp.write_text(generate_key() + "\n", encoding="ascii")
    except FileExistsError:
        raise UsageError(f"{p} already exists; keygen never overwrites a key (losing it makes old pseudonyms unmatchable)") from None


def parse_key(material: bytes | str, *, source: str) -> bytes:
    """Key bytes from hex text (64+ characters) or raw material of at least 32 bytes."""
    raw = material.encode() if isinstance(material, str) else material
    text = raw.strip()
    try:
        decoded = bytes.fromhex(text.decode("ascii")) if len(text) % 2 == 0 else None
    except (UnicodeDecodeError, ValueError):
        decoded = None
    key = decoded if decoded is not None else text
    if len(key) < MIN_KEY_BYTES or len(set(key)) < 8:
        raise MissingKeyError(
            f"the key from {source} is too short or too regular (it needs at least {MIN_KEY_BYTES} bytes of entropy); "
            "create one with `mdprep keygen KEYFILE`"
        )
    return key


def load_key(key_file: str | None = None) -> bytes:
    """The key from ``key_file`` or ``$MDPREP_PSEUDONYM_KEY``; refuses to run without one."""
    if key_file:
        try:
            with open(key_file, "rb") as fh:
                return parse_key(fh.read(), source=key_file)
        except FileNotFoundError:
            raise MissingKeyError(f"key file {key_file!r} does not exist; create one with `mdprep keygen {key_file}`") from None
    env = os.environ.get(KEY_ENV)
    if env:
        return parse_key(env, source=f"${KEY_ENV}")
    raise MissingKeyError(
        f"no pseudonymisation key: pass --key-file FILE or set {KEY_ENV}; create a key with `mdprep keygen KEYFILE`. "
        "mdprep never falls back to an unkeyed or random hash"
    )


def key_fingerprint(key: bytes) -> str:
    """An HMAC of a fixed string: identifies the key without revealing it."""
    return hmac.new(key, b"mdprep key fingerprint v1", hashlib.sha256).hexdigest()[:16]


# ----------------------------------------------------------------------------- pseudonyms


def _digest(key: bytes, namespace: str, value: str) -> bytes:
    return hmac.new(key, namespace.encode() + b"\0" + value.encode("utf-8", "surrogateescape"), hashlib.sha256).digest()


def hex_pseudonym(key: bytes, namespace: str, value: str) -> str:
    """A 20-character hex pseudonym of ``value`` in ``namespace``."""
    return _digest(key, namespace, value).hex()[:HEX_LENGTH]


def uid_pseudonym(key: bytes, namespace: str, value: str) -> str:
    """A valid DICOM UID ``2.25.<decimal>`` of at most 64 characters.

    >>> u = uid_pseudonym(b"k" * 32, "sop_uid", "1.2.3")
    >>> u.startswith("2.25.") and len(u) <= 64 and u[5] != "0"
    True
    """
    number = str(int.from_bytes(_digest(key, namespace, value), "big"))
    return ("2.25." + number.lstrip("0"))[:64]


def _map_unique(values: pd.Series, fn) -> pd.Series:
    codes, uniques = pd.factorize(values)
    mapped = np.array([fn(str(u)) for u in uniques], dtype=object)
    out = np.where(codes >= 0, mapped[np.maximum(codes, 0)] if len(mapped) else None, None)
    return pd.Series(out, index=values.index, dtype="str")


def date_shift_days(key: bytes, patient: str) -> int:
    """The keyed per-patient offset in days, from -365 to 364."""
    n = int.from_bytes(_digest(key, "date-shift", patient)[:8], "big")
    return n % (2 * MAX_SHIFT_DAYS) - MAX_SHIFT_DAYS


@dataclass(frozen=True)
class PseudonymResult:
    manifest: Manifest
    transformed: dict[str, str]  # column -> what was done
    dropped: dict[str, str]
    kept: tuple[str, ...]
    mapping: pd.DataFrame  # column, original, pseudonym
    fingerprint: str


def pseudonymize(
    manifest: Manifest,
    key: bytes,
    *,
    columns: Sequence[str] = (),
    dates: str = "shift",
    cap_age: bool = True,
    keep_mapping: bool = False,
) -> PseudonymResult:
    """Replace identifiers with keyed pseudonyms; transform dates and ages; drop direct identifiers.

    ``columns`` adds identifier columns (hex pseudonyms, or UID pseudonyms for
    columns whose name ends in ``uid``). Returns what was transformed, dropped and
    kept, for the summary; the original-to-pseudonym pairs only with ``keep_mapping``.
    """
    if dates not in DATE_POLICIES:
        raise UsageError(f"--dates {dates!r}: choose one of {', '.join(DATE_POLICIES)}")
    frame = manifest.frame.copy()
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise MissingColumnError(missing, list(frame.columns), hint="--columns names identifier columns")
    transformed: dict[str, str] = {}
    dropped: dict[str, str] = {}
    maps = []
    original_patients = frame["patient_id"].astype("str") if "patient_id" in frame.columns else None
    if original_patients is not None:
        _warn_ids_in_paths(frame, original_patients, columns)
    hex_cols = [c for c in dict.fromkeys([*HEX_COLUMNS, *[c for c in columns if not c.endswith("uid")]]) if c in frame.columns]
    uid_cols = [c for c in dict.fromkeys([*UID_COLUMNS, *[c for c in columns if c.endswith("uid")]]) if c in frame.columns]
    for col, fn, note in [(c, hex_pseudonym, OPTION_NOTES["hex"]) for c in hex_cols] + [(c, uid_pseudonym, OPTION_NOTES["uid"]) for c in uid_cols]:
        before = frame[col].astype("str")
        after = _map_unique(before, lambda v, c=col, f=fn: f(key, c, v))
        if keep_mapping:
            pairs = pd.DataFrame({"column": col, "original": before, "pseudonym": after}).dropna().drop_duplicates()
            maps.append(pairs)
        frame[col] = after
        transformed[col] = note
    date_cols = [c for c in frame.columns if c in DATE_COLUMNS or isinstance(frame[c].dtype, pd.ArrowDtype) and pa.types.is_date(frame[c].dtype.pyarrow_dtype)]
    date_cols = [c for c in date_cols if c not in hex_cols + uid_cols]
    for col in date_cols:
        if dates == "drop":
            frame = frame.drop(columns=[col])
            dropped[col] = OPTION_NOTES["drop"]
            continue
        values = pd.to_datetime(frame[col].astype("str"), errors="coerce")
        if dates == "year":
            new = values.dt.to_period("Y").dt.start_time
            transformed[col] = OPTION_NOTES["year"] + "; stored as 1 January of the year"
        else:
            if original_patients is None:
                raise UsageError("--dates shift needs a patient_id column (one offset per patient)")
            shifts = _map_unique(original_patients, lambda p: str(date_shift_days(key, p))).astype("float").fillna(0)
            new = values + pd.to_timedelta(shifts.to_numpy(), unit="D")
            transformed[col] = OPTION_NOTES["shift"] + f" (one keyed offset per patient, within ±{MAX_SHIFT_DAYS} days)"
        frame[col] = pd.array([d.date() if pd.notna(d) else None for d in new], dtype=pd.ArrowDtype(pa.date32()))
    if cap_age and "age" in frame.columns:
        frame["age"] = frame["age"].where(~(frame["age"] > 89), 90.0).astype("float32")
        transformed["age"] = OPTION_NOTES["age"]
    for col, note in DROPPED_COLUMNS.items():
        if col in frame.columns:
            frame = frame.drop(columns=[col])
            dropped[col] = note
    kept = tuple(c for c in ("sex", "view", "modality", "body_part") if c in frame.columns)
    fingerprint = key_fingerprint(key)
    options = {
        "algorithm": ALGORITHM,
        "key_fingerprint": fingerprint,
        "columns": sorted(transformed),
        "dropped": sorted(dropped),
        "dates": dates,
        "cap_age": cap_age,
    }
    result = manifest.with_frame(frame).with_step(provenance_step("pseudonymize", options, []))
    mapping = pd.concat(maps, ignore_index=True) if maps else pd.DataFrame(columns=["column", "original", "pseudonym"])
    return PseudonymResult(result, transformed, dropped, kept, mapping, fingerprint)


def _warn_ids_in_paths(frame: pd.DataFrame, patients: pd.Series, columns: Sequence[str]) -> None:
    """Warn when image ids or paths spell out the patient id: they are not rewritten."""
    for col in ("image_id", "path"):
        if col not in frame.columns or col in columns:
            continue
        values = frame[col].astype("str").fillna("")
        hits = [bool(p) and p in v for p, v in zip(patients.fillna(""), values)]
        n = int(sum(hits))
        if n:
            warnings.warn(
                f"{n} {col} value(s) contain the row's patient id (for example {short_repr(values[hits].iloc[0])}) and are not "
                f"rewritten: {'pass --columns image_id' if col == 'image_id' else 'rename the folders or keep this manifest private'}",
                MdprepWarning,
                stacklevel=3,
            )


def write_mapping(mapping: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write original-to-pseudonym pairs as CSV with permissions 0600 (for the data custodian only)."""
    with atomic_write(path, mode=0o600) as tmp:
        mapping.to_csv(tmp, index=False)


def manifest_key_fingerprint(manifest: Manifest) -> str | None:
    """The key fingerprint of the last pseudonymisation in the manifest's history, if any."""
    for step in reversed(manifest.history):
        if step.get("command") == "pseudonymize":
            return step.get("options", {}).get("key_fingerprint")
    return None


def check_same_key(manifests: Sequence[Manifest], names: Sequence[str]) -> None:
    """Refuse to compare manifests pseudonymised with different keys (or some not at all)."""
    prints = {n: manifest_key_fingerprint(m) for m, n in zip(manifests, names)}
    if len(set(prints.values())) > 1:
        shown = ", ".join(f"{n}: {p or 'not pseudonymised'}" for n, p in prints.items())
        raise InputError(
            f"the manifests were pseudonymised with different keys ({shown}); their ids can never match, "
            "so an audit would pass for the wrong reason. Pseudonymise them all with one key"
        )
