"""Run the ``console`` examples of docs/*.md and compare their shown output with the real one.

A ```` ```console ```` block is a terminal session: ``$ `` lines are commands (a trailing
``\\`` continues a command on the next line), and the lines up to the next ``$ `` are what
the terminal shows (stderr and stdout interleaved, as a person sees them); a quote left open
(``python -c '`` and a script) continues the command too. Every block is one
of four kinds, chosen by an HTML comment on the line just above its fence:

* no comment, with output: **run**. The blocks of one page run in order, in one temporary
  folder prepared with generated look-alike data (:func:`prepare_inputs`: ``nih-like.csv``,
  ``chexpert-like.csv``, ``dicom/``, ``images/``, ``leaky/`` with ``leaky.parquet``,
  ``shapes/`` with ``shapes.parquet``), so the numbers shown are honestly synthetic.
* ``<!-- docs: real -->``: the output needs the real public tables; checked by
  ``python3 tasks.py docs --real`` (bench/.data), which fails when the tables are missing.
* ``<!-- docs: unchecked REASON -->``: shown output that neither check runs (a GPU, a cluster);
  listed by the test, never passed silently.
* no comment, no output: **commands only**; nothing is compared.

A block whose first line is output, not a ``$ `` command, is refused: show such output in a
```` ```text ```` block.

``<!-- docs: setup`` ... ``-->`` (or ``<!-- docs: setup real``) holds hidden ``$ `` commands
that make the files a later block needs; they must succeed and their output is not shown.

Comparing: a command shown with no output is a step whose output is left out (it must still
succeed, or declare its exit code). A line ``...`` in the shown output stands for any number
of lines, and ``<?>`` inside a line for any text (a timing, an operating system's wording). The real output is normalised before the comparison:
the temporary folder's path reads ``<tmp>`` and mdprep's version ``<version>``. Rich tables are
drawn ``COLUMNS`` = 120 wide. A command that exits non-zero must say so: with
``# exit N`` at the end of its line, or, for exit 2, with the ``Error:`` line it prints.

Commands run in-process (``mdprep`` through click's ``CliRunner``); a pipe ``|`` passes one
command's stdout to the next, ``> FILE`` at the end of a command writes its stdout to FILE,
``&&`` runs the next only after a success, ``$?`` is the exit code of the command before, and
``VAR=value`` sets an environment variable. Besides ``mdprep`` the shell knows ``echo``,
``printf`` (a format alone), ``export VAR=value``, ``cat [-A]``, ``zcat``, ``head``, ``cmp``,
``grep [-A N]``, ``mv``, ``cp [-r]``, ``rm [-r]``, ``touch``, ``ls``, ``mkdir`` and ``python3``; setup blocks also know
``docs-input NAME ARGS`` (tests/docs_inputs.py: the damaged or hand-made files no command writes,
and what a page needs running beside it: moto's S3 server, a Dask cluster, an installation
without a package for one command). An address a page shows for such a service (a Dask
scheduler's ``tcp://127.0.0.1:8786``) is replaced by the real one in its commands, and back in
their output; services stop when the page's run ends.

    python tests/docs_runner.py            # check every run block
    python tests/docs_runner.py --update   # rewrite the shown output of failing blocks from real runs
    python tests/docs_runner.py --real     # the same for the real-table blocks (needs bench/.data)
"""

from __future__ import annotations

import dataclasses
import difflib
import gzip
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import docs_inputs
from docs_inputs import INPUTS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REAL_DATA = ROOT / "bench" / ".data"
#: The real tables a ``docs: real`` block may name, as they are called in bench/.data.
REAL_TABLES = ("Data_Entry_2017_v2020.csv.gz", "chexpert_train.csv.gz", "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz",
               "kaggle_stage_2_train_images_dicom_headers.csv.gz", "kaggle_stage_2_train_labels.csv.zip",
               "vinbigdata-train.csv.gz", "siim-pneumothorax-train-rle.csv.gz", "google2019_nih-chest-xray-labels.csv.gz")
COLUMNS = 120
ENV = {"COLUMNS": str(COLUMNS), "LINES": "50", "NO_COLOR": "1", "TERM": "dumb", "MDPREP_DEBUG": None}

FENCE = re.compile(r"^(?P<indent> *)```console\s*$")
MARK = re.compile(r"^\s*<!-- docs: (?P<kind>real|unchecked)(?P<reason>[^>]*?)-->\s*$")
SETUP = re.compile(r"^\s*<!-- docs: setup(?P<real> real)?\s*$")
EXIT = re.compile(r"\s+# exit (?P<code>\d+)\s*$")


