"""The Dask engine (``--scheduler``): the same bytes as the local engine, retries, and the errors of a bad scheduler.

One LocalCluster (2 single-threaded worker processes) serves the module. A worker
process that dies is rescheduled once (``allowed-failures`` 1 on this cluster), so the
test of a chunk that kills every worker it is given stays short.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import dask
import distributed
import pytest

from mdprep import executor
from mdprep.cli import main
from mdprep.errors import EngineError
from mdprep.executor import SCHEDULER_ENV, map_chunks

IMAGE_REGEX = r"(?P<patient>patient\d+)/(?P<study>study\d+)/view\d+_(?P<view>frontal|lateral)"


@pytest.fixture(scope="module")
def cluster():
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Port \d+ is already in use")
        with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None, silence_logs=logging.ERROR) as c:
            yield c


@pytest.fixture
def small_chunks(monkeypatch):
    """Streamed listings cut into chunks of 4 files, so a small tree makes several tasks."""
    monkeypatch.setattr(executor, "STREAM_CHUNK", 4)
    monkeypatch.setattr(executor, "DASK_STREAM_CHUNK", 4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(runner, args, **kw):
    res = runner.invoke(main, args, **kw)
    assert res.exit_code == 0, res.stderr
    return res


def _outputs(runner, tmp_path: Path, name: str, args: list[str], env: dict | None = None) -> tuple[bytes, bytes, str]:
    out, err = tmp_path / f"{name}.parquet", tmp_path / f"{name}-errors.csv"
    res = _run(runner, args + ["-o", str(out), "--errors", str(err)], env=env)
    return out.read_bytes(), err.read_bytes(), res.stderr.replace(f"{name}-errors.csv", "ERRORS").replace(f"{name}.parquet", "OUT")


def test_ingest_dicom_same_bytes_as_local_engine(runner, tmp_path, dicom_tree, cluster, small_chunks):
    args = ["ingest", "dicom", dicom_tree.root, "--missing-patient", "study"]
    local = _outputs(runner, tmp_path, "local", args + ["--workers", "1"])
    pool = _outputs(runner, tmp_path, "pool", args + ["--workers", "2"])
    dask_ = _outputs(runner, tmp_path, "dask", args + ["--scheduler", cluster.scheduler_address])
    assert local == pool == dask_
    # --missing-patient study: the file without a PatientID is ingested too.
    ingested, failed = dicom_tree.ingested + 1, dicom_tree.failed - 1
    assert f"{dicom_tree.found} found = {ingested} ingested + {dicom_tree.skipped} skipped + {failed} failed" in dask_[2]
    assert failed > 0 and dask_[1].count(b"\n") == 1 + dicom_tree.skipped + failed


def test_ingest_dicom_file_list_same_bytes(runner, tmp_path, dicom_tree, cluster):
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(sorted(dicom_tree.outcomes)) + "\n")
    args = ["ingest", "dicom", dicom_tree.root, "--files-from", str(listing)]
    assert _outputs(runner, tmp_path, "a", args + ["--workers", "1"]) == _outputs(runner, tmp_path, "b", args + ["--scheduler", cluster.scheduler_address])


def test_ingest_images_same_bytes(runner, tmp_path, image_tree, cluster):
    args = ["ingest", "images", image_tree.root, "--patient-regex", IMAGE_REGEX]
    local = _outputs(runner, tmp_path, "local", args + ["--workers", "1"])
    dask_ = _outputs(runner, tmp_path, "dask", args + ["--scheduler", cluster.scheduler_address])
    assert local == dask_ and image_tree.failed > 0


def test_hash_same_bytes(runner, tmp_path, image_tree, cluster):
    root = tmp_path / "images"
    shutil.copytree(image_tree.root, root)
    manifest = tmp_path / "m.parquet"
    _run(runner, ["ingest", "images", str(root), "--patient-regex", IMAGE_REGEX, "-o", str(manifest), "-q"])
    (root / "patient00000/study1/view1_frontal.png").unlink()  # a failed row: the file is gone
    png = root / "patient00001/study1/view1_frontal.png"
    png.write_bytes(png.read_bytes()[:60])  # another: cut short
    args = ["hash", str(manifest)]
    local = _outputs(runner, tmp_path, "local", args + ["--workers", "1"])
    dask_ = _outputs(runner, tmp_path, "dask", args + ["--scheduler", cluster.scheduler_address])
    assert local == dask_
    assert dask_[1].count(b"\n") == 3 and "15 images = 13 hashed + 2 failed" in dask_[2]


def test_scheduler_from_environment(runner, tmp_path, dicom_tree, cluster):
    args = ["ingest", "dicom", dicom_tree.root, "-q"]
    local = _outputs(runner, tmp_path, "local", args + ["--workers", "1"])
    assert _outputs(runner, tmp_path, "env", args, env={SCHEDULER_ENV: cluster.scheduler_address})[:2] == local[:2]
    dead = f"tcp://127.0.0.1:{_free_port()}"
    res = runner.invoke(main, args + ["-o", str(tmp_path / "x.parquet"), "--scheduler-timeout", "0.2"], env={SCHEDULER_ENV: dead})
    assert res.exit_code == 2 and res.stderr.startswith(f"Error: cannot reach the Dask scheduler at {dead} within 0.2 s")


@pytest.mark.parametrize(
    "address, expected",
    [
        # The reason in brackets is what the system said: "Connection refused" on a quiet machine, a timeout when
        # a loaded one lets the 2 s pass before the first refusal is seen. Both name the address and the fix.
        ("dead", "cannot reach the Dask scheduler at {dead} within 2 s ("),
        ("htp://host:8786", "--scheduler 'htp://host:8786' is not a Dask scheduler address (unknown address scheme 'htp'"),
        ("http://host:8787/status", "that is a web address (the dashboard's?); the scheduler listens on tcp://HOST:8786"),
        ("host-without-port", "missing port number"),
    ],
)
def test_bad_scheduler_is_exit_2(runner, tmp_path, dicom_tree, address, expected):
    dead = f"tcp://127.0.0.1:{_free_port()}"
    address = dead if address == "dead" else address
    out = tmp_path / "m.parquet"
    timeout = "2" if address == dead else "0.2"
    res = runner.invoke(main, ["ingest", "dicom", dicom_tree.root, "-o", str(out), "--scheduler", address, "--scheduler-timeout", timeout])
    assert res.exit_code == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expected.format(dead=dead) in lines[0]
    if address == dead:
        assert "; check the address" in lines[0]
    assert not out.exists()


def test_workers_with_a_running_cluster_is_exit_2(runner, tmp_path, image_tree, cluster):
    res = runner.invoke(
        main,
        ["ingest", "images", image_tree.root, "--patient-regex", IMAGE_REGEX, "-o", str(tmp_path / "m.parquet"), "--workers", "2",
         "--scheduler", cluster.scheduler_address],
    )
    assert res.exit_code == 2
    assert res.stderr.strip() == (
        f"Error: --workers 2 starts that many workers with --scheduler local only; the cluster at {cluster.scheduler_address} "
        "has its own workers (scale the cluster instead, or leave --workers out)"
    )


def test_without_dask_installed_is_exit_2(runner, tmp_path, dicom_tree, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed now raises ImportError
    res = runner.invoke(main, ["ingest", "dicom", dicom_tree.root, "-o", str(tmp_path / "x.parquet"), "--scheduler", "local"])
    assert res.exit_code == 2
    assert res.stderr.startswith("Error: --scheduler needs dask.distributed (") and res.stderr.strip().endswith(
        "install it with pip install 'mdprep[dask]'"
    )


def test_dask_is_imported_only_with_a_scheduler():
    code = (
        "import sys, mdprep.cli, mdprep.executor, mdprep.ingest, mdprep.hashing; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'dask', 'distributed'}))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]"


def test_a_cluster_without_the_module_is_an_engine_error(tmp_path, cluster, monkeypatch):
    # The workers started before this folder joined sys.path: they cannot import the module; the scheduler (here) can.
    (tmp_path / "only_here.py").write_text("def chunk_len(chunk):\n    return len(chunk)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import only_here

    with pytest.raises(EngineError, match=r"worker tcp://\S+, worker tcp://\S+ of the Dask cluster at \S+ cannot import only_here \(ModuleNotFoundError"):
        map_chunks(only_here.chunk_len, [1, 2, 3], scheduler=cluster.scheduler_address)


def test_a_cluster_with_another_mdprep_is_an_engine_error(cluster, monkeypatch):
    import mdprep

    monkeypatch.setattr(mdprep, "__version__", "0.0.0+here")  # the in-process scheduler sees it too, the workers not
    with pytest.raises(EngineError, match=r"worker tcp://\S+ and 1 more of the Dask cluster at \S+ run mdprep \S+, this machine 0.0.0\+here"):
        map_chunks(len, [1, 2, 3], scheduler=cluster.scheduler_address)


def _mark(chunk, *, folder: str):
    Path(folder, f"chunk-{chunk[0]}").touch()
    return list(chunk)


def test_a_stream_goes_to_the_cluster_as_it_comes(tmp_path, cluster):
    def items():
        yield from range(8)  # two chunks of 4, submitted while the stream goes on
        deadline = time.monotonic() + 20
        while not (tmp_path / "chunk-0").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (tmp_path / "chunk-0").exists(), "the first chunk did not run before the stream ended"
        yield from range(8, 10)

    done: list[int] = []
    out = map_chunks(functools.partial(_mark, folder=str(tmp_path)), items(), chunk_size=4, scheduler=cluster.scheduler_address, on_progress=done.append)
    assert out == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] and sum(done) == 10


def _die_once(chunk, *, marker: str, root: str):
    """Read the chunk's DICOM headers, but first kill this worker process, the first time any worker gets here."""
    from mdprep.ingest.dicom import _read_chunk

    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return _read_chunk(chunk, root=root, columns=_columns())
    os.close(fd)
    os._exit(1)


