"""Audit and split at scale: whole processes on synthetic NIH-like manifests of 100k to 10M rows.

    python bench/bench_scale.py [--sizes 100000 1000000 3000000 10000000] [--repeat 3] [--base SRC] [--only audit|split]

1. ``mdprep audit-leakage M.parquet --checks image_overlap,patient_overlap,study_overlap -q``
   against, on the same Parquet file and in the same run (interleaved, medians):
   * DuckDB: ``SELECT col FROM 'M.parquet' GROUP BY col HAVING count(DISTINCT split) > 1``
     for image_id, patient_id and study_id, in one process;
   * pandas: ``read_parquet`` of the four columns, then ``groupby(col)["split"].nunique() > 1``.
   Each is a fresh process: wall time, CPU time (user + system, all threads) and peak resident
   memory (``wait4``'s ``ru_maxrss``). ``--shuffled N`` also runs them on a copy of the N-row
   manifest with its rows in random order (cached), where no value's rows come together.
2. ``mdprep split M.parquet --ratios 0.7,0.1,0.2 -o OUT -q`` at 3M rows: the whole process
   against the library call (``split_manifest`` alone, timed inside a process that has read
   the manifest), and the CLI's peak memory per million rows. The library's process also times
   its ``read_manifest`` and ``write_manifest``: the fixed costs around the call.

``--base SRC`` also runs the commands with another mdprep source tree (an older commit) on
``PYTHONPATH``. Needs the bench extra (DuckDB): pip install -e '.[bench]'. The manifests come
from bench/scale_data.py, cached in bench/.cache.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import median  # noqa: E402
from scale_data import manifest_path  # noqa: E402

SRC = HERE.parent / "src"
CHECKS = "image_overlap,patient_overlap,study_overlap"
COLUMNS = ("image_id", "patient_id", "study_id")
DUCKDB = """
import sys, duckdb
con = duckdb.connect()
for col in {columns!r}:
    con.sql(f"SELECT {{col}} FROM '{{sys.argv[1]}}' GROUP BY {{col}} HAVING count(DISTINCT split) > 1").fetchall()
""".format(columns=COLUMNS)
PANDAS = """
import sys, pandas as pd
f = pd.read_parquet(sys.argv[1], columns=[*{columns!r}, "split"])
for col in {columns!r}:
    n = f.groupby(col)["split"].nunique()
    n[n > 1].index.tolist()
