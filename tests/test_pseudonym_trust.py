"""Pseudonymisation gaps a hostile tester found: ages recoverable from birth dates, run-together passphrases."""

from __future__ import annotations

import datetime as dt
import hashlib

import pandas as pd
import pyarrow as pa
import pytest

from mdprep.errors import MdprepError
from mdprep.manifest import Manifest
from mdprep.pseudonyms import generate_key, key_weakness, parse_key, pseudonymize

KEY = bytes.fromhex(hashlib.sha256(b"mdprep trust test").hexdigest())


def _elderly_cohort() -> Manifest:
    born = [dt.date(1920, 5, 1), dt.date(1950, 5, 1), dt.date(1925, 1, 2)]
    frame = pd.DataFrame(
        {
            "image_id": ["a", "b", "c", "d"],
            "path": ["a.png", "b.png", "c.png", "d.png"],
            "patient_id": ["P1", "P2", "P3", "P3"],
            "age": pd.array([94.0, 69.0, None, None], dtype="float32"),  # P3's age is only in the dates
            "birth_date": pd.array([born[0], born[1], born[2], born[2]], dtype=pd.ArrowDtype(pa.date32())),
            "study_date": pd.array([dt.date(2014, 6, 1), dt.date(2019, 6, 1), dt.date(2015, 3, 1), dt.date(2016, 3, 1)], dtype=pd.ArrowDtype(pa.date32())),
        }
    )
    return Manifest(frame)


def test_birth_dates_of_patients_over_89_are_removed_so_the_age_cannot_be_recomputed():
    result = pseudonymize(_elderly_cohort(), KEY)
    out = result.manifest.frame
    assert out["age"].tolist()[:2] == [90.0, 69.0]
    # P1 (94 by its age) and P3 (90 by its dates, on every row) keep no birth date; P2 keeps a moved one.
    assert out["birth_date"].isna().tolist() == [True, False, True, True]
    assert out["birth_date"].iloc[1] != dt.date(1950, 5, 1)
    reason = result.treatments.set_index("column").loc["birth_date", "reason"]
    assert "removed for 2 patient(s) over 89" in reason


def test_without_age_capping_birth_dates_stay():
    out = pseudonymize(_elderly_cohort(), KEY, cap_age=False).manifest.frame
    assert out["birth_date"].notna().all()


@pytest.mark.parametrize("phrase", ["MyHospitalSecretKeyForPseudonyms2024", "CorrectHorseBatteryStaple1234567890!", "st-marys-hospital-radiology-key-2024"])
def test_passphrases_are_refused_run_together_or_apart(phrase):
    assert "passphrase" in key_weakness(phrase.encode(), text=True)
    with pytest.raises(MdprepError, match="passphrase"):
        parse_key(phrase, source="the test")


def test_keygen_and_random_text_keys_are_accepted():
    import base64
    import secrets

    for _ in range(300):
        assert parse_key(generate_key(), source="keygen")
        for text in (base64.b64encode(secrets.token_bytes(32)), secrets.token_urlsafe(32).encode()):
            assert key_weakness(text, text=True) is None
