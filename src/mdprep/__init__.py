"""mdprep: prepare medical-imaging datasets for deep learning and prove they are safe to train on.

The library is the product; the ``mdprep`` command is a thin layer over it.

>>> import mdprep
>>> sorted(mdprep.CANONICAL_TYPES)[:3]
['accession', 'age', 'fold']

``import mdprep`` loads no pandas or pyarrow: the names of :mod:`mdprep.manifest`
below are imported on first use (PEP 562), so ``mdprep --help`` starts at once.
"""

__version__ = "0.1.0"

from .errors import MdprepError, MdprepWarning  # noqa: E402

#: Names of :mod:`mdprep.manifest` offered here, imported when first asked for.
_FROM_MANIFEST = ("CANONICAL_TYPES", "Manifest", "read_manifest", "summarize", "validate", "write_manifest")

__all__ = [
    "__version__",
    "CANONICAL_TYPES",
    "Manifest",
    "MdprepError",
    "MdprepWarning",
    "read_manifest",
    "summarize",
    "validate",
    "write_manifest",
]


def __getattr__(name: str):
    if name in _FROM_MANIFEST:
        from . import manifest

        value = getattr(manifest, name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