@dataclasses.dataclass
class Command:
    text: str  # as shown, continuations joined
    expected: list[str]  # shown output lines
    exit_code: int | None  # declared with "# exit N"
    output_at: int = 0  # index in the block's lines where the shown output starts


@dataclasses.dataclass
class Block:
    page: str
    line: int  # 1-based line of the fence
    kind: str  # run, real, unchecked, commands, setup
    commands: list[Command]
    body: tuple[int, int]  # 0-based [start, end) lines of the block's content in the page
    indent: str = ""
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def _open_quote(text: str) -> bool:
    """Whether a command's text has a quote still open (a ``python -c '...`` over several lines)."""
    try:
        shlex.split(text, comments=True)
    except ValueError:
        return True
    return False


def _commands(lines: list[str]) -> list[Command]:
    out: list[Command] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("$ "):
            if line.strip() and not out:
                out.append(Command("", [], None))  # output with no command: parse() calls the block invalid
            if out:
                out[-1].expected.append(line)
            i += 1
            continue
        text = line[2:]
        while (text.endswith("\\") or _open_quote(text)) and i + 1 < len(lines):
            i += 1
            text = (text[:-1] if text.endswith("\\") else text) + "\n" + lines[i]
        m = EXIT.search(text)
        i += 1
        out.append(Command(text, [], int(m["code"]) if m else None, i))
    for c in out:
        while c.expected and not c.expected[-1].strip():
            c.expected.pop()
    return out


