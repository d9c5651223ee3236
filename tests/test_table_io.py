"""Reading table files: quoted newlines, wide headers, compression and zip, identifiers, bounded errors."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
import zipfile

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdprep.cli import main
from mdprep.errors import EmptyInputError, EncodingError, InputError, ManifestValidationError, MissingColumnError, UsageError
from mdprep.ingest import ingest_table, table_io
from mdprep.ingest.table_io import is_identifier_column, read_table
from mdprep.manifest import read_manifest

ROWS = b"image_id,value\n001,1\n002,2\n"


def _text(table: pa.Table) -> dict[str, list]:
    """Column name -> values as text (None for null)."""
    return {name: [None if v is None else str(v) for v in table.column(name).to_pylist()] for name in table.column_names}


def _pandas_text(path) -> dict[str, list]:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    return {name: [v if v != "" else None for v in frame[name]] for name in frame.columns}


# ----------------------------------------------------------------------------- quoted newlines


def test_quoted_newlines_across_block_boundaries(tmp_path, monkeypatch):
    # With 256-byte blocks, block ends fall inside quoted values; one value outgrows a block.
    monkeypatch.setattr(table_io, "BLOCK_SIZE", 256)
    lines = ["image_id,report,labels"]
    for i in range(60):
        report = "line one\nline two, with comma" + "\n" * (i % 3) + ' and a "quote"' * (i % 2)
        lines.append(f'{i:04d},"{report.replace(chr(34), chr(34) * 2)}",{"A" if i % 2 else ""}')
    lines.append('0060,"' + "long\n" * 200 + '",B')
    path = tmp_path / "reports.csv"
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size > 10 * 256
    table = read_table(path)
    assert table.num_rows == 61
    assert _text(table) == _pandas_text(path)


cell = st.one_of(
    st.just(""),
    st.text(alphabet=st.sampled_from(list('ab1 0,"\n\r;\té中😀')), min_size=1, max_size=12),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(2, 4), quote_all=st.booleans(), data=st.data())
def test_text_content_equals_pandas(tmp_path_factory, width, quote_all, data):
    rows = data.draw(st.lists(st.lists(cell, min_size=width, max_size=width), min_size=1, max_size=12))
    path = tmp_path_factory.mktemp("diff") / "t.csv"
    names = [f"c{i}" for i in range(width)]
    # Minimal quoting quotes a value with "\r" or "\n" only when both end lines (a bare "\r" ends a line).
    style = dict(quoting=csv.QUOTE_ALL, lineterminator="\n") if quote_all else dict(quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, **style)
        writer.writerow(names)
        writer.writerows(rows)
    assert _text(read_table(path, string_columns=names)) == _pandas_text(path)


def test_unclosed_quote_in_last_column_is_an_error(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('image_id,note\n001,"never closed\n002,b\n003,c\n')
    with pytest.raises(InputError, match="ends inside a quoted value.*column 'note'"):
        read_table(path)


# ----------------------------------------------------------------------------- header


def test_header_of_twenty_thousand_columns(tmp_path):
    names = [f"feature_{i:05d}" for i in range(20_003)]
    path = tmp_path / "wide.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(",".join(names) + "\n" + ",".join(str(i % 7) for i in range(20_003)) + "\n")
    table = read_table(path)
    assert table.column_names == names and table.num_rows == 1
    assert table.column("feature_20002").to_pylist() == [20_002 % 7]


def test_quoted_header_cells_with_delimiter_and_newline(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b'"id, as given","note\nsecond line",Size[w,h],\r\n001,x,3,4,\r\n002,y,5,6,\r\n')
    table = read_table(path)
    assert table.column_names == ["id, as given", "note\nsecond line", "Size[w]", "Size[h]"]
    assert table.column("Size[h]").to_pylist() == [4, 6]


def test_rows_shorter_than_a_header_with_trailing_delimiters(tmp_path):
    # NIH's BBox_List_2017.csv: "Image Index,Finding Label,Bbox [x,y,w,h],,," over 6-field rows.
    path = tmp_path / "BBox_List_2017.csv"
    path.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n00013118_008.png,Atelectasis,225.08,547.02,86.78,79.19\n")
    table = read_table(path)
    assert table.column_names == ["Image Index", "Finding Label", "Bbox [x]", "Bbox [y]", "Bbox [w]", "Bbox [h]"]
    path.write_text("a,b,c\n1,2,3\n4,5\n")
    with pytest.raises(InputError, match="a row has 2 field.* header has 3 column.*'4,5'"):
        read_table(path)


def test_blank_lines_before_the_header_and_header_without_newline(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("\n\nimage_id,v\n001,1\n")
    assert read_table(path).to_pylist() == [{"image_id": "001", "v": 1}]
    path.write_text("image_id,v")
    with pytest.raises(EmptyInputError, match="header but no data rows"):
        read_table(path)


# ----------------------------------------------------------------------------- compression and archives


def _zstd(data: bytes) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as out:
        out.write(data)
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress, _zstd], ids=["gzip", "bz2", "xz", "zstd"])
@pytest.mark.parametrize("name", ["labels.csv", "labels.dat"])
def test_compression_is_detected_from_the_bytes(tmp_path, compress, name):
    path = tmp_path / name  # the name says nothing of the compression
    path.write_bytes(compress(ROWS))
    assert read_table(path).to_pylist() == [{"image_id": "001", "value": 1}, {"image_id": "002", "value": 2}]


def test_gzip_named_csv_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(gzip.compress(b"image_id,note\n001,ok\n002,caf\xe9\n"))
    with pytest.raises(EncodingError) as err:
        read_table(path)
    assert err.value.line == 3


def test_first_bad_line_across_decode_chunks(tmp_path, monkeypatch):
    # Small chunks split multi-byte characters; the line and column still come out right.
    monkeypatch.setattr(table_io, "_DECODE_CHUNK", 5)
    path = tmp_path / "t.csv"
    path.write_bytes("image_id,note\n001,café\n002,naïve ünïcode\n".encode() + b"003,ok\xff\n")
    with pytest.raises(EncodingError) as err:
        read_table(path)
    assert err.value.line == 4 and "byte 0xff at column 7" in str(err.value)


def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_zip_with_one_table(tmp_path):
    path = _zip(tmp_path / "stage_2_train_labels.csv.zip", {"data/": b"", "data/labels.csv": ROWS, "__MACOSX/data/._labels.csv": b"\x00\x05"})
    assert read_table(path).column("image_id").to_pylist() == ["001", "002"]
    inner = _zip(tmp_path / "gz.zip", {"labels.tsv.gz": gzip.compress(ROWS.replace(b",", b"\t"))})
    assert read_table(inner).num_rows == 2


def test_zip_with_several_tables_needs_a_member(tmp_path):
    path = _zip(tmp_path / "tables.zip", {"train.csv": ROWS, "test.tsv": ROWS.replace(b",", b"\t")})
    with pytest.raises(UsageError) as err:
        read_table(path)
    assert "holds 2 files ('train.csv', 'test.tsv')" in str(err.value) and f"{path}::train.csv" in str(err.value)
    assert err.value.fields["members"] == ["train.csv", "test.tsv"]
    assert read_table(f"{path}::test.tsv").column("image_id").to_pylist() == ["001", "002"]
    assert read_table(path, member="train.csv").num_rows == 2
    with pytest.raises(InputError, match="has no member 'valid.csv'; it holds 'train.csv', 'test.tsv'"):
        read_table(f"{path}::valid.csv")
    plain = tmp_path / "plain.csv"
    plain.write_bytes(ROWS)
    with pytest.raises(UsageError, match="is not a zip archive"):
        read_table(f"{plain}::x.csv")


def test_parquet_recognised_by_its_magic(tmp_path):
    path = tmp_path / "labels.bin"
    pq.write_table(pa.table({"image_id": ["001"], "v": [1]}), path)
    assert read_table(path).to_pylist() == [{"image_id": "001", "v": 1}]
    fake = tmp_path / "labels.parquet"
    fake.write_bytes(ROWS)
    with pytest.raises(InputError, match="not a Parquet file"):
        read_table(fake)


# ----------------------------------------------------------------------------- identifiers


def test_identifier_rule():
    ids = ["Image Index", "ImageID", "PatientID", "patientId", "StudyInstanceUID", "SOPInstanceUID", "series_uids",
           "dicom_id", "subject_id", "Accession Number", "rad_id", "class_id", "path", "filename", "file", "imagepath"]
    assert [n for n in ids if not is_identifier_column(n)] == []
    assert [n for n in ["COVID", "Valid", "Fluid", "Patient Age", "idx", "width"] if is_identifier_column(n)] == []


def test_identifier_columns_keep_leading_zeros_in_csv_and_parquet(tmp_path):
    cols = ["path", "study_id", "Accession Number", "SeriesInstanceUID", "value"]
    csv_path = tmp_path / "t.csv"
    csv_path.write_text(",".join(cols) + "\n007,0012,000345,1.2.840.0010,007\n010,0013,000346,1.2.840.0011,010\n")
    table = read_table(csv_path)
    assert table.column("path").to_pylist() == ["007", "010"]
    assert table.column("study_id").to_pylist() == ["0012", "0013"]
    assert table.column("Accession Number").to_pylist() == ["000345", "000346"]
    assert table.column("SeriesInstanceUID").to_pylist() == ["1.2.840.0010", "1.2.840.0011"]
    assert table.column("value").to_pylist() == [7, 10]  # not an identifier: a number
    pq_path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"path": ["007"], "study_id": [12], "SOPInstanceUID": ["1.2.0010"], "rows": [1024]}), pq_path)
    table = read_table(pq_path)
    assert table.to_pylist() == [{"path": "007", "study_id": "12", "SOPInstanceUID": "1.2.0010", "rows": 1024}]


def test_generic_ids_that_differ_only_in_zeros_are_different(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("image_id,patient_id,path,study_id\n001,p1,001,01\n01,p1,01,01\n1,p2,1,1\n")
    frame = ingest_table(path, preset="generic").manifest.frame
    assert frame["image_id"].tolist() == ["001", "01", "1"]
    assert frame["path"].tolist() == ["001", "01", "1"] and frame["study_id"].tolist() == ["01", "01", "1"]
    # Only --image-col given: the table's own path and study_id columns keep their zeros too.
    path.write_text("file,patient_id,path,study_id\na,p1,001,01\nb,p1,01,01\n")
    frame = ingest_table(path, image_col="file").manifest.frame
    assert frame["path"].tolist() == ["001", "01"] and frame["study_id"].tolist() == ["01", "01"]


# ----------------------------------------------------------------------------- errors


def test_error_quoting_long_values_stays_short(tmp_path):
    rle = [" ".join(str(i * 7 + k) for k in range(2500)) for i in range(8)]  # SIIM-like masks, ~10 KB each
    assert min(map(len, rle)) > 9000
    frame = pd.DataFrame({"image_id": [f"{i}.dcm" for i in range(8)], "patient_id": "p", "EncodedPixels": rle})
    path = tmp_path / "siim.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(ManifestValidationError) as err:
        ingest_table(path, label_cols=["EncodedPixels"])
    message = str(err.value)
    assert len(message) < 1000 and "…'" in message and "(8 in all)" in message
    wide = MissingColumnError(["patient"], [f"feature_{i:05d}" for i in range(20_003)], path="wide.csv")
    assert len(str(wide)) < 1000 and "(20003 in all)" in str(wide)


def test_unknown_encoding_is_a_usage_error(runner, tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"image_id,patient_id\na,1\n")
    with pytest.raises(UsageError, match="unknown text encoding 'klingon'"):
        read_table(path, encoding="klingon")
    res = runner.invoke(main, ["ingest", "table", str(path), "--encoding", "klingon", "-o", str(tmp_path / "m.parquet")])
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [
        "Error: unknown text encoding 'klingon'; give a Python codec name such as utf-8, latin-1, cp1252 or utf-16"
    ]


def test_cli_reads_a_zip_member_and_records_it(runner, tmp_path):
    path = _zip(tmp_path / "tables.zip", {"train.csv": b"image_id,patient_id\n001,7\n002,8\n", "notes.txt": b"x"})
    out = tmp_path / "m.parquet"
    res = runner.invoke(main, ["ingest", "table", str(path), "-o", str(out)])
    assert res.exit_code == 2 and res.stderr.startswith("Error: ") and "::train.csv" in res.stderr
    res = runner.invoke(main, ["ingest", "table", f"{path}::train.csv", "-o", str(out), "-q"])
    assert res.exit_code == 0, res.stderr
    m = read_manifest(out)
    assert m.frame["image_id"].tolist() == ["001", "002"] and m.frame["patient_id"].tolist() == ["7", "8"]
    source = m.history[0]["inputs"][0]
    assert source["member"] == "train.csv" and source["size"] == path.stat().st_size


# ----------------------------------------------------------------------------- binary data and wide encodings


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (PNG, "a PNG image"),
        (b"\xff\xd8\xff\xe0" + bytes(200), "a JPEG image"),
        (bytes(128) + b"DICM" + bytes(100), "a DICOM file"),
        (b"image_id,patient_id\n\x00\x01\x02\x03,1\n", "binary data"),
    ],
)
def test_binary_files_are_named_not_blamed_on_the_encoding(tmp_path, data, what):
    path = tmp_path / "labels.csv"
    path.write_bytes(data)
    with pytest.raises(InputError, match=f"is not a text table \\(it looks like {what}") as err:
        read_table(path)
    assert "latin-1" not in str(err.value) and not isinstance(err.value, EncodingError)


def test_a_zip_inside_a_zip_is_named(tmp_path):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("labels.csv", "image_id,patient_id\na,1\n")
    path = _zip(tmp_path / "outer.zip", {"inner.zip": inner.getvalue()})
    with pytest.raises(InputError, match="it looks like a zip archive inside the archive"):
        read_table(path)


def test_utf16_text_gets_the_encoding_that_reads_it(runner, tmp_path):
    text = "image_id,patient_id\n001.png,007\n"
    bom = tmp_path / "bom.csv"
    bom.write_bytes(text.encode("utf-16"))  # with a byte-order mark
    with pytest.raises(EncodingError, match="UTF-16 byte-order mark: it is UTF-16 text, not utf-8; pass --encoding utf-16$"):
        read_table(bom)
    assert read_table(bom, encoding="utf-16").to_pylist() == [{"image_id": "001.png", "patient_id": "007"}]
    plain = tmp_path / "le.csv"
    plain.write_bytes(text.encode("utf-16-le"))  # no byte-order mark
    with pytest.raises(EncodingError, match="UTF-16 text without a byte-order mark .*pass --encoding utf-16-le"):
        read_table(plain)
    res = runner.invoke(main, ["ingest", "table", str(plain), "--encoding", "utf-16", "-o", str(tmp_path / "m.parquet")])
    assert res.exit_code == 2 and res.stderr.strip().splitlines() == [
        f"Error: {plain} has no byte-order mark, so its utf-16 byte order is unknown; pass --encoding utf-16-le"
    ]
    assert read_table(plain, encoding="utf-16-le").num_rows == 1


def test_8bit_text_in_another_encoding_than_given_gets_advice_that_fits(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("image_id,patient_id\na,1\nb,ü\n".encode("utf-16-le")[:-3])  # cut in the middle of a character
    with pytest.raises(EncodingError) as err:
        read_table(path, encoding="utf-16-le")
    assert "or pass --encoding latin-1" not in str(err.value) and "check the file's encoding" in str(err.value)


def test_duplicate_names_after_stripping_quote_the_raw_cells(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("image_id,patient_id,a,a \n1,p,x,y\n")
    with pytest.raises(InputError) as err:
        read_table(path)
    assert str(err.value) == (
        f"{path} has duplicate column names 'a' (the header cells 'a', 'a ' are the same name once the white space "
        "around names is stripped); rename them"
    )
