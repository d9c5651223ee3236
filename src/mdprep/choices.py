"""The values the library's options may take, with what each means: plain data, no imports.

Each table is defined here once and imported by the module that acts on it
(:mod:`mdprep.audit`, :mod:`mdprep.labels`, ...), so that the command line can show
them in its help without loading pandas or pyarrow: ``mdprep split --help`` starts
at once. Nothing here decides anything.

>>> MISSING_GROUP_POLICIES
('error', 'own')
>>> ALL_CHECKS[:2]
('image_overlap', 'patient_overlap')
"""

from __future__ import annotations

# ----------------------------------------------------------------------------- audit (mdprep.audit)

#: Checks that compare one column's values across splits: check name -> column.
VALUE_CHECKS: dict[str, str] = {
    "image_overlap": "image_id",
    "patient_overlap": "patient_id",
    "study_overlap": "study_id",
    "series_overlap": "series_uid",
    "instance_overlap": "sop_uid",
    "accession_overlap": "accession",
    "duplicate_file": "file_sha256",
    "duplicate_pixels": "pixel_sha256",
}
ALL_CHECKS = tuple(VALUE_CHECKS) + ("near_duplicate", "same_person", "temporal")
PERSON_COLUMNS = ("birth_date", "sex")

# ----------------------------------------------------------------------------- splits, weights, resampling

MISSING_GROUP_POLICIES = ("error", "own")
SCHEMES = ("balanced", "frequency", "pos-weight", "effective")
STRATEGIES = ("over", "under", "ml-ros", "ml-rus", "patient-cap", "smote", "adasyn")

# ----------------------------------------------------------------------------- ingest (mdprep.dicom_header, mdprep.ingest, mdprep.labels)

#: What to do with a file that has no PatientID: value -> meaning.
MISSING_PATIENT_POLICIES = {
    "error": "the file fails with MissingPatientID",
    "study": "patient_id becomes the PatientID other files of its study carry, else 'study:' + StudyInstanceUID "
    "(the file fails if that is missing too)",
    "series": "patient_id becomes the PatientID other files of its series carry, else 'series:' + SeriesInstanceUID "
    "(the file fails if that is missing too)",
}
#: What one row of ``ingest dicom`` stands for: value -> meaning.
INGEST_LEVELS = {
    "instance": "file (projection radiography)",
    "series": "SeriesInstanceUID (CT, MR volumes), with volume checks",
}
PRESETS = {
    "nih": "NIH ChestX-ray14 Data_Entry_2017*.csv: pipe-separated 'Finding Labels' into 15 label columns",
    "chexpert": "CheXpert train.csv/valid.csv: patient and study from 'Path', 14 labels with 1/0/-1/blank",
    "mimic": "MIMIC-CXR *-chexpert.csv joined with *-metadata.csv (--metadata) on subject and study",
    "generic": "any CSV/TSV/Parquet: choose the columns with --image-col, --patient-col, --labels-col or --label-cols",
}
#: What ``--uncertain`` may say, and what it does to -1.
UNCERTAIN_POLICIES = {
    "keep": "keep -1 (uncertain) as it is",
    "ones": "count uncertain as positive (U-Ones)",
    "zeros": "count uncertain as negative (U-Zeros)",
    "ignore": "treat uncertain as not mentioned (null)",
}
#: What ``--blank`` may say about label cells that were blank (null) in the source.
BLANK_POLICIES = {
    "missing": "a blank cell is not mentioned (null)",
    "negative": "a blank cell is negative (0)",
}
#: How ``--aggregate`` combines several rows (readers, boxes, masks) of one image.
AGGREGATE_POLICIES = {
    "error": "refuse a table that repeats an image id",
    "any": "1 if any row says 1, else -1 if any says -1, else 0 if any says 0",
    "majority": "the value of more than half of the non-null votes; a tie is -1 (uncertain)",
    "all": "1 if every non-null vote is 1, else 0 if any vote is 0, else -1",
}
#: The syntax of ``--label-when``, for messages and docs.
LABEL_WHEN_SYNTAX = "NAME:COLUMN==VALUE or NAME:COLUMN!=VALUE"

# ----------------------------------------------------------------------------- scale-out (mdprep.executor)

#: The environment variable the command line reads when ``--scheduler`` is not given.
SCHEDULER_ENV = "MDPREP_SCHEDULER"
#: The scheduler "address" that starts a ``LocalCluster`` of worker processes for the run.
LOCAL_SCHEDULER = "local"
#: Seconds to wait for a Dask scheduler to answer before giving up.
CONNECT_TIMEOUT = 10.0

# ----------------------------------------------------------------------------- pseudonyms (mdprep.pseudonyms)

KEY_ENV = "MDPREP_PSEUDONYM_KEY"
DATE_POLICIES = ("shift", "year", "drop")
PATH_POLICIES = ("auto", "pseudonymize", "keep", "drop")

# ----------------------------------------------------------------------------- export (mdprep.export: FORMATS, UNCERTAIN, MISSING)

#: The export formats: a MONAI datalist (one JSON file), a Hugging Face ``datasets``
#: folder (one Parquet per part and a dataset card), CSV files (one per part and a card).
EXPORT_FORMATS: dict[str, str] = {
    "monai": "a MONAI datalist JSON file (monai.data.load_decathlon_datalist)",
    "hf": "a Hugging Face datasets folder: one Parquet per split and a README.md dataset card",
    "csv": "one CSV per split and a README.md card, for any other tool",
}
#: How ``label``/``label_mask`` of a MONAI item hold an uncertain (-1) label.
EXPORT_UNCERTAIN: dict[str, str] = {
    "ignore": "label 0, label_mask 0: the loss skips it (U-Ignore, as mdprep train)",
    "zeros": "label 0, label_mask 1: uncertain counts as negative (U-Zeros)",
    "ones": "label 1, label_mask 1: uncertain counts as positive (U-Ones)",
}
#: How ``label``/``label_mask`` of a MONAI item hold a missing (null, not mentioned) label.
EXPORT_MISSING: dict[str, str] = {
    "ignore": "label 0, label_mask 0: the loss skips it (as mdprep train)",
    "negative": "label 0, label_mask 1: not mentioned counts as negative",
}