def parse(page: Path) -> list[Block]:
    """Every console block of one page, with its kind (see the module docstring)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        setup = SETUP.match(lines[i])
        if setup:
            j = i + 1
            while lines[j].strip() != "-->":
                j += 1
            cmds = _commands([ln.strip() for ln in lines[i + 1 : j] if ln.strip()])
            blocks.append(Block(page.name, i + 1, "setup-real" if setup["real"] else "setup", cmds, (i + 1, j)))
            i = j + 1
            continue
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent = fence["indent"]
        j = i + 1
        while lines[j].strip() != "```":
            j += 1
        body = [ln[len(indent) :] if ln.startswith(indent) else ln.strip() for ln in lines[i + 1 : j]]
        cmds = _commands(body)
        mark = MARK.match(lines[i - 1]) if i else None
        if cmds and not cmds[0].text:
            kind, reason = "invalid", "output before the first '$ ' command: show it in a ```text block"
        elif mark:
            kind, reason = mark["kind"], mark["reason"].strip()
        else:
            kind, reason = ("run" if any(c.expected for c in cmds) else "commands"), ""
        blocks.append(Block(page.name, i + 1, kind, cmds, (i + 1, j), indent, reason))
        i = j + 1
    return blocks


def pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


# ----------------------------------------------------------------------------- inputs


def prepare_inputs(folder: Path) -> dict:
    """Write the generated look-alike inputs every run block may use into ``folder``.

    Returns the manifests to write into each page's copy of the folder (:func:`write_manifests`),
    whose recorded root is that copy.
    """
    from mdprep.synthetic import (SHAPE_LABELS, write_chexpert_table, write_dicom_tree, write_image_tree,
                                  write_leaky_cohort, write_nih_table, write_shapes_dataset)

    write_nih_table(folder / "nih-like.csv", patients=800, seed=0)
    write_chexpert_table(folder / "chexpert-like.csv", patients=60, seed=0)
    write_dicom_tree(folder / "dicom", patients=6, images_per_patient=3, shape=(16, 16), plant_bad_files=True)
    write_image_tree(folder / "images", patients=6, studies=2, shape=(16, 16), plant_bad_files=True)
    leaky, _ = write_leaky_cohort(folder / "leaky")
    shapes = write_shapes_dataset(folder / "shapes", images=120, size=32, dicom_every=10)
    return {"leaky": (leaky, ()), "shapes": (shapes, tuple(SHAPE_LABELS))}


def write_manifests(folder: Path, manifests: dict) -> None:
    from mdprep.manifest import Manifest, write_manifest

    for name, (frame, labels) in manifests.items():
        write_manifest(Manifest(frame, labels=labels, root=str((folder / name).resolve())), folder / f"{name}.parquet")


def link_real_tables(folder: Path) -> None:
    missing = [name for name in REAL_TABLES if not (REAL_DATA / name).is_file()]
    if missing:
        raise SystemExit(f"docs --real needs the real public tables in {REAL_DATA}: missing {', '.join(missing)} "
                         "(run `python3 tasks.py bench` once to fetch them)")
    for name in REAL_TABLES:
        (folder / name).symlink_to(REAL_DATA / name)


# ----------------------------------------------------------------------------- the shell


@dataclasses.dataclass
class Ran:
    output: str  # what the terminal shows
    stdout: bytes
    code: int
    stderr: str = ""


#: Variables set by ``export`` in the page being run.
SESSION_ENV: dict[str, str] = {}


def _builtin(argv: list[str], stdin: bytes | None) -> Ran:
    name, args = argv[0], argv[1:]

    def read(path: str) -> bytes:
        if path == "-":
            return stdin or b""
        data = Path(path).read_bytes()
        return gzip.decompress(data) if name == "zcat" else data

    if name == "export":  # VAR=value, for the rest of the page
        key, _, value = args[0].partition("=")
        SESSION_ENV[key] = value
        out = b""
    elif name == "docs-input":  # only in hidden setup blocks: a damaged file no mdprep command writes
        INPUTS[args[0]](*args[1:])
        out = b""
    elif name == "printf":  # the format alone, no arguments
        out = args[0].encode().decode("unicode_escape").encode()
    elif name == "echo":
        out = (" ".join(args) + "\n").encode()
    elif name in ("cat", "zcat"):
        show_ends = "-A" in args  # cat -A: a line's end shows as $, a carriage return as ^M
        args = [a for a in args if a != "-A"]
        out = b"".join(read(a) for a in args) if args else (gzip.decompress(stdin or b"") if name == "zcat" else stdin or b"")
        if show_ends:
            out = out.replace(b"\r", b"^M").replace(b"\n", b"$\n")
    elif name == "head":
        n = 10
        if args and args[0].startswith("-"):
            flag = args.pop(0)
            n = int(args.pop(0)) if flag == "-n" else int(flag[1:])
        data = read(args[0]) if args else stdin or b""
        out = b"".join(data.splitlines(keepends=True)[:n])
    elif name == "grep":  # grep [-A N] PATTERN [FILE...]
        after = int(args.pop(0)[2:] or args.pop(0)) if args[0].startswith("-A") else 0
        pattern, files = re.compile(args[0].encode()), args[1:]
        data = b"".join(read(f) for f in files) if files else stdin or b""
        lines = data.splitlines(keepends=True)
        hits = [i for i, ln in enumerate(lines) if pattern.search(ln)]
        found = [lines[j] for j in sorted({j for i in hits for j in range(i, min(i + after + 1, len(lines)))})]
        return Ran(b"".join(found).decode(), b"".join(found), 0 if found else 1)
    elif name == "cmp":
        a, b = read(args[0]), read(args[1])
        if a == b:
            return Ran("", b"", 0)
        k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        line = a[:k].count(b"\n") + 1
        text = f"{args[0]} {args[1]} differ: byte {k + 1}, line {line}\n"
        return Ran(text, text.encode(), 1)
    elif name == "mv":
        shutil.move(args[0], args[1])
        out = b""
    elif name == "cp":  # cp [-r] SOURCE TARGET
        recursive = args[0] == "-r"
        source, target = args[-2:]
        if recursive:
            shutil.copytree(source, target, symlinks=True)
        else:
            shutil.copyfile(source, os.path.join(target, os.path.basename(source)) if os.path.isdir(target) else target)
        out = b""
    elif name == "rm":  # rm [-r] PATH...
        for a in args:
            if a == "-r":
                continue
            if os.path.isdir(a) and not os.path.islink(a) and "-r" in args:
                shutil.rmtree(a)
            else:
                os.unlink(a)
        out = b""
    elif name == "touch":
        for a in args:
            Path(a).touch()
        out = b""
    elif name == "ls":
        folders = sorted(args or ["."])
        listing = ["".join(f"{p}\n" for p in sorted(os.listdir(a))) if os.path.isdir(a) else f"{a}\n" for a in folders]
        if len(folders) > 1:
            listing = [f"{a}:\n{text}" for a, text in zip(folders, listing)]
        out = "\n".join(listing).encode()
    elif name == "mkdir":
        for a in args:
            if a != "-p":
                os.makedirs(a, exist_ok=True)
        out = b""
    elif name in ("python", "python3"):
        proc = subprocess.run([sys.executable, *args], input=stdin, capture_output=True,
                              env={**os.environ, **SESSION_ENV, "PYTHONPATH": str(ROOT / "src")})
        return Ran((proc.stderr + proc.stdout).decode(), proc.stdout, proc.returncode, proc.stderr.decode())
    else:
        raise ValueError(f"the docs shell does not know {name!r}; mark the block <!-- docs: unchecked REASON -->")
    return Ran(out.decode(errors="replace"), out, 0)


def _mdprep(args: list[str], stdin: bytes | None, env: dict) -> Ran:
    from click.testing import CliRunner

    from mdprep.cli import main

    result = CliRunner().invoke(main, args, input=stdin, env={**ENV, **SESSION_ENV, **env}, catch_exceptions=False, prog_name="mdprep")
    return Ran(result.output, result.stdout_bytes, result.exit_code, result.stderr)


def run_command(text: str, last_code: int = 0) -> Ran:
    """Run one shown command line; return what the terminal shows, the last stdout and the exit code.

    ``$?`` reads ``last_code``, the exit code of the command before.
    """
    for shown, real in docs_inputs.ALIASES.items():
        text = text.replace(shown, real)
    tokens = shlex.split(EXIT.sub("", text).replace("\\\n", " "), comments=True)
    tokens = [str(last_code) if t == "$?" else t for t in tokens]
    shown, code, stdin, skip = [], 0, None, False
    segment: list[str] = []
    for token in [*tokens, "&&"]:
        if token not in ("|", "&&"):
            segment.append(token)
            continue
        if not skip and segment:
            env = {}
            while segment and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", segment[0]):
                key, _, value = segment.pop(0).partition("=")
                env[key] = value
            target = None
            if len(segment) > 2 and segment[-2] == ">":
                target, segment = segment[-1], segment[:-2]
            try:
                ran = _mdprep(segment[1:], stdin, env) if segment[0] == "mdprep" else _builtin(segment, stdin)
                if target:  # "> FILE": stdout goes to the file, the terminal shows stderr
                    Path(target).write_bytes(ran.stdout)
                    ran = Ran(ran.stderr, b"", ran.code, ran.stderr)
            except OSError as exc:
                message = f"{segment[0]}: {exc.filename}: {exc.strerror}\n"
                ran = Ran(message, b"", 1, message)
            code = ran.code
            if token == "|":
                # The pipe carries stdout; what the terminal shows of this command is its stderr.
                shown.append(ran.stderr)
                stdin = ran.stdout
            else:
                shown.append(ran.output)
                stdin = None
                skip = code != 0
        segment = []
    return Ran("".join(shown), b"", code)


# ----------------------------------------------------------------------------- comparing


def normalise(text: str, folder: Path) -> list[str]:
    import mdprep

    for path in {str(folder.resolve()), str(folder)}:
        text = text.replace(path, "<tmp>")
    for shown, real in docs_inputs.ALIASES.items():
        text = text.replace(real, shown)
    text = text.replace(f"mdprep {mdprep.__version__}", "mdprep <version>")
    lines = [ln.rstrip() for ln in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def matches(expected: list[str], actual: list[str]) -> bool:
    parts = []
    for line in expected:
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(".*".join(re.escape(p) for p in line.rstrip().split("<?>")) + r"\n")
    return re.fullmatch("".join(parts), "".join(f"{ln}\n" for ln in actual)) is not None


def updated(expected: list[str], actual: list[str]) -> list[str]:
    """The new shown output: the real one, kept as short as the old when it ended in ``...``."""
    if expected and expected[-1].strip() == "..." and sum(ln.strip() == "..." for ln in expected) == 1:
        return [*actual[: len(expected) - 1], "..."] if len(actual) >= len(expected) else actual
    return actual


@dataclasses.dataclass
class Failure:
    block: Block
    command: Command
    message: str
    actual: list[str]


def _declared_failure(cmd: Command, ran: Ran, lines: list[str]) -> str | None:
    if cmd.exit_code is not None:
        return None if ran.code == cmd.exit_code else f"exit code {ran.code}, the docs say {cmd.exit_code}"
    if ran.code == 0:
        return None
    if ran.code == 2 and any(ln.startswith("Error: ") for ln in cmd.expected):
        return None
    return f"exit code {ran.code}, not declared (add '# exit {ran.code}' to the command, or show its Error: line)"


def run_page(blocks: list[Block], kinds: set[str], folder: Path) -> list[Failure]:
    """Run the blocks of ``kinds`` of one page in order in ``folder``; return the mismatches."""
    failures: list[Failure] = []
    SESSION_ENV.clear()
    old = os.getcwd()
    os.chdir(folder)
    try:
        for block in blocks:
            if block.kind not in kinds:
                continue
            last = 0
            for k, cmd in enumerate(block.commands):
                followed_by_status = k + 1 < len(block.commands) and block.commands[k + 1].text.strip() == "echo $?"
                try:
                    ran = run_command(cmd.text, last)
                except ValueError as exc:
                    failures.append(Failure(block, cmd, str(exc), []))
                    continue
                actual = normalise(ran.output, folder)
                if block.kind.startswith("setup"):
                    if ran.code != 0:
                        failures.append(Failure(block, cmd, f"setup command exited {ran.code}", actual))
                        break
                    continue
                docs_inputs.after_command()  # what a setup set up for one command only ends here
                last = ran.code
                # "echo $?" on the next line shows (and so declares) this command's exit code.
                problem = None if followed_by_status else _declared_failure(cmd, ran, actual)
                # A command shown with no output is a step whose output the page leaves out.
                if problem is None and cmd.expected and not matches(cmd.expected, actual):
                    problem = "the output differs from the docs"
                if problem:
                    failures.append(Failure(block, cmd, problem, actual))
    finally:
        docs_inputs.after_command()
        docs_inputs.close_page()
        os.chdir(old)
    return failures


def report(failure: Failure) -> str:
    diff = difflib.unified_diff(failure.command.expected, failure.actual, "shown in the docs", "real output", lineterm="")
    return f"{failure.block.where}: $ {failure.command.text}\n{failure.message}\n" + "\n".join(diff)


def rewrite(failures: list[Failure]) -> None:
    """Write the real output of each failing command into its page (``--update``)."""
    by_page: dict[str, list[Failure]] = {}
    for f in failures:
        if f.message != "the output differs from the docs" or f.block.kind.startswith("setup"):
            continue  # a wrong exit code is a docs or code bug for a person to look at
        by_page.setdefault(f.block.page, []).append(f)
    for page, fails in by_page.items():
        path = DOCS / page
        lines = path.read_text(encoding="utf-8").splitlines()
        # Bottom up, so that each rewrite leaves the line numbers of the ones still to do.
        for f in sorted(fails, key=lambda f: (-f.block.body[0], -f.block.commands.index(f.command))):
            start, end = f.block.body
            body = [ln[len(f.block.indent) :] for ln in lines[start:end]]
            k, n = f.command.output_at, 0
            while k + n < len(body) and not body[k + n].startswith("$ "):
                n += 1
            while n and not body[k + n - 1].strip():
                n -= 1
            new = updated(f.command.expected, f.actual)
            lines[start + k : start + k + n] = [(f.block.indent + ln).rstrip() for ln in new]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def prepare(tmp: Path, real: bool) -> tuple[Path, dict]:
    """The folder each page's copy starts from, and the manifests to write into each copy."""
    template = tmp / "inputs"
    template.mkdir()
    if real:
        link_real_tables(template)
        return template, {}
    return template, prepare_inputs(template)


