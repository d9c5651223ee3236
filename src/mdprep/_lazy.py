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


#: Variables OpenBLAS reads, once, when numpy loads it: the size of its thread pool.
_BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")


def import_numpy_single_threaded() -> None:
    """Import numpy with OpenBLAS's thread pool at one thread, for a command that does no linear algebra.

    When numpy loads OpenBLAS, OpenBLAS starts a thread per core, and those threads spin
    while they wait: in a process that then does no linear algebra they only burn CPU
    (about 0.1 s of it during ``mdprep ingest table``'s imports on two cores, more when
    other processes compete for them). The variable is set for the import only, so
    processes started later see the environment as it was; it is left alone where numpy
    is already imported or where the user set any of OpenBLAS's thread variables.

    >>> import_numpy_single_threaded()
    >>> import sys; "numpy" in sys.modules
    True
    """
    import os
    import sys

    if "numpy" in sys.modules or any(v in os.environ for v in _BLAS_THREAD_VARIABLES):
        return
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        import numpy  # noqa: F401
    finally:
        del os.environ["OPENBLAS_NUM_THREADS"]
