"""mdprep: prepare medical-imaging datasets for deep learning and prove they are safe to train on.

The library is the product; the ``mdprep`` command is a thin layer over it.

>>> import mdprep
>>> sorted(mdprep.CANONICAL_TYPES)[:3]
['accession', 'age', 'fold']
"""

__version__ = "0.1.0"

from .errors import MdprepError, MdprepWarning  # noqa: E402
from .manifest import (  # noqa: E402
    CANONICAL_TYPES,
    Manifest,
    read_manifest,
    summarize,
    validate,
    write_manifest,
)

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
