"""mdprep: prepare medical-imaging datasets for deep learning and prove they are safe to train on.

The library is the product; the ``mdprep`` command is a thin layer over it. The main
entry points, one per step (docs/api.md has a worked example):

=====================  ===================================================  ===========================
name                   what it does                                         command
=====================  ===================================================  ===========================
``ingest_table``       a dataset's label table -> manifest                  ``mdprep ingest table``
``ingest_dicom``       a DICOM tree -> manifest                             ``mdprep ingest dicom``
``ingest_images``      an image or NIfTI folder -> manifest                 ``mdprep ingest images``
``split_manifest``     patient-grouped, label-stratified split and folds    ``mdprep split``
``audit``              leakage checks between splits and folds              ``mdprep audit-leakage``
``compute_weights``    per-label weights from the training rows             ``mdprep weights``
``resample_manifest``  traceable over- and under-sampling                   ``mdprep resample``
``pseudonymize``       keyed pseudonyms, moved dates                        ``mdprep pseudonymize``
=====================  ===================================================  ===========================

>>> import mdprep
>>> sorted(mdprep.CANONICAL_TYPES)[:3]
['accession', 'age', 'fold']
>>> mdprep.split_manifest is mdprep.splitting.split_manifest
True

``import mdprep`` loads no pandas or pyarrow: the names below are imported on first use
(PEP 562), so ``mdprep --help`` starts at once. ``mdprep.audit`` is the module
:mod:`mdprep.audit`; calling it runs :func:`mdprep.audit.audit` (``mdprep.audit(frame)``),
so the name works both ways, as ``from mdprep import audit`` does.
"""

__version__ = "0.1.0"

from .errors import MdprepError, MdprepWarning  # noqa: E402

#: Names offered here, imported from their module when first asked for.
_LAZY = {
    **{name: "manifest" for name in ("CANONICAL_TYPES", "Manifest", "read_manifest", "summarize", "validate", "write_manifest")},
    "ingest_table": "ingest",
    "ingest_dicom": "ingest",
    "ingest_images": "ingest",
    "split_manifest": "splitting",
    "compute_weights": "weights",
    "resample_manifest": "resample",
    "pseudonymize": "pseudonyms",
}

__all__ = [
    "__version__",
    "CANONICAL_TYPES",
    "Manifest",
    "MdprepError",
    "MdprepWarning",
    "audit",
    "compute_weights",
    "ingest_dicom",
    "ingest_images",
    "ingest_table",
    "pseudonymize",
    "read_manifest",
    "resample_manifest",
    "split_manifest",
    "summarize",
    "validate",
    "write_manifest",
]


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    if name == "audit":
        # The module (callable: it runs its audit function); importing it binds the name here.
        return importlib.import_module(f"{__name__}.audit")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