""".format(columns=COLUMNS)
SPLIT_LIBRARY = """
import os, sys, time, warnings
warnings.simplefilter("ignore")
from mdprep.manifest import read_manifest, write_manifest
from mdprep.splitting import split_manifest
start = time.perf_counter()
m = read_manifest(sys.argv[1])
read = time.perf_counter() - start
start, cpu = time.perf_counter(), time.process_time()
result = split_manifest(m, ratios=(0.7, 0.1, 0.2), seed=0)
split, cpu = time.perf_counter() - start, time.process_time() - cpu
start = time.perf_counter()
write_manifest(result.manifest, sys.argv[2])
print(read, split, time.perf_counter() - start, cpu)
"""


SHUFFLE = """
import sys, numpy as np, pyarrow as pa, pyarrow.parquet as pq
from mdprep.manifest import write_table
table = pq.read_table(sys.argv[1])
write_table(table.take(pa.array(np.random.default_rng(0).permutation(table.num_rows))), sys.argv[2])
"""


def shuffled_path(n: int) -> Path:
    """The ``n``-row manifest with its rows in a fixed random order, written once (mdprep's writer, same metadata).

    Written by a child process: this one stays small, and so do the processes it forks
    (a child's peak memory counts what it inherited before ``exec``).
    """
    path = manifest_path(n).with_name(f"scale-{n}-shuffled.parquet")
    if not path.exists():
        subprocess.run([sys.executable, "-c", SHUFFLE, str(manifest_path(n)), str(path)], env=dict(os.environ, PYTHONPATH=str(SRC)), check=True)
    return path


def run_usage(cmd: list[str], src: Path = SRC) -> tuple[float, float, float, str]:
    """Wall seconds, CPU seconds (user + system), peak resident MB and standard output of one fresh process."""
    env = dict(os.environ, PYTHONPATH=str(src))
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{cmd} exited {proc.returncode}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out


def run(cmd: list[str], src: Path = SRC) -> tuple[float, float, str]:
    """Wall seconds, peak resident MB and standard output of one fresh process."""
    seconds, _, mb, out = run_usage(cmd, src)
    return seconds, mb, out


def run_cpu(cmd: list[str], src: Path = SRC) -> tuple[float, float, float, str]:
    """Wall seconds, peak resident MB, CPU seconds (user + system) and standard output of one fresh process."""
    seconds, cpu, mb, out = run_usage(cmd, src)
    return seconds, mb, cpu, out


def audit_curve(sizes: list[int], repeat: int, base: Path | None, shuffled: list[int] = ()) -> list[dict]:
    rows = []
    for n, path in [*((n, str(manifest_path(n))) for n in sizes), *((n, str(shuffled_path(n))) for n in shuffled)]:
        order = " (rows shuffled)" if "shuffled" in path else ""
        contenders = {
            "mdprep audit-leakage": ([sys.executable, "-m", "mdprep", "audit-leakage", path, "--checks", CHECKS, "-q"], SRC),
            "DuckDB": ([sys.executable, "-c", DUCKDB, path], SRC),
            "pandas": ([sys.executable, "-c", PANDAS, path], SRC),
        }
        if base is not None:
            contenders["mdprep audit-leakage (base)"] = (contenders["mdprep audit-leakage"][0], base)
        samples: dict[str, list[tuple[float, float, float]]] = {k: [] for k in contenders}
        for _ in range(repeat):  # interleaved: A, B, C, A, B, C, ...
            for name, (cmd, src) in contenders.items():
                seconds, cpu, mb, _ = run_usage(cmd, src)
                samples[name].append((seconds, cpu, mb))
        for name, got in samples.items():
            rows.append(
                {"rows": n, "order": order, "what": name, "seconds": median([s for s, _, _ in got]), "cpu": median([c for _, c, _ in got]), "peak_mb": max(m for _, _, m in got)}
            )
    return rows


def split_at(n: int, repeat: int, base: Path | None) -> list[dict]:
    path = str(manifest_path(n))
    rows = []
    trees = {"mdprep": SRC, **({"mdprep (base)": base} if base is not None else {})}
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "split.parquet")
        lib_out = str(Path(tmp) / "library.parquet")
        samples: dict[str, dict[str, list]] = {k: {"cli": [], "cli_cpu": [], "lib": [], "lib_cpu": [], "read": [], "write": [], "mb": []} for k in trees}
        for _ in range(repeat):
            for name, src in trees.items():
                seconds, mb, cpu, _ = run_cpu([sys.executable, "-m", "mdprep", "split", path, "--ratios", "0.7,0.1,0.2", "-o", out, "-q"], src)
                samples[name]["cli"].append(seconds)
                samples[name]["cli_cpu"].append(cpu)
                samples[name]["mb"].append(mb)
                _, _, printed = run([sys.executable, "-c", SPLIT_LIBRARY, path, lib_out], src)
                read, split, write, split_cpu = map(float, printed.strip().splitlines()[-1].split())
                for key, value in (("read", read), ("lib", split), ("write", write), ("lib_cpu", split_cpu)):
                    samples[name][key].append(value)
        for name, got in samples.items():
            cli, lib, mb = median(got["cli"]), median(got["lib"]), max(got["mb"])
            rows.append(
                {"rows": n, "what": name, "cli_s": cli, "library_s": lib, "ratio": cli / lib, "read_s": median(got["read"]),
                 "write_s": median(got["write"]), "cpu_ratio": median(got["cli_cpu"]) / median(got["lib_cpu"]),
                 "peak_mb": mb, "mb_per_million": mb / (n / 1e6)}
            )
    return rows


def markdown(audit: list[dict], split: list[dict]) -> str:
    lines = ["| rows | process | seconds (median) | CPU seconds | peak memory | vs DuckDB (time, memory) |", "|---:|---|---:|---:|---:|---|"] if audit else []
    duck = {(r["rows"], r["order"]): r for r in audit if r["what"] == "DuckDB"}
    for r in audit:
        d = duck[r["rows"], r["order"]]
        lines.append(
            f"| {r['rows']:,}{r['order']} | {r['what']} | {r['seconds']:.2f} s | {r['cpu']:.2f} s | {r['peak_mb']:,.0f} MB | "
            f"{r['seconds'] / d['seconds']:.2f}x, {r['peak_mb'] / d['peak_mb']:.2f}x |"
        )
    if split:
        lines += [""] if audit else []
        lines += [
            "| rows | mdprep | `mdprep split` process | `split_manifest` alone | CLI / library | CLI - library "
            "| `read_manifest`, `write_manifest` (library process) | CPU time, CLI / library | peak memory (CLI) | per million rows |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
    for r in split:
        lines.append(
            f"| {r['rows']:,} | {r['what']} | {r['cli_s']:.2f} s | {r['library_s']:.2f} s | {r['ratio']:.2f}x | {r['cli_s'] - r['library_s']:.2f} s "
            f"| {r['read_s']:.2f} s, {r['write_s']:.2f} s | {r['cpu_ratio']:.2f}x | {r['peak_mb']:,.0f} MB | {r['mb_per_million']:,.0f} MB |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 3_000_000, 10_000_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--split-rows", type=int, default=3_000_000)
    parser.add_argument("--base", type=Path, help="another mdprep src/ folder to run beside this one")
    parser.add_argument("--shuffled", type=int, nargs="*", default=[10_000_000], help="sizes also audited with their rows in random order")
    parser.add_argument("--only", choices=("audit", "split"), help="run one of the two parts")
    args = parser.parse_args(argv)
    audit = audit_curve(args.sizes, args.repeat, args.base, args.shuffled) if args.only != "split" else []
    split = split_at(args.split_rows, args.repeat, args.base) if args.only != "audit" else []
    return markdown(audit, split)


if __name__ == "__main__":
    print(main())