def check_page(page: Path, real: bool, template: Path, manifests: dict, tmp: Path) -> list[Failure]:
    """Run one page's run blocks (or its real-table blocks) in a fresh copy of ``template``."""
    kinds = {"real", "setup-real"} if real else {"run", "setup"}
    blocks = parse(page)
    if not any(b.kind in kinds for b in blocks):
        return []
    folder = tmp / page.stem
    shutil.copytree(template, folder, symlinks=True)
    write_manifests(folder, manifests)
    return run_page(blocks, kinds, folder)


def check(real: bool = False, update: bool = False, only: list[str] | None = None) -> list[Failure]:
    failures: list[Failure] = []
    with tempfile.TemporaryDirectory(prefix="mdprep-docs-") as tmp:
        template, manifests = prepare(Path(tmp), real)
        for page in pages():
            if not only or page.name in only:
                failures += check_page(page, real, template, manifests, Path(tmp))
    if update:
        rewrite(failures)
    return failures


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real", action="store_true", help="check the blocks marked <!-- docs: real --> against bench/.data")
    parser.add_argument("--update", action="store_true", help="rewrite the shown output of failing blocks from real runs")
    parser.add_argument("pages", nargs="*", help="only these pages (file names such as weights.md)")
    args = parser.parse_args(argv)
    failures = check(real=args.real, update=args.update, only=args.pages)
    for f in failures:
        print(report(f), end="\n\n")
    kinds = {"real"} if args.real else {"run"}
    total = sum(b.kind in kinds for p in pages() for b in parse(p) if not args.pages or p.name in args.pages)
    verb = "updated" if args.update else "differ"
    print(f"{total} {'real-table' if args.real else 'run'} blocks checked; {len(failures)} commands {verb}")
    return 1 if failures and not args.update else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    sys.exit(main(sys.argv[1:]))
