"""docs/api.md's worked example runs, and prints what the page shows (numbers included)."""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_the_worked_example_prints_what_the_page_shows(tmp_path, monkeypatch):
    text = DOC.read_text()
    code = re.search(r"## A worked example.*?```python\n(.*?)```", text, re.S)[1]
    shown = re.search(r"```python\n.*?```.*?```text\n(.*?)```", text[text.index("## A worked example") :], re.S)[1]
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out):
        warnings.simplefilter("always")
        exec(compile(code, str(DOC), "exec"), {"__name__": "__api_doc__"})
    # The page shows the warnings where Python prints them (stderr), without their source lines.
    expected = [line for line in shown.splitlines() if not line.startswith("MdprepWarning: ")]
    assert out.getvalue().splitlines() == expected
    assert [f"MdprepWarning: {w.message}" for w in caught] == [line for line in shown.splitlines() if line.startswith("MdprepWarning: ")]
