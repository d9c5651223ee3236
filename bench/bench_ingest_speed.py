"""`mdprep ingest table`, whole process, beside a process that only runs ``pandas.read_csv``.

On the real tables (NIH ChestX-ray14 112,120 rows, CheXpert 223,414 rows, PadChest
160,861 rows, VinDr-CXR 67,914 rows), interleaved (A, B, C, ... then again), medians:

* **whole process**: ``python -m mdprep ingest table TABLE ... -o OUT.parquet -q``,
  start-up included (``chexpert-blank`` is CheXpert with ``--blank negative``, the
  command of docs/datasets.md);
* **read_csv**: ``python -c "import pandas; pandas.read_csv(TABLE)"``, the target;
* **floors**: processes that do no work at all, only read the table with pyarrow and write
  it with the manifest's Parquet settings, once after ``import pandas`` and once without:
  no implementation that imports pandas (or, for the second, any at all) can beat them;
* **library**: the call the command makes, timed inside a process that has imported
  mdprep and run the call once (page cache and lazy imports warm): the Arrow path
  (``ingest_table_arrow`` + ``write_table``) where it takes the table, else
  ``ingest_table`` + ``write_manifest``; the same process times the imports that call
  needs (for the Arrow path pyarrow and mdprep's table modules, no pandas).

Python caches the bytecode of mdprep's modules (in a folder of the run's own, as an
installed package has its ``.pyc`` files), whatever ``PYTHONDONTWRITEBYTECODE`` says;
``--no-pyc`` compiles them in every process instead.

With ``--against DIR`` (a ``src`` folder of another mdprep checkout, say the commit
before a change) the whole process and the library call of that tree run in the same
interleaved rounds, and the manifests both trees write are compared byte for byte.
Peak memory is the largest resident set of the whole-process runs (``wait4``).

    python bench/bench_ingest_speed.py [--repeat 7] [--tables nih chexpert] [--against /tmp/base/src] [--no-pyc]
"""

from __future__ import annotations

import argparse
import filecmp
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import median, real_table

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"

#: Run -> (table, the `mdprep ingest table` options of docs/datasets.md; PadChest and VinDr: generic).
COMMANDS = {
    "nih": ("nih", ["--preset", "nih"]),
    "chexpert": ("chexpert", ["--preset", "chexpert"]),
    "chexpert-blank": ("chexpert", ["--preset", "chexpert", "--blank", "negative"]),
    "padchest": ("padchest", ["--image-col", "ImageID", "--patient-col", "PatientID", "--study-col", "StudyID", "--labels-col", "Labels"]),
    "vindr": ("vindr", ["--patient-col", "image_id", "--labels-col", "class_name", "--aggregate", "majority", "--reader-col", "rad_id"]),
}

#: Times the library call in a fresh process: imports, one warm-up call, then one timed call of each step.
#: The call is the command's: the Arrow path where it takes the table (a tree that has it), else the pandas path.
_LIBRARY = """
import json, sys, time, warnings
warnings.simplefilter("ignore")
kwargs = json.loads(sys.argv[3])
t = time.perf_counter()
try:
    from mdprep.ingest.table_arrow import ingest_table_arrow
    from mdprep.manifest import write_table
except ImportError:
    ingest_table_arrow = None
imports = time.perf_counter() - t
if ingest_table_arrow is None or ingest_table_arrow(sys.argv[1], **kwargs) is None:
    t = time.perf_counter()
    from mdprep.ingest import ingest_table
    from mdprep.manifest import write_manifest
    imports += time.perf_counter() - t
    ingest, write, path = (lambda: ingest_table(sys.argv[1], **kwargs)), (lambda r: write_manifest(r.manifest, sys.argv[2])), "pandas"
else:
    ingest, write, path = (lambda: ingest_table_arrow(sys.argv[1], **kwargs)), (lambda r: write_table(r.table, sys.argv[2])), "arrow"
write(ingest())
t0, c0 = time.perf_counter(), time.process_time()
result = ingest()
t1, c1 = time.perf_counter(), time.process_time()
write(result)
t2, c2 = time.perf_counter(), time.process_time()
print(json.dumps({"imports": imports, "ingest": t1 - t0, "total": t2 - t0, "ingest_cpu": c1 - c0, "total_cpu": c2 - c0, "path": path}))
"""


#: No work at all: read the table with pyarrow (line breaks in quoted values allowed, as mdprep reads it)
#: and write it as the manifest is written (zstd, same row groups).
_FLOOR = """
{imports}
import pyarrow.csv as c, pyarrow.parquet as pq
table = c.read_csv({path!r}, parse_options=c.ParseOptions(newlines_in_values=True))
pq.write_table(table, {out!r}, compression="zstd", row_group_size=1 << 20)
"""


def _kwargs(options: list[str]) -> dict:
    """The library's keyword arguments for the command-line options of :data:`COMMANDS`."""
    out: dict = {}
    it = iter(options)
    for flag in it:
        out[flag.lstrip("-").replace("-", "_")] = next(it)
    return out


def _run_process(argv: list[str], src: Path, pyc: str | None) -> tuple[float, int, str, float]:
    """Wall seconds, peak resident memory (bytes), stdout and CPU seconds (user + system) of one process run with ``src`` first on the path.

    ``pyc``: the folder where Python caches compiled modules (None: as the environment says).
    """
    env = dict(os.environ, PYTHONPATH=str(src), PYTHONWARNINGS="ignore")
    if pyc is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = pyc
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}")
    return seconds, usage.ru_maxrss * 1024, out, usage.ru_utime + usage.ru_stime


