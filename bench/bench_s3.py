"""DICOM headers from S3: ranged reads against downloading whole files, on moto's S3 server.

The tree: synthetic DX files of 512x512 16-bit pixels (about 0.5 MB each, realistic
headers), uploaded to a local S3 API (``mdprep.synthetic.LocalS3``: moto's server,
which counts the body bytes it sends) running in a process of its own. s3fs talks
HTTP to it.

Three settings (:data:`SCENARIOS`): localhost as it is (no latency, no bandwidth
limit: moto's own work per request is the cost); 20 ms added per round trip, as a
store in another building has; 20 ms and one shared link of 25 MB/s (about
200 Mbit/s), where transfer volume costs time as it does between a hospital and a
cloud region.

Readers, all single process (``workers=1``), all giving the same rows:

* ranged: ``mdprep.ingest.ingest_dicom("s3://...")``: one listing, then each file's
  first 8 KiB in one ranged GET, 16 at a time, parsed with mdprep's header reader;
* ranged, 1 thread: the same with ``mdprep.storage.THREADS = 1`` (no concurrency);
* whole files: the listing, ``fs.cat(paths)`` (s3fs fetches the files concurrently),
  then the same header reader on the bytes in memory.

Runs are interleaved (one of each reader per round) and the median of the rounds is
reported; bytes are what the server sent for object reads in one run.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

from _common import CACHE, median

from mdprep import storage
from mdprep.dicom_header import header_columns, read_headers
from mdprep.ingest import ingest_dicom
from mdprep.synthetic import LocalS3, write_dicom_tree

# Any credentials do for moto; set before s3fs is first used.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def tree(files: int) -> Path:
    root = CACHE / f"dicom-s3-{files}"
    done = CACHE / f"dicom-s3-{files}.complete"
    if not done.exists():
        write_dicom_tree(root, patients=files // 4, images_per_patient=4, shape=(512, 512), seed=2, private_tags=60)
        done.write_text("ok")
    return root


def _whole_files(url: str) -> int:
    """List, download every object with ``fs.cat``, read the headers from memory; the number of rows."""
    listing = storage.list_tree(url)
    fs, base = storage.filesystem(url)
    paths = [f"{base}/{rel}" for rel in listing.relpaths]
    data = fs.cat(paths)
    results = read_headers(paths, header_columns(), opener=lambda p: (io.BytesIO(data[p]), len(data[p])))
    return sum(r.outcome == "ok" for r in results)


def _serve(conn, latency: float, bandwidth: float | None) -> None:
    """The S3 server, in a process of its own (so that its Python work does not share the readers' GIL)."""
    with LocalS3(latency=latency, bandwidth=bandwidth) as s3:
        conn.send(s3.endpoint)
        while True:
            command, arg = conn.recv()
            if command == "stop":
                break
            if command == "upload":
                conn.send(s3.upload(*arg))
            elif command == "reads":
                conn.send(s3.object_reads(arg))
                s3.requests.clear()


class _Server:
    def __init__(self, latency: float, bandwidth: float | None) -> None:
        import multiprocessing

        self.conn, child = multiprocessing.Pipe()
        self.process = multiprocessing.get_context("spawn").Process(target=_serve, args=(child, latency, bandwidth), daemon=True)
        self.process.start()
        self.endpoint = self.conn.recv()

    def ask(self, command: str, arg=None):
        self.conn.send((command, arg))
        return self.conn.recv()

    def stop(self) -> None:
        self.conn.send(("stop", None))
        self.process.join(10)


def run(files: int = 200, repeat: int = 5, latency_ms: float = 0.0, link_mb_s: float | None = None) -> dict:
    import s3fs

    root = tree(files)
    size = sum(p.stat().st_size for p in root.rglob("*.dcm"))
    n = sum(1 for _ in root.rglob("*.dcm"))
    server = _Server(latency_ms / 1000, link_mb_s * 1e6 if link_mb_s else None)
    try:
        os.environ["AWS_ENDPOINT_URL"] = server.endpoint
        s3fs.S3FileSystem.clear_instance_cache()
        url = server.ask("upload", (str(root), "bench", "dicom"))
        server.ask("reads", "/")

        def ranged() -> int:
            return ingest_dicom(url, workers=1).report.ingested

        def ranged_one_thread() -> int:
            storage.THREADS = 1
            try:
                return ingest_dicom(url, workers=1).report.ingested
            finally:
                storage.THREADS = 16

        def whole() -> int:
            return _whole_files(url)

        readers = {"ranged": ranged, "ranged_1": ranged_one_thread, "whole": whole}
        times: dict[str, list[float]] = {k: [] for k in readers}
        sent: dict[str, tuple[int, int]] = {}
        for _ in range(repeat):
            for name, fn in readers.items():
                start = time.perf_counter()
                rows = fn()
                times[name].append(time.perf_counter() - start)
                assert rows == n, (name, rows, n)
                reads = server.ask("reads", "/bench/dicom/")
                sent[name] = (sum(r for r, _ in reads.values()), sum(b for _, b in reads.values()))
    finally:
        server.stop()
    return {"files": n, "mean_size": size / n, "latency_ms": latency_ms, "link_mb_s": link_mb_s, "repeat": repeat,
            **{k: {"files_s": n / median(v), "requests": sent[k][0], "bytes": sent[k][1]} for k, v in times.items()}}


#: (latency in ms, link in MB/s or None): localhost as it is, a store 20 ms away, the same over a 200 Mbit/s link.
SCENARIOS = ((0.0, None), (20.0, None), (20.0, 25.0))


def report(files: int = 200, repeat: int = 5) -> str:
    """The Markdown of every scenario (what bench/run_all.py prints)."""
    return "\n\n".join(markdown(run(files, repeat, latency, link)) for latency, link in SCENARIOS)


def markdown(r: dict) -> str:
    n, whole = r["files"], r["whole"]
    label = {"ranged": "ranged reads, 16 threads (`ingest_dicom`)", "ranged_1": "ranged reads, 1 thread", "whole": "whole files (`fs.cat`), same header reader"}
    lines = [
        f"S3 (moto server on localhost; {r['latency_ms']:g} ms added per round trip; "
        f"{'a shared link of ' + format(r['link_mb_s'], 'g') + ' MB/s' if r['link_mb_s'] else 'no bandwidth limit'}): "
        f"{n:,} DICOM files of {r['mean_size'] / 1e6:.2f} MB; 1 process; median of {r['repeat']} interleaved runs; bytes as the server counted them.",
        "",
        "| reader | files/s | GETs | bytes fetched | per file | vs whole files |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key in ("ranged", "ranged_1", "whole"):
        x = r[key]
        lines.append(
            f"| {label[key]} | {x['files_s']:,.0f} | {x['requests']:,} | {x['bytes'] / 1e6:,.2f} MB | {x['bytes'] / n / 1024:,.1f} KiB | "
            f"{x['files_s'] / whole['files_s']:.2f}x speed, {x['bytes'] / whole['bytes']:.3f}x bytes |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    for latency, link in SCENARIOS:
        print(markdown(run(args.files, args.repeat, latency, link)), end="\n\n")
