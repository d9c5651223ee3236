"""The docs cannot drift: every shown command output in docs/*.md is checked (tests/docs_runner.py)."""

from __future__ import annotations

import re

import pytest

import docs_runner as runner

PAGES = runner.pages()
#: Blocks whose output no check runs: none is left (S3, Dask and training run too); this may only go down.
MAX_UNCHECKED = 0


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("docs")
    template, manifests = runner.prepare(tmp, real=False)
    return tmp, template, manifests


def test_every_console_block_is_run_or_marked():
    """No silent skip: each block with output is run here, or marked real (tasks.py docs --real) or unchecked with a reason."""
    blocks = [b for p in PAGES for b in runner.parse(p)]
    invalid = [f"{b.where}: {b.reason}" for b in blocks if b.kind == "invalid"]
    assert not invalid, "\n".join(invalid)
    unchecked = [b for b in blocks if b.kind == "unchecked"]
    assert all(b.reason for b in unchecked), [b.where for b in unchecked if not b.reason]
    real = [b for b in blocks if b.kind == "real"]
    counts = {k: sum(b.kind == k for b in blocks) for k in ("run", "real", "unchecked", "commands")}
    print(f"\ndocs console blocks: {counts}")
    print("checked only by `python3 tasks.py docs --real`:", ", ".join(b.where for b in real))
    print("unchecked:", "; ".join(f"{b.where} ({b.reason})" for b in unchecked))
    assert counts["run"] >= 40
    assert len(unchecked) <= MAX_UNCHECKED, "a new block with output must run here or be marked real; see tests/docs_runner.py"


REAL_BLOCKS = [b for p in PAGES for b in runner.parse(p) if b.kind == "real"]


@pytest.mark.parametrize("block", REAL_BLOCKS, ids=lambda b: b.where)
def test_real_table_block_is_left_to_docs_real(block):
    """Each block on the real tables is listed here by name; `python3 tasks.py docs --real` runs it.

    Its page tells the reader which step checks it and when it last did, and the block reads
    only the real tables that step links (or files the page made from them).
    """
    text = (runner.DOCS / block.page).read_text()
    assert "tasks.py docs --real" in text and re.search(r"last checked \d{4}-\d\d-\d\d", text), block.page
    assert any(c.expected for c in block.commands), "a real block shows output to check"
    named = {t for c in block.commands for t in re.findall(r"[\w.-]+\.(?:csv\.gz|csv\.zip)", c.text)}
    assert named <= set(runner.REAL_TABLES), named - set(runner.REAL_TABLES)


@pytest.mark.parametrize("page", [p for p in PAGES if any(b.kind == "run" for b in runner.parse(p))], ids=lambda p: p.name)
def test_docs_output_is_the_real_output(page, inputs):
    tmp, template, manifests = inputs
    failures = runner.check_page(page, False, template, manifests, tmp)
    assert not failures, "\n\n".join(map(runner.report, failures)) + "\n\n(python3 tasks.py docs --update rewrites the shown output)"


def test_runner_compares_elisions_wildcards_and_exit_codes(tmp_path):
    assert runner.matches(["a", "...", "d"], ["a", "b", "c", "d"])
    assert runner.matches(["took <?> s"], ["took 0.25 s"])
    assert not runner.matches(["78,439 rows"], ["78,431 rows"])
    blocks = runner._commands(["$ mdprep split missing.parquet -o out.parquet  # exit 2", "Error: <?>"])
    assert blocks[0].exit_code == 2 and blocks[0].expected == ["Error: <?>"]
    page = tmp_path / "x.md"
    page.write_text("<!-- docs: unchecked needs a GPU -->\n```console\n$ nvidia-smi\nGPU 0\n```\n```console\n$ echo hi\n```\n")
    kinds = [(b.kind, b.reason) for b in runner.parse(page)]
    assert kinds == [("unchecked", "needs a GPU"), ("commands", "")]
    old = runner.os.getcwd()
    runner.os.chdir(tmp_path)
    try:
        ran = runner.run_command("echo hello | grep hel && mdprep validate nothing.parquet")
    finally:
        runner.os.chdir(old)
    assert ran.code == 2 and ran.output.startswith("hello\nError: ")


def _demo_steps() -> list[str]:
    """The titles of the demo's steps, in the order of src/mdprep/cli/demo.py (an f-string's value reads K)."""
    import ast

    source = (runner.ROOT / "src" / "mdprep" / "cli" / "demo.py").read_text()

    def text(node) -> str:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.JoinedStr):
            return "".join(text(v) if isinstance(v, ast.Constant) else "K" for v in node.values)
        if isinstance(node, ast.BinOp):
            return text(node.left) + text(node.right)
        raise AssertionError(ast.dump(node))

    module = ast.parse(source)
    steps = {}
    for fn in ("demo", "_audit_steps", "_train_steps"):
        tree = next(n for n in ast.walk(module) if isinstance(n, ast.FunctionDef) and n.name == fn)
        calls = sorted((c.lineno, c) for c in ast.walk(tree) if isinstance(c, ast.Call) and getattr(c.func, "id", None) in ("_run", "_python"))
        steps[fn] = [text(c.args[1] if c.func.id == "_run" else c.args[0]) for _, c in calls]
    # demo() calls _audit_steps and _train_steps just before its last step (validate).
    return steps["demo"][:-1] + steps["_audit_steps"] + steps["_train_steps"] + steps["demo"][-1:]


def test_getting_started_lists_the_demo_steps_as_they_are():
    text = (runner.DOCS / "getting-started.md").read_text()
    listed = re.findall(r"^\d+\. (.+)$", text.split("<!-- demo steps -->")[1], re.M)
    assert listed == _demo_steps()
