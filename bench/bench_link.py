"""Link-aware splits (`split --link`) on the real NIH table with planted cross-patient duplicates.

Every NIH row gets synthetic content hashes: distinct ``file_sha256`` and
``pixel_sha256`` (random 256-bit hex) and a random 64-bit ``phash`` (random hashes lie
about 32 bits apart, far outside the 4-bit threshold). Then 1% of the images are planted
again as copies under new patient ids never seen before (new unique ``image_id``, same
labels and metadata):

* two thirds are exact copies: the same ``file_sha256``, ``pixel_sha256`` and ``phash``;
* one third are re-encoded copies: new sha256s and a ``phash`` 1 to 3 bits away, so only
  the ``phash`` link catches them.

The plain split (``split_manifest(m, ratios=(0.7, 0.1, 0.2), seed=0)``) and the linked
one (the same with ``links=["file_sha256", "pixel_sha256", "phash"]``) are timed
interleaved, whole calls as the CLI makes them, and the ``link_groups`` step alone.
Both outputs then go through ``mdprep.audit.audit`` (patient_overlap, duplicate_file,
duplicate_pixels, near_duplicate): the plain split must show the planted leaks, the
linked one none. Label balance (LD, max prevalence deviation) is compared over 25
seeds, since one seed's LD is noisy, and each seed's linked split is compared row for row
with the control: a plain split of the same rows with each copy under the patient id of
the image it copies (the grouping the links should recover). The same again for 5 folds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from _common import median, real_table, timed

from mdprep.audit import audit
from mdprep.ingest import ingest_table
from mdprep.linking import link_groups, parse_links
from mdprep.manifest import Manifest
from mdprep.splitting import split_manifest

LINKS = ["file_sha256", "pixel_sha256", "phash"]
CHECKS = ["patient_overlap", "duplicate_file", "duplicate_pixels", "near_duplicate"]
RATIOS = (0.7, 0.1, 0.2)


def _hex(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random 256-bit values as 64-character hex strings (distinct in practice)."""
    raw = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    digits = np.frombuffer(b"0123456789abcdef", dtype="S1")[np.stack([raw >> 4, raw & 15], axis=-1)]
    return np.ascontiguousarray(digits.reshape(n, 64)).view("S64").ravel().astype("str")


def planted(share: float = 0.01, near_share: float = 1 / 3, seed: int = 0) -> tuple[Manifest, dict]:
    """The NIH manifest with hash columns and ``share`` of its images planted again under new patients."""
    m = ingest_table(real_table("nih"), preset="nih").manifest
    f = m.frame
    n = len(f)
    rng = np.random.default_rng(seed)
    f = f.assign(
        file_sha256=pd.Series(_hex(rng, n), index=f.index, dtype="str"),
        pixel_sha256=pd.Series(_hex(rng, n), index=f.index, dtype="str"),
        phash=pd.array(rng.integers(0, np.iinfo(np.uint64).max, n, dtype=np.uint64, endpoint=True), dtype="UInt64"),
    )
    k = round(share * n)
    originals = np.sort(rng.choice(n, k, replace=False))
    copies = f.iloc[originals].reset_index(drop=True)
    ids = [f"dup{i:05d}" for i in range(k)]
    copies["image_id"] = pd.Series([f"{i}.png" for i in ids], dtype="str")
    copies["path"] = copies["image_id"]
    copies["patient_id"] = pd.Series([f"D{i:05d}" for i in range(k)], dtype="str")  # never an NIH id (those are digits)
    near = rng.random(k) < near_share
    n_near = int(near.sum())
    copies.loc[near, "file_sha256"] = _hex(rng, n_near)
    copies.loc[near, "pixel_sha256"] = _hex(rng, n_near)
    bits = rng.integers(1, 4, n_near)  # 1 to 3 bits flipped
    flips = np.zeros(n_near, dtype=np.uint64)
    for b in range(1, 4):  # distinct bit positions per row: a random permutation's first b entries
        rows = np.flatnonzero(bits == b)
        pos = np.argsort(rng.random((len(rows), 64)), axis=1)[:, :b].astype(np.uint64)
        flips[rows] = np.bitwise_or.reduce(np.uint64(1) << pos, axis=1)
    ph = copies["phash"].to_numpy(dtype=np.uint64)
    ph[near] ^= flips
    copies["phash"] = pd.array(ph, dtype="UInt64")
    frame = pd.concat([f, copies], ignore_index=True)
    info = {
        "copy_of": originals,  # the NIH row each copy copies
        "rows": len(frame),
        "nih_rows": n,
        "patients": int(frame["patient_id"].nunique()),
        "planted": k,
        "exact": k - n_near,
        "near": n_near,
        "near_bits": np.bincount(bits, minlength=4)[1:].tolist(),  # copies 1, 2 and 3 bits away
    }
    return Manifest(frame, labels=m.labels), info


