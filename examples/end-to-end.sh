#!/usr/bin/env bash
# The whole mdprep pipeline on a generated cohort, one step at a time.
# Run from the repository root after `pip install -e '.[hash,train]'` (or `python3 tasks.py demo`).
set -euo pipefail
out=${1:-/tmp/mdprep-example}
mkdir -p "$out"

# A synthetic cohort: DICOM tree, PNG tree and an NIH-style table (the demo writes them).
mdprep demo --out "$out" --quiet || true
data="$out/data"

# 1. Ingest: one manifest per source; every file is a row, a counted skip or a listed failure.
mdprep ingest dicom "$data/dicom" -o "$out/dicom.parquet" --errors "$out/dicom-errors.csv"
mdprep ingest table "$data/Data_Entry_2017.csv.gz" --preset nih -o "$out/nih.parquet"

# 2. Split by patient, stratified on every label; 5 folds inside train+val.
mdprep split "$out/nih.parquet" --ratios 0.8,0.2 --names trainval,test --folds 5 --seed 0 \
  -o "$out/nih-cv.parquet" --report "$out/split.json"
mdprep split "$out/nih.parquet" --ratios 0.7,0.1,0.2 --seed 0 -o "$out/nih-split.parquet"

# 3. Hash images once, then gate: contract + leakage, with CI-friendly reports.
mdprep hash "$out/dicom.parquet" -o "$out/dicom-hashed.parquet"
mdprep split "$out/dicom-hashed.parquet" --ratios 0.8,0.2 -o "$out/dicom-split.parquet" --quiet
mdprep check "$out/nih-split.parquet" --junit "$out/check.xml" --markdown "$out/check.md"
mdprep audit-leakage "$out/dicom-split.parquet" --json "$out/audit.json"
mdprep report "$out/dicom-split.parquet" --audit "$out/audit.json" -o "$out/report.html"

# 4. Imbalance: weights for the loss, and a resampled training set.
mdprep weights "$out/nih-split.parquet" --scheme balanced --clip 50 -o "$out/weights.json"
mdprep resample "$out/nih-split.parquet" --strategy ml-ros --percent 25 -o "$out/nih-ros.parquet"

# 5. Share safely: keyed pseudonyms (the key stays outside the repository).
[ -f "$out/site.key" ] || mdprep keygen "$out/site.key"
mdprep pseudonymize "$out/dicom-split.parquet" --key-file "$out/site.key" -o "$out/dicom-pseudo.parquet"

echo "Done: open $out/report.html"