def _die_always(chunk):
    os._exit(1)


def _columns():
    from mdprep.dicom_header import header_columns
    from mdprep.ingest.dicom import RESERVED_COLUMNS

    return header_columns((), reserved=RESERVED_COLUMNS)


def test_a_dead_worker_loses_no_file(tmp_path, dicom_tree, cluster):
    from mdprep.ingest.dicom import _read_chunk

    paths = sorted(p for p in dicom_tree.outcomes if p.endswith(".dcm"))
    local = map_chunks(functools.partial(_read_chunk, root=dicom_tree.root, columns=_columns()), paths, workers=1, chunk_size=5)
    done: list[int] = []
    task = functools.partial(_die_once, marker=str(tmp_path / "died"), root=dicom_tree.root)
    remote = map_chunks(task, iter(paths), chunk_size=5, scheduler=cluster.scheduler_address, on_progress=done.append)
    assert (tmp_path / "died").exists()  # a worker did die
    assert sum(done) == len(paths) and len(done) == len(remote) == len(local)
    assert [c.relpaths for c in remote] == [c.relpaths for c in local]
    assert [c.batch.to_pylist() for c in remote] == [c.batch.to_pylist() for c in local]
    assert [c.errors for c in remote] == [c.errors for c in local]


def test_a_chunk_that_kills_every_worker_is_an_engine_error(cluster):
    with pytest.raises(EngineError, match=r"the chunk of 2 file\(s\) starting at 'a.dcm' killed 2 Dask workers in turn") as info:
        map_chunks(_die_always, ["a.dcm", "b.dcm"], chunk_size=2, scheduler=cluster.scheduler_address)
    assert info.value.scheduler == cluster.scheduler_address