def true_patients(m: Manifest, info: dict) -> Manifest:
    """The control: the same rows, each copy under the patient id of the image it copies (what linking should recover)."""
    f = m.frame
    pid = f["patient_id"].to_numpy(dtype=object).copy()
    pid[info["nih_rows"]:] = pid[info["copy_of"]]
    return Manifest(f.assign(patient_id=pd.Series(pid, index=f.index, dtype="str")), labels=m.labels)


def _findings(frame: pd.DataFrame, split_col: str) -> dict:
    """Findings per check between the parts of ``split_col`` (``split``, or ``fold`` for folds alone)."""
    report = audit(frame, checks=CHECKS, split_col=split_col, fold_col=None)
    return {r.check: int(len(r.findings)) for r in report.checks}


def _compare(m: Manifest, control: Manifest, kind: dict, repeat: int, seeds: list[int]) -> dict:
    """Interleaved timings, audit findings and label balance of the plain and the linked split.

    For every seed the linked split is also compared with a plain split of ``control``
    (copies under their true patient ids): equal assignments mean linking recovered the
    true grouping and costs no balance beyond what that grouping implies.
    """
    col = "split" if "ratios" in kind else "fold"
    q_of = (lambda r: r.split_quality) if col == "split" else (lambda r: r.fold_quality)
    plain_t, linked_t = [], []
    out = {}
    split_manifest(m, seed=0, **kind)  # warm-up, untimed: the first call imports scikit-learn and SciPy
    split_manifest(m, seed=0, links=LINKS, **kind)
    for _ in range(repeat):
        plain_t.append(timed(lambda: out.__setitem__("plain", split_manifest(m, seed=0, **kind))))
        linked_t.append(timed(lambda: out.__setitem__("linked", split_manifest(m, seed=0, links=LINKS, **kind))))
    res = {
        "plain_s": median(plain_t),
        "linked_s": median(linked_t),
        "plain_times": plain_t,
        "linked_times": linked_t,
        "plain_findings": _findings(out["plain"].manifest.frame, col),
        "linked_findings": _findings(out["linked"].manifest.frame, col),
        "links": out["linked"].links.to_dict(),
    }
    ld = {"plain": [], "linked": []}
    dev = {"plain": [], "linked": []}
    same = 0
    for s in seeds:
        parts = {}
        for name, manifest, extra in (("plain", m, {}), ("linked", m, {"links": LINKS}), ("control", control, {})):
            r = split_manifest(manifest, seed=s, **kind, **extra)
            if name in ld:
                ld[name].append(q_of(r).label_distribution)
                dev[name].append(q_of(r).max_prevalence_deviation)
            parts[name] = r.manifest.frame[col].astype("str").to_numpy()
        same += bool((parts["linked"] == parts["control"]).all())
    res.update(seeds=seeds, ld=ld, max_dev=dev, same_as_control=same)
    return res


def run(repeat: int = 7, seeds: int = 25) -> dict:
    """Every measurement; ``repeat`` timed runs of each call, LD over seeds ``0..seeds-1``."""
    m, info = planted()
    control = true_patients(m, info)
    frame = m.frame
    codes, uniques = pd.factorize(frame["patient_id"].astype("str").to_numpy(), sort=True)
    parsed = parse_links(LINKS, list(frame.columns))
    link_groups(frame, codes, uniques, parsed)  # warm-up: imports SciPy
    step = [timed(lambda: link_groups(frame, codes, uniques, parsed)) for _ in range(repeat)]
    per_link = {}
    for link in parsed:
        per_link[link.text] = median([timed(lambda: link_groups(frame, codes, uniques, [link])) for _ in range(repeat)])
    seed_list = list(range(seeds))
    results = {
        "info": info,
        "link_groups_s": median(step),
        "link_groups_per_link_s": per_link,
        "split": _compare(m, control, {"ratios": RATIOS}, repeat, seed_list),
        "folds": _compare(m, control, {"folds": 5}, repeat, seed_list),
    }
    return results


def _ld_cell(xs: list[float]) -> str:
    return f"{median(xs):.5f} ({min(xs):.5f} to {max(xs):.5f})"


