"""Hash-narrowed answers (mdprep.textkeys) equal pandas' exact ones, collisions included; and the I/O paths built on them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from mdprep import manifest as manifest_mod
from mdprep import textkeys
from mdprep.audit import audit, value_overlap
from mdprep.cli import main
from mdprep.manifest import Manifest, read_manifest, to_arrow, validate_frame, write_manifest, write_table

ALPHABET = ["", "a", "ab", "abcdefg", "abcdefgh", "abcdefghi", "x" * 15, "x" * 16, "x" * 17, "é", "a\x00", "a\x00\x00", "ÿ" * 9, None]


@pytest.fixture
def always_hash(monkeypatch):
    """Hash every column, however small (the library does so from 65,536 rows)."""
    monkeypatch.setattr(textkeys, "MIN_ROWS", 0)


def _columns(values: list) -> list[pd.Series]:
    """The same values as pandas str, Arrow string and Arrow large_string, in chunks and sliced."""
    arr = pa.array(values, type=pa.string())
    third = len(values) // 3
    chunked = pa.chunked_array([arr.slice(0, third), arr.slice(third)])
    return [
        pd.Series(values, dtype="str"),
        pd.Series(chunked, dtype=pd.ArrowDtype(pa.string())),
        pd.Series(chunked.cast(pa.large_string()), dtype=pd.ArrowDtype(pa.large_string())),
    ]


def _exact_spanning(values: pd.Series, parts: np.ndarray) -> set:
    frame = pd.DataFrame({"v": values.astype(object), "p": parts})
    frame = frame[(frame["p"] >= 0) & frame["v"].notna()]
    n = frame.groupby("v")["p"].nunique()
    return set(n[n > 1].index)


@pytest.mark.parametrize("seed", range(40))
def test_answers_equal_pandas(always_hash, seed):
    rng = np.random.default_rng(seed)
    values = [ALPHABET[i] for i in rng.integers(0, len(ALPHABET), int(rng.integers(1, 40)))]
    parts = rng.integers(-1, 3, len(values))
    for s in _columns(values):
        expected = s.duplicated(keep=False).to_numpy() & s.notna().to_numpy()
        assert textkeys.duplicated(s).tolist() == expected.tolist()
        rows = textkeys.spanning(s, parts)
        leaking = _exact_spanning(s, parts)
        shown = s.astype(object).to_numpy()
        must = np.array([v in leaking and p >= 0 for v, p in zip(shown, parts)], dtype=bool)
        assert rows[must].all()  # every row of a leaking value is a candidate
        assert set(shown[rows]) <= leaking | set()  # no hash collision at this size: nothing else
        assert textkeys.codes(s).tolist() == pd.factorize(s, sort=True)[0].tolist()


def test_collisions_cost_candidates_never_answers(always_hash, monkeypatch):
    """With a hash that maps everything of one length together, the answers stay exact."""
    monkeypatch.setattr(textkeys, "_chunk_hash", lambda chunk: np.asarray(pc_lengths(chunk), dtype=np.uint64) << np.uint64(40))
    values = ["aa", "bb", "aa", "cc", None, "dd", "ee", "bb"]
    parts = np.array([0, 0, 1, 1, 0, 2, 2, 2])
    s = pd.Series(values, dtype="str")
    assert textkeys.duplicated(s).tolist() == [True, True, True, False, False, False, False, True]
    rows = textkeys.spanning(s, parts)
    assert rows.sum() > 4  # collisions add candidates...
    result = value_overlap(pd.DataFrame({"image_id": [f"i{k}" for k in range(8)], "patient_id": s, "split": np.array(["a", "b", "c"])[parts]}), "patient_id")
    assert result.findings["key"].tolist() == ["aa", "bb"]  # ...never findings


def pc_lengths(chunk):
    import pyarrow.compute as pc

    return pc.binary_length(chunk).fill_null(0).to_numpy()


def test_audit_report_equal_with_and_without_hashes(monkeypatch):
    rng = np.random.default_rng(0)
    n = 3000
    patients = rng.integers(0, 700, n)
    frame = pd.DataFrame(
        {
            "image_id": [f"{p:08d}_{k:03d}.png" for k, p in enumerate(patients)],
            "patient_id": pd.Series([f"{p:08d}" if p % 50 else None for p in patients], dtype="str"),
            "study_id": [f"1.2.826.0.1.{p}.{k % 3}" for k, p in enumerate(patients)],
            "split": np.where(rng.random(n) < 0.02, "test", np.array(["train", "val", "test"])[patients % 3]),
        }
    )
    checks = ["image_overlap", "patient_overlap", "study_overlap"]
    plain = audit(frame, checks=checks).to_json()
    monkeypatch.setattr(textkeys, "MIN_ROWS", 0)
    assert audit(frame, checks=checks).to_json() == plain
    assert json.loads(plain)["exit_code"] == 1


def test_duplicate_image_ids_reported_the_same(always_hash):
    f = pd.DataFrame({"image_id": ["a", "b", "a", "c", "c", "a"], "path": list("uvwxyz"), "patient_id": list("pppqqq")})
    (v,) = validate_frame(f)
    assert v.check == "duplicate_image_id" and v.count == 5 and v.examples == ("a", "c")
    assert "2 image_id value(s) occur more than once (5 rows)" in v.message


def _parquet_with_null_path(path) -> None:
    frame = pd.DataFrame({"image_id": ["a", "b"], "path": ["a.png", None], "patient_id": ["p", "q"], "split": ["train", "test"]})
    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = json.dumps(Manifest(frame).metadata, sort_keys=True, separators=(",", ":")).encode()
    write_table(table.replace_schema_metadata({b"mdprep": meta}), path)


def test_path_checked_in_the_file(tmp_path):
    good = tmp_path / "good.parquet"
    write_manifest(Manifest(pd.DataFrame({"image_id": ["a", "b"], "path": ["a", "b"], "patient_id": ["p", "q"], "split": ["train", "test"]})), good)
    m = read_manifest(good, columns=["image_id", "path", "patient_id", "split"], check_only=["path"], arrow_text=True)
    assert "path" not in m.frame.columns  # settled by the statistics, never read
    assert isinstance(m.frame["image_id"].dtype, pd.ArrowDtype)
    bad = tmp_path / "bad.parquet"
    _parquet_with_null_path(bad)
    with pytest.raises(manifest_mod.ManifestValidationError, match="1 row\\(s\\) have no path"):
        read_manifest(bad, columns=["image_id", "path", "patient_id", "split"], check_only=["path"])
    result = CliRunner().invoke(main, ["audit-leakage", str(bad), "--checks", "patient_overlap"])
    assert result.exit_code == 2
    assert "Error:" in result.output and "have no path" in result.output


def test_written_in_row_groups_as_in_one_piece(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest_mod, "ROW_GROUP_ROWS", 1024)
    n = 2600
    extra = pd.Series([None] * 1100 + [f"x{i}" for i in range(n - 1100)], dtype=object)  # no contract type; the first piece is all null
    frame = pd.DataFrame(
        {
            "image_id": [f"i{i:05d}" for i in range(n)],
            "path": [f"i{i:05d}.png" for i in range(n)],
            "patient_id": [f"p{i // 3}" for i in range(n)],
            "age": np.arange(n, dtype="float32"),
            "Edema": pd.array(np.arange(n) % 3 - 1, dtype="Int8"),
            "note": extra,
        }
    )
    m = Manifest(frame, labels=("Edema",))
    pieces, whole = tmp_path / "pieces.parquet", tmp_path / "whole.parquet"
    write_manifest(m, pieces)
    write_table(to_arrow(m), whole)
    assert pieces.read_bytes() == whole.read_bytes()
    assert pq.ParquetFile(pieces).num_row_groups == 3


@pytest.mark.parametrize("dtype, bits", [(np.uint32, 32), (np.uint64, 64)])
def test_key_questions_answered_exactly(monkeypatch, dtype, bits):
    """repeated() and across() on raw keys, sorted on two cores (as from a million keys) and with runs of one key."""
    monkeypatch.setattr(textkeys, "_PARALLEL_SORT", 8)
    rng = np.random.default_rng(bits)
    keys = np.repeat(rng.integers(0, 60, 400), rng.integers(1, 4, 400))[:1000].astype(dtype) << dtype(bits - 8)
    null = rng.random(len(keys)) < 0.1
    parts = rng.integers(-1, 3, len(keys)).astype(np.int8)
    counts = pd.Series(keys[~null]).value_counts()
    assert textkeys.repeated(keys, null).tolist() == (~null & np.isin(keys, counts.index[counts > 1])).tolist()
    used = (parts >= 0) & ~null
    spread = pd.DataFrame({"k": keys[used], "p": parts[used]}).groupby("k")["p"].nunique()
    rows = textkeys.across(keys, np.where(null, -1, parts).astype(np.int8), bits)
    assert rows.tolist() == (used & np.isin(keys, spread.index[spread > 1])).tolist()
    assert textkeys._sorted(keys).tolist() == np.sort(keys).tolist()
    assert textkeys.across(keys, np.full(len(keys), 40000), 16 + 15) is None  # too many parts for the key


def test_keys_of_any_chunking_agree():
    values = [f"1.2.826.0.{i % 37}.{i}" for i in range(3000)] + ["", "é" * 9, None]
    arr = pa.array(values, type=pa.string())
    whole = textkeys.chunk_keys(arr, 32)
    pieces = np.concatenate([textkeys.chunk_keys(arr.slice(i, 700), 32) for i in range(0, len(arr), 700)])
    assert whole.tolist() == pieces.tolist() and whole.dtype == np.uint32
    assert textkeys.null_mask(arr).tolist() == [v is None for v in values]
    assert len(set(whole[:3000].tolist())) == 3000  # distinct values, distinct keys (at this size)


def test_few_wanted_keys_found_exactly():
    """Keys that share their top bits with a wanted key pass the table, and the hash table refuses them."""
    keys = np.array([1, 2, 1 << 20, 3, 2, (1 << 32) - 1], dtype=np.uint32)
    assert textkeys._isin(keys, np.array([2, (1 << 32) - 1], dtype=np.uint32)).tolist() == [False, True, False, False, True, True]
    many = np.arange(5000, dtype=np.uint64)  # more wanted keys than the table is for: the hash table alone
    assert textkeys._isin(np.array([3, 6000], dtype=np.uint64), many).tolist() == [True, False]
