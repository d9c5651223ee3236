"""Start-up and whole-process split: what a person waits for between Enter and the prompt.

Every number is a whole process (interpreter start, imports, work, exit), from spawn
to exit, the runs of all variants interleaved (A, B, C, A, B, C, ...) so that a noisy
machine slows each alike; the medians are reported, with each process's peak resident
memory (``os.wait4``).

* Start-up: ``mdprep --help``, ``mdprep --version`` and ``mdprep COMMAND --help`` for
  every command, beside ``python -c pass`` and ``python -c "import pandas"``.
* Split: ``mdprep split nih.parquet --folds 5 -o OUT -q`` on the real NIH ChestX-ray14
  manifest (112,120 rows) beside a process that imports pandas and pyarrow.parquet and
  makes the same library call (``read_manifest`` + ``split_manifest`` +
  ``write_manifest``, the same inputs recorded), and a process that only imports
  pandas and pyarrow.parquet. The two outputs must be byte-identical.

``--baseline SRC`` (a ``src`` folder of another checkout, say the commit before)
times that checkout's commands in the same interleaved runs.

    python bench/bench_startup.py [--repeat 15] [--baseline /tmp/base/src]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import median, real_table

import mdprep

#: The ``src`` folder of the mdprep this benchmark measures (the one it imports).
SRC = str(Path(mdprep.__file__).resolve().parents[1])

#: What the ``mdprep`` console script runs (setuptools' entry-point wrapper, minus its argv[0] clean-up).
CLI = "import sys; from mdprep.cli import main; sys.exit(main(prog_name='mdprep'))"

#: The library call of ``mdprep split MANIFEST --folds 5 -o OUT``; prints its own seconds (after the imports).
LIBRARY_SPLIT = """
import sys, time
import pandas, pyarrow.parquet
start = time.perf_counter()
from mdprep import read_manifest, write_manifest
from mdprep.fileio import file_fingerprint
from mdprep.splitting import split_manifest
source, out = sys.argv[1:3]
m = read_manifest(source)
write_manifest(split_manifest(m, folds=5, seed=0, inputs=[file_fingerprint(source)]).manifest, out)
print(time.perf_counter() - start)
"""


def _env(src: str | None) -> dict:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("MDPREP_DEBUG", None)
    return env


#: Starts one command and reports its seconds and peak memory. A child forked from a large
#: process inherits that process's peak resident memory in its own count (Linux keeps the
#: high-water mark across fork and exec), so the benchmark (which holds a manifest) does not
#: start the commands itself: this small launcher does, and the clock runs inside it.
_LAUNCHER = """
import os, sys, time
start = time.perf_counter()
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - start
with open(sys.argv[1], "w") as fh:
    fh.write(f"{os.waitstatus_to_exitcode(status)} {seconds} {usage.ru_maxrss}")