def markdown(r: dict) -> str:
    info = r["info"]
    runs = len(r["split"]["plain_times"])
    seeds = r["split"]["seeds"]
    lines = [
        f"NIH table, {info['nih_rows']:,} rows, plus {info['planted']:,} planted copies (1% of the images) under new patient ids: "
        f"{info['exact']:,} exact (same file_sha256, pixel_sha256 and phash), {info['near']:,} re-encoded (new sha256s, phash "
        f"1/2/3 bits away: {'/'.join(f'{x:,}' for x in info['near_bits'])}); {info['rows']:,} rows, {info['patients']:,} patients. "
        f"Linked: `links={LINKS}`. Times: medians of {runs} interleaved runs of the whole `split_manifest` call "
        f"(plain, linked, plain, ...) after one untimed warm-up of each, seed 0. LD and max prevalence deviation: medians over "
        f"seeds {seeds[0]} to {seeds[-1]} ({len(seeds)} seeds; range in brackets). Audit findings (seed 0): plain / linked. "
        "Control: a plain split of the same rows with each copy under its original's patient id (the grouping linking should recover).",
        "",
        "| split | plain, s | linked, s | linked / plain | groups after linking | merged components (patients, rows) | "
        + " | ".join(CHECKS)
        + " | LD plain | LD linked | LD linked / plain (medians) | LD linked / plain (means) | seeds where LD linked > plain "
        "| max prevalence deviation plain / linked, points | seeds where linked = control |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * len(CHECKS) + "---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, key in (("0.7/0.1/0.2", "split"), ("5-fold", "folds")):
        x = r[key]
        lk = x["links"]
        ldp, ldl = median(x["ld"]["plain"]), median(x["ld"]["linked"])
        cells = [
            name,
            f"{x['plain_s']:.3f}",
            f"{x['linked_s']:.3f}",
            f"{x['linked_s'] / x['plain_s']:.2f}x",
            f"{lk['groups_after']:,} of {lk['groups_before']:,}",
            f"{lk['merged_components']:,} ({lk['merged_groups']:,}, {lk['merged_rows']:,})",
            *[f"{x['plain_findings'][c]:,} / {x['linked_findings'][c]:,}" for c in CHECKS],
            _ld_cell(x["ld"]["plain"]),
            _ld_cell(x["ld"]["linked"]),
            f"{ldl / ldp:.2f}",
            f"{np.mean(x['ld']['linked']) / np.mean(x['ld']['plain']):.2f}",
            f"{sum(a > b for a, b in zip(x['ld']['linked'], x['ld']['plain']))} of {len(x['seeds'])}",
            f"{median(x['max_dev']['plain']) * 100:.3f} / {median(x['max_dev']['linked']) * 100:.3f}",
            f"{x['same_as_control']} of {len(x['seeds'])}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    per = ", ".join(f"{k} {v:.3f} s" for k, v in r["link_groups_per_link_s"].items())
    lines += [
        "",
        f"`link_groups` alone (the linking step inside the linked split): {r['link_groups_s']:.3f} s (median of {runs}); "
        f"one link at a time: {per}.",
        "",
        "Every run, s: " + "; ".join(
            f"{name} plain {', '.join(f'{t:.3f}' for t in r[key]['plain_times'])}, linked {', '.join(f'{t:.3f}' for t in r[key]['linked_times'])}"
            for name, key in (("0.7/0.1/0.2", "split"), ("5-fold", "folds"))
        ) + ".",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for name, key in (("0.7/0.1/0.2", "split"), ("5-fold", "folds")):
        x = r[key]
        ratio = x["linked_s"] / x["plain_s"]
        leaks = sum(x["plain_findings"].values())
        left = sum(x["linked_findings"].values())
        ld = median(x["ld"]["linked"]) / median(x["ld"]["plain"])
        lines += [
            f"| {name}: linked split under 2x the time of the plain split | {ratio:.2f}x ({x['linked_s']:.3f} s against {x['plain_s']:.3f} s) | {'yes' if ratio < 2 else '**no**'} |",
            f"| {name}: zero audit findings after the linked split (the plain one shows the planted leaks) | {left} (plain: {leaks:,}) | {'yes' if left == 0 and leaks else '**no**'} |",
            f"| {name}: LD linked within 10% of plain (medians over {len(x['seeds'])} seeds) | {ld:.2f}x (means: "
            f"{np.mean(x['ld']['linked']) / np.mean(x['ld']['plain']):.2f}x; linked worse in "
            f"{sum(a > b for a, b in zip(x['ld']['linked'], x['ld']['plain']))} of {len(x['seeds'])} seeds; linked split = control split in "
            f"{x['same_as_control']} of {len(x['seeds'])}) | {'yes' if ld <= 1.1 else '**no**'} |",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(run()))
