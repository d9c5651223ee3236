"""Link-aware groups (`split --link`): what the audit checks cannot cross parts, by construction."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdprep.audit import ALL_CHECKS, audit
from mdprep.cli import main
from mdprep.errors import ComponentTooLargeError, MdprepWarning, MissingColumnError, UsageError
from mdprep.linking import link_groups, link_items, max_component_rows, parse_links
from mdprep.manifest import Manifest, read_manifest, write_manifest
from mdprep.splitting import split_manifest

ALL_LINKS = ["study_id", "series_uid", "sop_uid", "accession", "file_sha256", "pixel_sha256", "phash", "same_person"]


def planted(patients=300, seed=0, links_per_kind=6) -> Manifest:
    """A cohort whose patients are joined across ids by every kind of link the audit checks.

    Each kind joins ``links_per_kind`` pairs of otherwise unrelated patients: a shared
    study, series, instance, accession, identical file or pixel hashes, a
    perceptual hash 1 to 3 bits away, and the same birth date and sex. (Image ids are
    unique by the manifest contract.)
    """
    rng = np.random.default_rng(seed)
    per = rng.integers(1, 5, patients)
    pid = np.repeat([f"p{i:04d}" for i in range(patients)], per)
    n = len(pid)
    f = pd.DataFrame({"image_id": [f"img{i}" for i in range(n)], "path": [f"img{i}.png" for i in range(n)], "patient_id": pid})
    f["study_id"] = [f"st{i}" for i in range(n)]
    f["series_uid"] = [f"se{i}" for i in range(n)]
    f["sop_uid"] = [f"so{i}" for i in range(n)]
    f["accession"] = [f"acc{i}" for i in range(n)]
    f["file_sha256"] = [f"f{i:063d}" for i in range(n)]
    f["pixel_sha256"] = [f"x{i:063d}" for i in range(n)]
    # Perceptual hashes far apart (random 64-bit values): nothing near by chance at 4 bits.
    f["phash"] = pd.array(rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) * np.uint64(2) + np.uint64(1), dtype="UInt64")
    # Distinct people: each patient its own birth date.
    f["birth_date"] = np.repeat([f"19{40 + i // 365 % 60:02d}-{1 + i // 28 % 12:02d}-{1 + i % 28:02d}" for i in range(patients)], per)
    f["sex"] = np.repeat(rng.choice(["M", "F"], patients), per)
    f["A"] = pd.array(np.where(rng.random(n) < 0.3, 1, 0), dtype="Int8")
    f["B"] = pd.array(np.where(rng.random(n) < 0.1, 1, 0), dtype="Int8")
    first_row = f.groupby("patient_id").head(1).index.to_numpy()
    order = rng.permutation(len(first_row))
    pairs = iter(zip(first_row[order[0::2]], first_row[order[1::2]]))
    for col in ("study_id", "series_uid", "sop_uid", "accession", "file_sha256", "pixel_sha256"):
        for _ in range(links_per_kind):
            a, b = next(pairs)
            f.loc[b, col] = f.loc[a, col]
    for k in range(links_per_kind):
        a, b = next(pairs)
        flip = np.uint64(sum(1 << int(bit) for bit in rng.choice(64, k % 3 + 1, replace=False)))
        f.loc[b, "phash"] = int(np.uint64(f.loc[a, "phash"]) ^ flip)
    for _ in range(links_per_kind):
        a, b = next(pairs)
        pa, pb = f.loc[a, "patient_id"], f.loc[b, "patient_id"]
        f.loc[f["patient_id"] == pb, ["birth_date", "sex"]] = f.loc[f["patient_id"] == pa, ["birth_date", "sex"]].iloc[0].tolist()
    return Manifest(f, labels=("A", "B"))


def _strict_audit(frame: pd.DataFrame):
    """Every check, same_person failing the gate too; between folds when there is no split."""
    by = {} if "split" in frame.columns else {"split_col": "fold", "fold_col": None}
    return audit(frame, fail_on=[c for c in ALL_CHECKS if c != "temporal"], **by)


def test_without_links_the_planted_cohort_leaks():
    m = planted()
    report = _strict_audit(split_manifest(m, ratios=(0.6, 0.2, 0.2), folds=3, seed=0).manifest.frame)
    failed = {r.check for r in report.failed}
    assert report.exit_code == 1
    assert {"study_overlap", "duplicate_file", "near_duplicate", "same_person"} <= failed


@pytest.mark.parametrize("kind", [{"ratios": (0.7, 0.1, 0.2)}, {"folds": 5}, {"ratios": (0.8, 0.2), "folds": 4}])
def test_a_split_made_with_every_link_passes_every_check(kind):
    m = planted()
    r = split_manifest(m, seed=1, links=ALL_LINKS, **kind)
    report = _strict_audit(r.manifest.frame)
    assert report.exit_code == 0, report.verdict
    assert not any(not c.blocking.empty for c in report.checks)
    linked = r.links
    # 8 kinds x 6 pairs: every pair joins two patients, so 48 merged components of 2.
    assert linked.merged == 48 and linked.merged_groups == 96
    assert linked.groups - linked.components == 48
    assert r.report()["links"]["merged_components"] == 48
    assert all(c.groups == 2 for c in linked.largest)


def test_each_link_alone_fixes_its_own_check_only():
    m = planted()
    check_of = {"study_id": "study_overlap", "file_sha256": "duplicate_file", "pixel_sha256": "duplicate_pixels", "phash": "near_duplicate", "accession": "accession_overlap"}
    for link, check in check_of.items():
        report = _strict_audit(split_manifest(m, ratios=(0.5, 0.5), seed=0, links=[link]).manifest.frame)
        failed = {r.check for r in report.failed}
        assert check not in failed, (link, failed)
        assert failed, link  # the other links still leak


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), patients=st.integers(60, 250))
def test_linked_splits_never_leak_for_any_seed(seed, patients):
    m = planted(patients=patients, seed=seed % 1000, links_per_kind=3)
    r = split_manifest(m, ratios=(0.6, 0.2, 0.2), folds=3, seed=seed, links=ALL_LINKS)
    assert _strict_audit(r.manifest.frame).exit_code == 0


def test_phash_threshold_is_honoured():
    m = planted(links_per_kind=6)  # near pairs at 1, 2 and 3 bits
    loose = split_manifest(m, ratios=(0.5, 0.5), seed=0, links=["phash:3"]).links
    tight = split_manifest(m, ratios=(0.5, 0.5), seed=0, links=["phash:0"]).links
    assert loose.merged == 6 and tight.merged == 0
    assert audit(split_manifest(m, ratios=(0.5, 0.5), seed=0, links=["phash:2"]).manifest.frame, checks=["near_duplicate"], threshold=2).exit_code == 0


def test_link_groups_is_transitive_and_names_components_by_their_smallest_group():
    f = pd.DataFrame({"patient_id": ["d", "c", "b", "a", "e"], "study_id": ["s1", "s1", "s2", None, "s3"], "accession": ["x", None, "y", "y", None]})
    codes, names = pd.factorize(f["patient_id"], sort=True)
    linked = link_groups(f, codes, names, parse_links(["study_id", "accession"], list(f.columns)))
    # d-c by study s1; b-a by accession y; e alone.
    assert linked.codes.tolist() == [1, 1, 0, 0, 2]
    assert linked.names.tolist() == ["a (+1 linked)", "c (+1 linked)", "e"]
    assert linked.per_link == {"study_id": {"rows": 4, "joins": 1}, "accession": {"rows": 3, "joins": 1}}
    chain = f.assign(accession=["x", "x", "y", "y", None], study_id=["s1", "s2", "s2", None, None])
    linked = link_groups(chain, codes, names, parse_links(["study_id", "accession"], list(f.columns)))
    assert linked.codes.tolist() == [0, 0, 0, 0, 1]  # d-c (accession) - b (study) - a (accession)


def test_a_placeholder_value_that_glues_patients_is_an_error_naming_it():
    m = planted(patients=400)
    f = m.frame.copy()
    f.loc[f.index[:300], "accession"] = "UNKNOWN"
    with pytest.raises(ComponentTooLargeError) as info:
        split_manifest(m.with_frame(f), ratios=(0.7, 0.1, 0.2), links=["study_id", "accession"])
    msg = info.value.message
    assert "--link accession alone joins" in msg and "'UNKNOWN' is shared by" in msg and "--max-component" in msg
    assert info.value.fields["link"] == "accession"
    # Raised on purpose, it goes through.
    r = split_manifest(m.with_frame(f), ratios=(0.7, 0.1, 0.2), links=["study_id", "accession"], max_component="50%")
    assert r.links.largest[0].rows >= 300 and r.links.largest[0].links["accession"] > 0


def test_options_are_checked_together():
    m = planted()
    with pytest.raises(UsageError) as info:
        split_manifest(m, links=["phash:99", "nope"])
    assert "phash:99" in info.value.message and "'nope'" in info.value.message
    with pytest.raises(MissingColumnError):
        split_manifest(m, links=["nope"])
    with pytest.raises(UsageError, match="birth_date"):
        split_manifest(m.with_frame(m.frame.drop(columns=["birth_date"])), links=["same_person"])
    with pytest.raises(UsageError, match="run `mdprep hash` first"):
        split_manifest(m.with_frame(m.frame.drop(columns=["phash"])), links=["phash"])
    for bad in ("0", "-3", "1.5", "x%", "0%", "101%", "inf", "1e400", "nan", "5 %"):
        with pytest.raises(UsageError, match="--max-component"):
            max_component_rows(bad, 100)
    assert max_component_rows(None, 10) == 100 and max_component_rows("12", 10) == 12
    assert max_component_rows("7%", 100) == 7 and max_component_rows("1.1%", 1000) == 11 and max_component_rows("0.5%", 10) == 1
    assert link_items(["a, b", None, "a,,c"]) == ["a", "b", "c"]
    for bad in ("phash:", "phash: 4", "phash:+3", "phash:\n3", "phash:4.0", "phash:17"):
        with pytest.raises(UsageError, match="Hamming threshold"):
            parse_links([bad], ["phash"])
    with pytest.raises(UsageError, match="empty item"):
        parse_links([" "], ["phash"])
    with pytest.warns(MdprepWarning, match="thresholds above 6"):
        parse_links(["phash:8"], ["phash"])
    with pytest.raises(UsageError, match="its columns are .*'patient_id'"):
        split_manifest(m, links=["same_person"], person_columns=["nope"])
    with pytest.raises(UsageError, match="no effect without --link"):
        split_manifest(m, max_component="5%")


def test_same_seed_same_bytes_and_links_recorded(tmp_path):
    m = planted()
    outs = []
    for i in range(2):
        out = tmp_path / f"s{i}.parquet"
        write_manifest(split_manifest(m, ratios=(0.7, 0.1, 0.2), seed=5, links=["study_id", "phash"]).manifest, out)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    step = read_manifest(tmp_path / "s0.parquet").history[-1]
    assert step["options"]["links"] == ["study_id", "phash"] and step["options"]["max_component"] == 100
    # Without links the options are what they always were.
    plain = split_manifest(m, ratios=(0.7, 0.1, 0.2), seed=5).manifest.history[-1]["options"]
    assert "links" not in plain and "max_component" not in plain


def test_keep_existing_with_links_moves_the_fewest_rows():
    m = planted(links_per_kind=4)
    before = split_manifest(m, ratios=(0.7, 0.1, 0.2), seed=0).manifest
    assert _strict_audit(before.frame).exit_code == 1
    with pytest.warns(MdprepWarning, match="had rows in two or more existing splits"):
        r = split_manifest(before, ratios=(0.7, 0.1, 0.2), seed=0, links=ALL_LINKS, keep_existing=True)
    after = r.manifest.frame
    changed = int((after["split"] != before.frame["split"]).sum())
    assert changed == r.moved["split"] > 0
    # At most the smaller side of each merged component moves: never more than one row per planted link here
    # (each joins the first row of two patients, and a patient's other rows follow their majority).
    assert changed <= sum(c.rows for c in r.links.largest)
    assert _strict_audit(after).exit_code == 0


def test_keep_existing_keeps_folds_and_resolves_torn_ones():
    m = planted(links_per_kind=4)
    before = split_manifest(m, ratios=(0.8, 0.2), folds=4, seed=0).manifest
    with pytest.warns(MdprepWarning):
        r = split_manifest(before, ratios=(0.8, 0.2), folds=4, seed=0, links=ALL_LINKS, keep_existing=True)
    after = r.manifest.frame
    both = before.frame["fold"].notna() & after["fold"].notna()
    moved_folds = int((before.frame["fold"][both] != after["fold"][both]).sum())
    assert moved_folds == r.moved["fold"] > 0
    assert moved_folds < 0.1 * both.sum()  # kept, not reassigned (a fresh assignment moves about 3 in 4)
    assert _strict_audit(after).exit_code == 0
    # Folds outside the new K cannot be kept: a warning, and all are reassigned.
    with pytest.warns(MdprepWarning, match="outside 0..2"):
        split_manifest(before, ratios=(0.8, 0.2), folds=3, seed=0, keep_existing=True)


def test_cli_link_summary_report_and_errors(runner, tmp_path):
    m = planted()
    src = tmp_path / "in.parquet"
    write_manifest(m, src)
    out, rep = tmp_path / "out.parquet", tmp_path / "split.json"
    res = runner.invoke(main, ["split", str(src), "--link", "study_id,file_sha256", "--link", "phash,same_person", "-o", str(out), "--json", str(rep)])
    assert res.exit_code == 0, res.output
    assert "became" in res.stderr and "Largest merged components" in res.stderr
    report = json.loads(rep.read_text())
    assert report["links"]["links"] == ["study_id", "file_sha256", "phash", "same_person"]
    assert report["links"]["merged_components"] == 24
    linked_checks = ["patient_overlap", "study_overlap", "duplicate_file", "near_duplicate", "same_person"]
    assert audit(read_manifest(out).frame, checks=linked_checks, fail_on=linked_checks).exit_code == 0
    bad = runner.invoke(main, ["split", str(src), "--link", "nope", "-o", str(tmp_path / "x.parquet")])
    assert bad.exit_code == 2 and bad.stderr.count("Error:") == 1 and "'nope'" in bad.stderr
    f = m.frame.copy()
    f["accession"] = "UNKNOWN"
    write_manifest(m.with_frame(f), src)
    glued = runner.invoke(main, ["split", str(src), "--link", "accession", "-o", str(tmp_path / "y.parquet")])
    assert glued.exit_code == 2 and "--link accession alone joins" in glued.stderr
    assert not (tmp_path / "y.parquet").exists()


# ----------------------------------------------------------------------------- audit-leakage --suggest


def _suggest_run(runner, tmp_path, manifest, audit_args=(), split_args=("--ratios", "0.7,0.1,0.2")):
    src = tmp_path / "in.parquet"
    write_manifest(manifest, src)
    split = tmp_path / "split.parquet"
    assert runner.invoke(main, ["split", str(src), *split_args, "--seed", "3", "-o", str(split), "-q"]).exit_code == 0
    res = runner.invoke(main, ["audit-leakage", str(split), "--suggest", "--json", str(tmp_path / "a.json"), "--markdown", str(tmp_path / "a.md"), *audit_args])
    return split, res


def test_suggest_gives_a_split_command_that_passes_and_moves_few_rows(runner, tmp_path):
    m = planted(links_per_kind=4)
    split, res = _suggest_run(runner, tmp_path, m, ["--fail-on", ",".join(c for c in ALL_CHECKS if c != "temporal")])
    assert res.exit_code == 1
    report = json.loads((tmp_path / "a.json").read_text())
    s = report["suggestion"]
    assert s["verified"] and s["remaining"] == []
    assert s["links"] == ["study_id", "series_uid", "sop_uid", "accession", "file_sha256", "pixel_sha256", "phash", "same_person"]
    argv = s["argv"]
    assert argv[:5] == ["mdprep", "split", str(split), "--keep-existing", "--link"]
    assert ["--ratios", "0.7,0.1,0.2", "--names", "train,val,test"] == argv[argv.index("--ratios"): argv.index("--ratios") + 4]
    assert argv[argv.index("--seed") + 1] == "3" and argv[-1] == str(tmp_path / "split-relinked.parquet")
    assert "Suggested fix" in res.stderr and s["command"] in res.stderr and "verified" in res.stderr
    assert "Suggested fix" in (tmp_path / "a.md").read_text()
    # Run it: the audit passes, and exactly the promised rows moved.
    done = runner.invoke(main, argv[1:])
    assert done.exit_code == 0, done.output
    out = tmp_path / "split-relinked.parquet"
    assert runner.invoke(main, ["audit-leakage", str(out), "--fail-on", ",".join(c for c in ALL_CHECKS if c != "temporal")]).exit_code == 0
    before, after = read_manifest(split).frame, read_manifest(out).frame
    assert int((before["split"] != after["split"]).sum()) == s["rows_moved"] == s["split_moved"]
    assert 0 < s["rows_moved"] < 0.1 * len(before)


def test_suggest_for_folds_and_for_a_table_without_split_history(runner, tmp_path):
    m = planted(links_per_kind=3)
    split, res = _suggest_run(runner, tmp_path, m, split_args=("--ratios", "0.8,0.2", "--folds", "3"))
    s = json.loads((tmp_path / "a.json").read_text())["suggestion"]
    assert res.exit_code == 1 and s["verified"] and "--folds" in s["argv"]
    assert s["rows_moved"] >= s["split_moved"] and s["fold_moved"] > 0
    # A split that came with the data (no split step in the history): names and shares from the column.
    f = m.frame.assign(split=np.where(np.arange(len(m.frame)) % 4 == 0, "test", "train"))
    raw = tmp_path / "raw.parquet"
    write_manifest(m.with_frame(f), raw)
    res = runner.invoke(main, ["audit-leakage", str(raw), "--suggest", "--json", str(tmp_path / "b.json")])
    s = json.loads((tmp_path / "b.json").read_text())["suggestion"]
    assert res.exit_code == 1 and s["verified"], s
    argv = s["argv"]
    train_share = round(float((f["split"] == "train").mean()), 4)
    assert argv[argv.index("--names") + 1] == "train,test"
    assert argv[argv.index("--ratios") + 1] == f"{train_share:g},{round(1 - train_share, 4):g}"
    assert "patient_overlap" in s["fixes"]
    assert runner.invoke(main, argv[1:]).exit_code == 0


def test_suggest_says_what_a_resplit_cannot_fix(runner, tmp_path):
    m = planted(links_per_kind=2)
    f = m.frame.copy()
    f["study_date"] = pd.to_datetime("2020-01-01") + pd.to_timedelta(np.arange(len(f)) % 300, unit="D")
    split, res = _suggest_run(runner, tmp_path, m.with_frame(f), ["--time-col", "study_date", "--temporal"])
    s = json.loads((tmp_path / "a.json").read_text())["suggestion"]
    assert res.exit_code == 1 and "temporal" in s["unfixable"] and "Not fixed by re-splitting:\n  temporal: a split by time" in res.stderr
    # A clean audit suggests nothing; several manifests cannot be re-split as one.
    clean = runner.invoke(main, ["audit-leakage", str(split), "--suggest", "--checks", "patient_overlap"])
    assert clean.exit_code == 0 and "Suggested" not in clean.stderr
    two = runner.invoke(main, ["audit-leakage", str(split), str(split), "--names", "a,b", "--suggest"])
    assert two.exit_code == 2 and two.stderr.count("Error:") == 1 and "one manifest with a split column" in two.stderr


def test_suggest_reports_a_glued_component_instead_of_a_command(runner, tmp_path):
    m = planted(patients=300)
    f = m.frame.copy()
    f.loc[f.index[:250], "accession"] = "UNKNOWN"
    split, res = _suggest_run(runner, tmp_path, m.with_frame(f), ["--checks", "accession_overlap"])
    s = json.loads((tmp_path / "a.json").read_text())["suggestion"]
    assert res.exit_code == 1 and s["command"] is None and "--link accession alone joins" in s["problem"]
    assert "No split can be suggested" in res.stderr


def test_a_big_patient_is_not_glue_and_a_chain_is_not_blamed_on_one_value():
    m = planted(patients=200, links_per_kind=0)
    f = m.frame.copy()
    # One patient with 150 images, sharing a study with one small patient: 151 rows, over the 100-row floor,
    # but the link adds only the small patient's rows.
    big = pd.DataFrame({"image_id": [f"big{i}" for i in range(150)], "path": [f"big{i}.png" for i in range(150)], "patient_id": "pbig"})
    f = pd.concat([f, big], ignore_index=True)
    small_row = f.index[f["patient_id"] == "p0001"][0]
    f.loc[f.index[-1], "study_id"] = f.loc[small_row, "study_id"]
    r = split_manifest(m.with_frame(f), ratios=(0.5, 0.5), links=["study_id"])
    assert r.links.largest[0].rows > 150 and r.links.largest[0].groups == 2
    # A chain of pairs: p0 - p1 by study_id, p1 - p2 by accession, p2 - p3 by study_id, ...: no value is shared by more than 2.
    chain = m.frame.copy()
    first = chain.groupby("patient_id").head(1).index[:60].to_numpy()
    for i, (a, b) in enumerate(zip(first[:-1], first[1:])):
        col = "study_id" if i % 2 == 0 else "accession"
        chain.loc[b, col] = chain.loc[a, col]
    with pytest.raises(ComponentTooLargeError) as info:
        split_manifest(m.with_frame(chain), ratios=(0.5, 0.5), links=["study_id", "accession"], max_component=20)
    assert "a chain of pairs" in info.value.message and "placeholder" not in info.value.message
    assert info.value.fields["value"] is None


def test_inputs_that_crashed_are_errors_or_work():
    m = planted(patients=60, links_per_kind=2)
    listy = m.frame.assign(findings=[["a", "b"]] * len(m.frame))
    with pytest.raises(UsageError, match="holds lists"):
        split_manifest(m.with_frame(listy), links=["findings"])
    # phash as 16 hex digits (str(imagehash.phash(...))) links and audits like integers.
    hexed = m.frame.assign(phash=[f"{int(v):016x}" for v in m.frame["phash"]])
    r = split_manifest(m.with_frame(hexed), ratios=(0.5, 0.5), seed=0, links=["phash"])
    assert r.links.merged == 2
    assert audit(r.manifest.frame, checks=["near_duplicate"]).exit_code == 0
    with pytest.raises(Exception, match="not 64-bit perceptual hashes"):
        audit(split_manifest(m.with_frame(m.frame.assign(phash="zz")), ratios=(0.5, 0.5)).manifest.frame, checks=["near_duplicate"])


def test_notes_for_links_that_join_nothing_or_blanks_and_readable_names():
    m = planted(patients=60, links_per_kind=0)
    f = m.frame.assign(phash=pd.array([None] * len(m.frame), dtype="UInt64"), accession=[""] * 3 + [f"a{i}" for i in range(len(m.frame) - 3)])
    f["family"] = f["patient_id"].where(np.arange(len(f)) >= 5, None)
    f.loc[f.index[:2], "accession"] = "shared"  # two rows without a family joined by one accession
    r = split_manifest(m.with_frame(f), ratios=(0.5, 0.5), group="family", links=["phash", "accession"], missing_group="own")
    notes = " ".join(r.notes)
    assert "--link phash: no row has a value, so it links nothing: run `mdprep hash` first" in notes
    assert "--link accession: 1 row(s) hold a blank value" in notes
    examples = [e for c in r.links.largest for e in c.examples]
    assert not any("\x00" in e for e in examples) and "row 0 (no family)" in examples, examples


def test_folds_alone_drop_an_earlier_split_and_keep_existing_keeps_unchanged_folds():
    m = planted(patients=120, links_per_kind=3)
    before = split_manifest(m, ratios=(0.8, 0.2), folds=3, seed=0).manifest
    with pytest.warns(MdprepWarning, match="split column belonged to an earlier split and was dropped"):
        r = split_manifest(before, folds=3, seed=0, links=ALL_LINKS)
    assert "split" not in r.manifest.frame.columns
    assert _strict_audit(r.manifest.frame).exit_code == 0
    # --keep-existing with --ratios alone keeps the folds when no row changed split.
    again = split_manifest(before, ratios=(0.8, 0.2), seed=0, keep_existing=True).manifest.frame
    assert again["fold"].equals(before.frame["fold"])
    with pytest.raises(UsageError, match="no row is left to fold"):
        split_manifest(before.with_frame(before.frame.assign(split="test")), ratios=(0.8, 0.2), folds=3, keep_existing=True)
    with pytest.raises(UsageError, match="too few for 3 parts"):
        split_manifest(m.with_frame(m.frame.assign(accession="same")), links=["accession"], max_component="100%")


def test_keep_existing_chooses_split_and_fold_together():
    """2 rows in dev fold 0, 2 in dev fold 1, 3 held out: the whole group goes to the held-out part (4 rows move), not dev fold 0 (5)."""
    f = pd.DataFrame({
        "image_id": [f"i{k}" for k in range(9)], "path": [f"i{k}.png" for k in range(9)],
        "patient_id": ["a"] * 7 + ["b", "c"],
        "split": ["dev", "dev", "dev", "dev", "holdout", "holdout", "holdout", "dev", "dev"],
        "fold": pd.array([0, 0, 1, 1, None, None, None, 0, 1], dtype="Int16"),
    })
    with pytest.warns(MdprepWarning, match="split and fold holding most of its rows, moving 4 row"):
        r = split_manifest(Manifest(f), ratios=(0.5, 0.5), names=("dev", "holdout"), folds=2, keep_existing=True)
    out = r.manifest.frame
    assert (out.loc[:6, "split"] == "holdout").all() and out.loc[:6, "fold"].isna().all()
    assert r.moved == {"split": 4, "fold": 0}
    assert out.loc[7:, "split"].tolist() == ["dev", "dev"] and out.loc[7:, "fold"].tolist() == [0, 1]


def test_suggest_quotes_the_command_so_pasting_it_runs_nothing_else(runner, tmp_path):
    """Split names and paths come from data: the terminal, JSON and Markdown show one safely quoted command."""
    import subprocess

    m = planted(links_per_kind=2)
    f = m.frame.assign(split=np.where(np.arange(len(m.frame)) % 3 == 0, "test`$(touch PWNED)", "train"))
    evil = tmp_path / "back`tick$(echo pwned) x.parquet"
    write_manifest(m.with_frame(f), evil)
    res = runner.invoke(main, ["audit-leakage", str(evil), "--suggest", "--json", str(tmp_path / "a.json"), "--markdown", str(tmp_path / "a.md")])
    s = json.loads((tmp_path / "a.json").read_text())["suggestion"]
    assert res.exit_code == 1 and s["command"] in res.stderr
    md = (tmp_path / "a.md").read_text()
    fence_line = next(l for l in md.splitlines() if l.endswith("console"))
    fence = fence_line[: -len("console")]
    block = md.split(fence_line + "\n", 1)[1].split("\n" + fence, 1)[0]
    assert block == s["command"]
    # The shell reads the pasted command back as the very same arguments.
    echoed = subprocess.run(["bash", "-c", "printf '%s\\0' " + s["command"]], capture_output=True, cwd=tmp_path, check=True).stdout
    assert echoed.split(b"\0")[:-1] == [a.encode() for a in s["argv"]]
    assert not (tmp_path / "PWNED").exists()


def test_suggest_reaudits_with_the_same_allow_list_and_carries_recorded_links(runner, tmp_path):
    m = planted(links_per_kind=3)
    split, res = _suggest_run(runner, tmp_path, m, ["--checks", "study_overlap,duplicate_file"])
    first = json.loads((tmp_path / "a.json").read_text())
    keys = [f["key"] for c in first["checks"] if c["check"] == "study_overlap" and c["findings"] for f in c["findings"]]
    allow = tmp_path / "allow.json"
    allow.write_text(json.dumps([{"check": "study_overlap", "key": k} for k in keys]))
    res = runner.invoke(main, ["audit-leakage", str(split), "--checks", "study_overlap,duplicate_file", "--allow", str(allow), "--suggest", "--json", str(tmp_path / "b.json")])
    s = json.loads((tmp_path / "b.json").read_text())["suggestion"]
    assert res.exit_code == 1 and s["verified"] and s["links"] == ["file_sha256"], s
    # A split made with links keeps them in the suggestion.
    linked = tmp_path / "linked.parquet"
    assert runner.invoke(main, ["split", str(split), "--link", "accession", "--ratios", "0.7,0.1,0.2", "-o", str(linked), "-q"]).exit_code == 0
    res = runner.invoke(main, ["audit-leakage", str(linked), "--suggest", "--json", str(tmp_path / "c.json")])
    s = json.loads((tmp_path / "c.json").read_text())["suggestion"]
    assert s["links"][0] == "accession" and s["verified"]


def test_suggest_refuses_what_it_cannot_write_as_a_command(runner, tmp_path):
    m = planted(links_per_kind=2)
    for values, text in (((" train", "test "), "cannot be given to --names"), (("train,a", "test"), "cannot be given to --names")):
        f = m.frame.assign(split=np.where(np.arange(len(m.frame)) % 3 == 0, values[1], values[0]))
        p = tmp_path / "odd.parquet"
        write_manifest(m.with_frame(f), p)
        runner.invoke(main, ["audit-leakage", str(p), "--suggest", "--json", str(tmp_path / "o.json")])
        s = json.loads((tmp_path / "o.json").read_text())["suggestion"]
        assert s["command"] is None and text in s["problem"], s
    one_based = m.frame.assign(split="train", fold=pd.array(np.arange(len(m.frame)) % 4 + 1, dtype="Int16"))
    write_manifest(m.with_frame(one_based), tmp_path / "f.parquet")
    runner.invoke(main, ["audit-leakage", str(tmp_path / "f.parquet"), "--suggest", "--json", str(tmp_path / "f.json")])
    assert "number the folds from 0" in json.loads((tmp_path / "f.json").read_text())["suggestion"]["problem"]


def test_suggest_counts_unassigned_rows_apart_and_quotes_a_leading_dash(runner, tmp_path, monkeypatch):
    m = planted(links_per_kind=2)
    f = m.frame.assign(split=pd.Series(np.where(np.arange(len(m.frame)) % 3 == 0, "test", "train"), dtype="str"))
    f.loc[f.index[:10], "split"] = None
    monkeypatch.chdir(tmp_path)
    write_manifest(m.with_frame(f), tmp_path / "-dash.parquet")
    res = runner.invoke(main, ["audit-leakage", "--suggest", "--json", "s.json", "--", "-dash.parquet"])
    s = json.loads((tmp_path / "s.json").read_text())["suggestion"]
    assert res.exit_code == 1 and s["argv"][2] == "./-dash.parquet" and s["argv"][-1] == "./-dash-relinked.parquet"
    assert s["rows_assigned"] == 10 and "assigns the 10 row(s) that have no split" in res.stderr
    done = runner.invoke(main, s["argv"][1:])
    assert done.exit_code == 0, done.output
    before, after = f, read_manifest(tmp_path / "-dash-relinked.parquet").frame
    had = before["split"].notna()
    assert int((before["split"][had] != after["split"][had]).sum()) == s["rows_moved"]


def test_suggest_adds_the_link_of_a_check_its_moves_made_fail(runner, tmp_path):
    """A and B share a study in train; A's file is copied into test under C. Linking the file alone moves A into
    test and tears the study; the suggestion links the study too, and C moves instead."""
    m = planted(patients=40, links_per_kind=0)
    f = m.frame.assign(split=np.where(m.frame["patient_id"].str[1:].astype(int) % 4 == 0, "test", "train"))
    extra = pd.DataFrame({
        "image_id": ["a1", "b1", "b2", "c1"], "path": ["a1.png", "b1.png", "b2.png", "c1.png"], "patient_id": ["A", "B", "B", "C"],
        "study_id": ["S1", "S1", "S2", "S3"], "file_sha256": ["F1", "F2", "F3", "F1"], "split": ["train", "train", "train", "test"],
    })
    f = pd.concat([f, extra], ignore_index=True)
    p = tmp_path / "m.parquet"
    write_manifest(m.with_frame(f), p)
    res = runner.invoke(main, ["audit-leakage", str(p), "--checks", "patient_overlap,study_overlap,duplicate_file", "--suggest", "--json", str(tmp_path / "s.json")])
    s = json.loads((tmp_path / "s.json").read_text())["suggestion"]
    assert res.exit_code == 1 and s["fixes"] == ["duplicate_file"]
    assert s["links"] == ["file_sha256", "study_id"] and s["verified"] and s["rows_moved"] == 1, s