def run(repeat: int = 7, tables=("nih", "chexpert", "chexpert-blank", "padchest", "vindr"), against: str | None = None, pyc_cache: bool = True) -> list[dict]:
    out = Path(tempfile.mkdtemp())
    pyc = str(out / "pycache") if pyc_cache else None
    py = sys.executable
    trees = {"new": SRC} | ({"base": Path(against).resolve()} if against else {})
    rows = []
    for name in tables:
        table, options = COMMANDS[name]
        path = str(real_table(table))
        kwargs = json.dumps(_kwargs(options))
        process = functools.partial(_run_process, pyc=pyc)
        runs: dict[str, list] = {}

        def add(key, value):
            runs.setdefault(key, []).append(value)

        floor = str(out / f"{name}-floor.parquet")
        steps = [
            ("read_csv", lambda: process([py, "-c", f"import pandas; pandas.read_csv({path!r})"], SRC)),
            ("floor pandas", lambda: process([py, "-c", _FLOOR.format(imports="import pandas", path=path, out=floor)], SRC)),
            ("floor arrow", lambda: process([py, "-c", _FLOOR.format(imports="", path=path, out=floor)], SRC)),
        ]
        for tree, src in trees.items():
            target = str(out / f"{name}-{tree}.parquet")
            steps += [
                (f"whole {tree}", lambda src=src, target=target: process([py, "-m", "mdprep", "ingest", "table", path, *options, "-o", target, "-q"], src)),
                (f"library {tree}", lambda src=src, target=target: process([py, "-c", _LIBRARY, path, target + ".lib", kwargs], src)),
            ]
        for _ in range(repeat + 1):  # the first round warms the page cache and is dropped
            for key, step in steps:
                add(key, step())
        row = {"table": name, "options": " ".join(options), "repeat": repeat}
        for key, values in runs.items():
            values = values[1:]
            if key.startswith("library"):
                timings = [json.loads(v[2]) for v in values]
                row[f"{key} imports_s"] = median([t["imports"] for t in timings])
                row[f"{key} ingest_s"] = median([t["ingest"] for t in timings])
                row[f"{key} s"] = median([t["total"] for t in timings])
                row[f"{key} ingest_cpu_s"] = median([t["ingest_cpu"] for t in timings])
                row[f"{key} cpu_s"] = median([t["total_cpu"] for t in timings])
                row[f"{key} path"] = "/".join(sorted({t["path"] for t in timings}))
            else:
                row[f"{key} s"] = median([v[0] for v in values])
                row[f"{key} cpu_s"] = median([v[3] for v in values])
                row[f"{key} peak_mb"] = max(v[1] for v in values) / 1e6
        # The same ratio round by round (each round's processes ran back to back), which load that changes between rounds disturbs less.
        per_round = [w[0] / r[0] for w, r in zip(runs["whole new"][1:], runs["read_csv"][1:])]
        row["whole new / read_csv rounds"] = median(per_round)
        if against:
            row["identical"] = filecmp.cmp(out / f"{name}-new.parquet", out / f"{name}-base.parquet", shallow=False)
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    """Two tables: the whole process beside read_csv and the no-work floors, then the library call (and the tree before).

    Wall-clock medians first; CPU seconds (user + system, all threads) in brackets, which
    a machine shared with other work disturbs less.
    """
    against = any("whole base s" in r for r in rows)

    def both(r, key, cpu_key=None):
        return f"{r[key + ' s']:.3f} ({r[(cpu_key or key) + ' cpu_s']:.3f})"

    lines = [
        "| table | `pandas.read_csv` process, s | `mdprep ingest table -q`, s | mdprep / read_csv (CPU) | median of per-round ratios | floor with pandas, s | floor without pandas, s | peak MB (mdprep / read_csv) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['table']} | {both(r, 'read_csv')} | {both(r, 'whole new')} | {r['whole new s'] / r['read_csv s']:.2f}x "
            f"({r['whole new cpu_s'] / r['read_csv cpu_s']:.2f}x) | {r['whole new / read_csv rounds']:.2f}x | {both(r, 'floor pandas')} | {both(r, 'floor arrow')} | "
            f"{r['whole new peak_mb']:.0f} / {r['read_csv peak_mb']:.0f} |"
        )
    head = "| table | path | imports, s | ingest, s | + write, s |"
    sep = "|---|---|---:|---:|---:|"
    if against:
        head += " before: `mdprep ingest table -q`, s | before: ingest, s | before: + write, s | whole process before / now (CPU) | same bytes |"
        sep += "---:|---:|---:|---:|---|"
    lines += ["", head, sep]
    for r in rows:
        line = (
            f"| {r['table']} | {r['library new path']} | {r['library new imports_s']:.3f} | {r['library new ingest_s']:.3f} ({r['library new ingest_cpu_s']:.3f}) | "
            f"{both(r, 'library new')} |"
        )
        if against:
            line += (
                f" {both(r, 'whole base')} | {r['library base ingest_s']:.3f} ({r['library base ingest_cpu_s']:.3f}) | {both(r, 'library base')} | "
                f"{r['whole base s'] / r['whole new s']:.2f}x ({r['whole base cpu_s'] / r['whole new cpu_s']:.2f}x) | {'yes' if r['identical'] else 'NO'} |"
            )
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--tables", nargs="+", default=list(COMMANDS), choices=list(COMMANDS))
    parser.add_argument("--against", metavar="SRC", help="src folder of another mdprep checkout to time in the same rounds")
    parser.add_argument("--no-pyc", action="store_true", help="compile mdprep's modules in every process (no bytecode cache)")
    args = parser.parse_args()
    print(markdown(run(args.repeat, args.tables, args.against, pyc_cache=not args.no_pyc)))


if __name__ == "__main__":
    main()
