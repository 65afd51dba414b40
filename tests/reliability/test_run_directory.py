"""The run directory is held by one run, read from the input it started with, never read
as its own input, and trusted only as far as its commit records say. Real ``curate run``
subprocesses over a real HTTP server on 127.0.0.1; the run directory sits *inside* the
input folder throughout (row 10 of issue 20), so every test here also proves that."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus import mixed_corpus
from curate.synth.http_server import CorpusServer
from e2e import FAST_SETTINGS, corpus_rows, read_manifest
from faults import assert_accounting

SETTINGS = FAST_SETTINGS + ["download.shard_size=5", "download.threads=2", "output.samples_per_shard=4",
                            "ray.num_cpus=2", "report.enabled=false"]
CONFIG = str(Path(__file__).with_name("minimal.yaml"))


def _args(input_dir: Path, out: str, *extra: str) -> list[str]:
    return ["curate", "run", CONFIG, "--out", out, "--set", f"input.path={input_dir}",
            *[a for s in SETTINGS + list(extra) for a in ("--set", s)]]


def _run(input_dir: Path, out: str, env: dict, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(_args(input_dir, out, *extra), env=env, capture_output=True, text=True, timeout=900)


def _write_input(rows: list[dict], path: Path) -> None:
    """Uncompressed, no dictionary, no statistics: a caption replaced by another of the
    same length leaves the file the same size (the edit a size check can't see)."""
    table = pa.Table.from_pylist([{"url": r["url"], "caption": r["caption"]} for r in rows])
    pq.write_table(table, path, compression="none", use_dictionary=False, write_statistics=False)


def _tars(run: str) -> dict[str, list[tuple[str, bytes]]]:
    found = {}
    for path in sorted(Path(run, "output").glob("*.tar")):
        with tarfile.open(fileobj=io.BytesIO(path.read_bytes())) as tar:
            found[path.name] = sorted((m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile())
    return found


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """A finished run at IN/run, IN being its own input folder; the corpus stays served."""
    tmp = tmp_path_factory.mktemp("rundir")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    with CorpusServer({c.path: c.route for c in mixed_corpus() if c.route}, latency=0.05) as server:
        rows = corpus_rows(server) * 2
        input_dir = tmp / "in"
        input_dir.mkdir()
        _write_input(rows, input_dir / "pairs.parquet")
        run = str(input_dir / "run")
        done = _run(input_dir, run, env)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        want = {"manifest": read_manifest(run), "tars": _tars(run),
                "index": json.loads(Path(run, "output", "index.json").read_text())}
        yield {"rows": rows, "input": input_dir, "run": run, "env": env, "want": want, "tmp": tmp}


def _assert_same_as_baseline(base: dict, run: str) -> None:
    got = read_manifest(run)
    assert got.equals(base["want"]["manifest"]), "the manifest differs from the uninterrupted run's"
    assert json.loads(Path(run, "output", "index.json").read_text())["shards"] == base["want"]["index"]["shards"]
    assert _tars(run) == base["want"]["tars"]
    assert_accounting(len(base["rows"]), run)


# -- row 10: --out inside the input folder --

def test_out_inside_the_input_folder_is_left_out_of_the_input(baseline):
    manifest = baseline["want"]["manifest"]
    assert manifest.num_rows == len(baseline["rows"])
    assert set(manifest.column("input_file").to_pylist()) == {str(baseline["input"] / "pairs.parquet")}
    again = _run(baseline["input"], baseline["run"], baseline["env"])  # the run's own Parquet files exist now
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "prepare: already done" in again.stdout and "download: already done" in again.stdout
    _assert_same_as_baseline(baseline, baseline["run"])


def test_input_inside_the_run_directory_is_refused(baseline):
    done = _run(Path(baseline["run"]) / "rows", baseline["run"], baseline["env"])
    assert done.returncode == 2 and "is inside the run directory" in done.stderr, done.stderr
    elsewhere = _run(Path(baseline["run"]) / "rows", str(baseline["tmp"] / "other"), baseline["env"])
    assert elsewhere.returncode == 2 and "besides run directories" in elsewhere.stderr, elsewhere.stderr
    assert not (baseline["tmp"] / "other").exists()  # refused before anything was written


# -- row 7: an input edited without changing its size --

def test_an_input_edited_to_the_same_size_is_refused(baseline):
    path = baseline["input"] / "pairs.parquet"
    original = path.read_bytes()
    caption = "a cat sleeping on a sofa"
    assert original.count(caption.encode()) >= 1
    path.write_bytes(original.replace(caption.encode(), b"a dog sleeping on a sofa"))
    try:
        assert path.stat().st_size == len(original)  # the edit a size check can't see
        done = _run(baseline["input"], baseline["run"], baseline["env"])
        assert done.returncode == 2, done.stdout[-2000:]
        assert "was started from other input files" in done.stderr and "content changed" in done.stderr
    finally:
        path.write_bytes(original)
    _assert_same_as_baseline(baseline, baseline["run"])  # nothing was touched


# -- row 8: committed work is verified, not trusted --

def _scored_parts_with(run: str, sample_ids: set[str]) -> list[Path]:
    return [p for p in Path(run, "scored").glob("*.parquet")
            if sample_ids & set(pq.read_table(p, columns=["sample_id"]).column("sample_id").to_pylist())]


def _shard_ids(run: str, shard: str) -> set[str]:
    return set(pq.read_table(Path(run, "downloaded", f"{shard}.parquet"), columns=["sample_id"])
               .column("sample_id").to_pylist())


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _damage(run: str, case: str) -> str:
    """Damage the run as the case says; returns what the resume must report."""
    if case == "download_shard_and_its_scored_parts_deleted":
        ids = _shard_ids(run, "00001")
        for part in _scored_parts_with(run, ids):
            part.unlink()
        Path(run, "downloaded", "00001.parquet").unlink()
        return "downloaded/00001.parquet: missing"
    if case == "download_shard_and_the_output_deleted":
        Path(run, "downloaded", "00002.parquet").unlink()
        shutil.rmtree(Path(run, "output"))
        return "downloaded/00002.parquet: missing"
    if case == "output_tar_truncated":
        _truncate(Path(run, "output", "00000.tar"))
        return ""  # the output step finds it itself and writes it again
    if case == "download_stats_deleted":
        Path(run, "downloaded", "00003_stats.json").unlink()
        return "downloaded/00003_stats.json: missing"
    if case == "scored_part_changed_in_place":
        part = sorted(Path(run, "scored").glob("*/*.parquet"))[0]  # scored/<download shard>/part-*.parquet
        _flip_a_byte(part)
        return f"scored/{part.parent.name}/{part.name}: content changed"
    if case == "prepared_rows_deleted":
        part = sorted(Path(run, "rows").glob("*.parquet"))[0]  # rows/part-<file>-<row group>.parquet
        part.unlink()
        return f"rows/{part.name}: missing"
    raise ValueError(case)


@pytest.mark.parametrize("case", [
    "download_shard_and_its_scored_parts_deleted", "download_shard_and_the_output_deleted", "output_tar_truncated",
    "download_stats_deleted", "scored_part_changed_in_place", "prepared_rows_deleted",
])
def test_damaged_work_is_found_and_done_again(baseline, case):
    """Before: (a) rows became download_failed/missing_from_downloader, exit 0; (b) every
    resume failed with FileNotFoundError and "free disk space"; (c) the truncated tar was
    indexed as complete. Now each resume redoes what is missing or damaged and ends with
    exactly the uninterrupted run's manifest and shards."""
    run = baseline["run"]
    said = _damage(run, case)
    done = _run(baseline["input"], run, baseline["env"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert said in done.stdout, done.stdout[-3000:]
    assert "free disk space" not in done.stdout + done.stderr and "Traceback" not in done.stderr
    _assert_same_as_baseline(baseline, run)


def test_a_stop_is_called_disk_full_only_when_it_is_one():
    import errno

    from curate.pipeline.runner import RunStopped, _stops_cleanly

    def failing(error):
        def step():
            raise error
        return _stops_cleanly(step)

    with pytest.raises(RunStopped) as missing:
        failing(FileNotFoundError(errno.ENOENT, "No such file or directory", "RUN/downloaded/00002.parquet"))()
    assert "disk" not in str(missing.value) and "run the same command again to resume" in str(missing.value)
    with pytest.raises(RunStopped) as full:
        failing(OSError(errno.ENOSPC, "No space left on device"))()
    assert "free disk space" in str(full.value)


# -- row 6: one run at a time --

def test_a_second_run_on_the_same_directory_is_refused_and_a_dead_holder_taken_over(baseline):
    out = str(baseline["input"] / "concurrent")
    first = subprocess.Popen(_args(baseline["input"], out), env=baseline["env"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        lock = Path(out, "_lock")
        deadline = time.time() + 300
        while first.poll() is None and time.time() < deadline and not (
                lock.exists() and lock.read_text().startswith("{") and Path(out, "_done", "prepare").exists()):
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the second started: nothing to prove"
        second = _run(baseline["input"], out, baseline["env"])
        assert first.poll() is None, "the first run ended while the second ran: nothing proved"
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # SIGKILL: it can't release anything itself
        first.wait()
    assert second.returncode == 2, second.stdout[-2000:]
    assert f"is in use by another curate run (pid {first.pid} on " in second.stderr, second.stderr
    assert json.loads(lock.read_text())["pid"] == first.pid  # the dead holder's lock is still there

    third = _run(baseline["input"], out, baseline["env"])  # takes the stale lock over and resumes
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert not lock.exists()  # released at the end
    got = read_manifest(out)
    assert got.equals(baseline["want"]["manifest"])
    assert _tars(out) == baseline["want"]["tars"]