"""


def whole_process(argv: list[str], src: str | None = SRC) -> tuple[float, float, str]:
    """Seconds from start to exit, peak resident memory in MB, and the stdout of one process."""
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report")
        done = subprocess.run([sys.executable, "-c", _LAUNCHER, report, *argv], env=_env(src), capture_output=True, text=True)
        code, seconds, kb = Path(report).read_text().split()
    if done.returncode != 0 or code != "0":
        raise RuntimeError(f"{argv} exited {code}: {done.stderr[-500:]}")
    return float(seconds), int(kb) / 1024, done.stdout


def interleaved(variants: dict[str, tuple[list[str], str | None]], repeat: int) -> dict[str, dict]:
    """Run every variant ``repeat`` times, round-robin: median and fastest seconds, median peak memory, stdout."""
    runs: dict[str, list[tuple[float, float, str]]] = {name: [] for name in variants}
    for argv, src in variants.values():  # one untimed run each, so that disk caches are warm alike
        whole_process(argv, src)
    for _ in range(repeat):
        for name, (argv, src) in variants.items():
            runs[name].append(whole_process(argv, src))
    return {
        name: {
            "seconds": median([r[0] for r in rs]),
            "min": min(r[0] for r in rs),
            "mb": median([r[1] for r in rs]),
            "out": [r[2] for r in rs],
        }
        for name, rs in runs.items()
    }


def _commands() -> list[list[str]]:
    """``[CMD, --help]`` for every command and subcommand, from the command table (no command imported here)."""
    import click

    from mdprep.cli import main

    argvs = []
    for name in main.list_commands(click.Context(main)):
        argvs.append([name, "--help"])
        cmd = main.get_command(click.Context(main), name)
        if isinstance(cmd, click.Group):
            argvs += [[name, sub, "--help"] for sub in cmd.list_commands(click.Context(cmd))]
    return argvs


def startup(repeat: int, baseline: str | None = None) -> list[dict]:
    py = sys.executable
    variants: dict[str, tuple[list[str], str | None]] = {
        "python -c pass": ([py, "-c", "pass"], None),
        'python -c "import pandas"': ([py, "-c", "import pandas"], None),
        "mdprep --help": ([py, "-c", CLI, "--help"], SRC),
        "mdprep --version": ([py, "-c", CLI, "--version"], SRC),
    }
    if baseline:
        variants["mdprep --help (baseline)"] = ([py, "-c", CLI, "--help"], baseline)
        variants["mdprep --version (baseline)"] = ([py, "-c", CLI, "--version"], baseline)
    for argv in _commands():
        variants["mdprep " + " ".join(argv)] = ([py, "-c", CLI, *argv], SRC)
    results = interleaved(variants, repeat)
    return [{"what": name, **{k: v for k, v in r.items() if k != "out"}} for name, r in results.items()]


def split(repeat: int, baseline: str | None = None) -> dict:
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        from mdprep.ingest import ingest_table
        from mdprep.manifest import write_manifest

        source = os.path.join(tmp, "nih.parquet")
        write_manifest(ingest_table(real_table("nih"), preset="nih").manifest, source)
        cli_out, lib_out, base_out = (os.path.join(tmp, f"{n}.parquet") for n in ("cli", "lib", "base"))
        variants: dict[str, tuple[list[str], str | None]] = {
            "mdprep split --folds 5 -q": ([py, "-c", CLI, "split", source, "--folds", "5", "-o", cli_out, "-q"], SRC),
            "import pandas, pyarrow.parquet + library call": ([py, "-c", LIBRARY_SPLIT, source, lib_out], SRC),
            "import pandas, pyarrow.parquet": ([py, "-c", "import pandas, pyarrow.parquet"], None),
        }
        if baseline:
            variants["mdprep split --folds 5 -q (baseline)"] = ([py, "-c", CLI, "split", source, "--folds", "5", "-o", base_out, "-q"], baseline)
        results = interleaved(variants, repeat)
        identical = filecmp.cmp(cli_out, lib_out, shallow=False) and (not baseline or filecmp.cmp(cli_out, base_out, shallow=False))
    library = results["import pandas, pyarrow.parquet + library call"]
    call = median([float(o) for o in library["out"]])  # the library call alone, inside its process
    imports = results["import pandas, pyarrow.parquet"]["seconds"]
    cli = results["mdprep split --folds 5 -q"]["seconds"]
    return {
        "rows": {name: {k: v for k, v in r.items() if k != "out"} for name, r in results.items()},
        "library_call": call,
        "imports_plus_call": imports + call,
        "ratio": cli / (imports + call),
        "ratio_to_library_process": cli / library["seconds"],
        "baseline_ratio": results["mdprep split --folds 5 -q (baseline)"]["seconds"] / (imports + call) if baseline else None,
        "identical": identical,
    }


def run(repeat: int = 15, baseline: str | None = None) -> dict:
    return {"repeat": repeat, "startup": startup(repeat, baseline), "split": split(max(5, repeat // 3), baseline)}


def markdown(result: dict) -> str:
    lines = [
        f"Start-up, whole process (median of {result['repeat']} interleaved runs; target: `mdprep --help` under 0.15 s, no pandas):",
        "",
        "| process | median, s | fastest, s | peak memory, MB |",
        "|---|---:|---:|---:|",
    ]
    for r in result["startup"]:
        lines.append(f"| `{r['what']}` | {r['seconds']:.3f} | {r['min']:.3f} | {r['mb']:.0f} |")
    s = result["split"]
    lines += [
        "",
        "`split` on NIH ChestX-ray14 (112,120 rows), 5 folds, whole process (target: under 2x the imports plus the library call):",
        "",
        "| process | median, s | fastest, s | peak memory, MB |",
        "|---|---:|---:|---:|",
    ]
    for name, r in s["rows"].items():
        lines.append(f"| {name} | {r['seconds']:.2f} | {r['min']:.2f} | {r['mb']:.0f} |")
    lines += [
        "",
        f"The library call alone (inside its process, after the imports): {s['library_call']:.2f} s; "
        f"imports + call: {s['imports_plus_call']:.2f} s. `mdprep split` is **{s['ratio']:.2f}x** that"
        + (f" (baseline: {s['baseline_ratio']:.2f}x)" if s["baseline_ratio"] is not None else "")
        + f", and {s['ratio_to_library_process']:.2f}x the whole library process. "
        f"Outputs byte-identical: {'yes' if s['identical'] else 'NO'}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--baseline", help="the src folder of another mdprep checkout, timed in the same runs")
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args()
    result = run(args.repeat, args.baseline)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    print(markdown(result))
