"""Modules imported on first use, so that a command that never needs one never pays for it.

``import pandas`` alone takes about 0.35 s. A module whose functions use pandas only in
some of its paths binds ``pd = LazyModule("pandas")`` instead: the first ``pd.anything``
imports pandas, and every later use goes to the real module.

>>> json = LazyModule("json")
>>> json.dumps([1])
'[1]'
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for the module ``name``, imported when one of its names is first read."""

    def __init__(self, name: str) -> None:
        self._name = name

    def _load(self) -> ModuleType:
        return importlib.import_module(self._name)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._load(), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"
