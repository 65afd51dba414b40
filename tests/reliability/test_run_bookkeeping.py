"""Issue 31, items 3, 5, 9 and 10: the run directory's bookkeeping (state.json, the step
markers, _commits/) is changed only by commands whose input was checked first, is checked on
resume, and a run directory is found however its path is spelled.

- an --extend with an unreadable new file (garbage, not Parquet; a column missing; a truncated
  Parquet file) is refused with one line naming it, and state.json and the markers are as
  they were; once the file is fixed, the same command extends the run;
- `curate retry` and `curate refilter` refuse a run whose --extend was SIGKILLed (the retry
  rewrote the manifest with the old rows only); the same --extend then finishes it;
- a resume with state.json removed is refused (an input edit went unseen); with _commits/
  removed, a truncated download shard is found by reading it, downloaded again, and the run
  ends with the uninterrupted run's manifest (it ended in a traceback);
- `--out RUN/`, `./RUN`, a moved run directory, `input.path` spelled `./in/` resume the run.

Every run is a `curate` subprocess against a real HTTP server on 127.0.0.1 and real Ray."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from corpus import image_bytes
from curate.synth.http_server import CorpusServer, Route
from e2e import cli_environment, curate_cli, read_manifest


def _rows(server, paths: list[str], words: str = "a photo of the thing") -> pa.Table:
    return pa.Table.from_pylist([{"url": server.url(p), "caption": f"{words} at {p}"} for p in paths])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bookkeeping")
    routes = {f"/ok/{i}.jpg": Route(image_bytes("JPEG", seed=70 + i)) for i in range(8)}
    routes.update({f"/slow/{i}.jpg": Route(image_bytes("JPEG", seed=90 + i), delay=2.0) for i in range(4)})
    with CorpusServer(routes) as server:
        inputs = tmp / "in"
        inputs.mkdir()
        pq.write_table(_rows(server, [f"/ok/{i}.jpg" for i in range(3)]), inputs / "a.parquet")
        config = tmp / "config.yaml"
        config.write_text(yaml.safe_dump({
            "input": {"path": str(inputs), "format": "parquet"},
            "output": {"path": "unused", "samples_per_shard": 3},
            "download": {"allow_private_hosts": True, "image_size": 64, "threads": 1, "shard_size": 2},
            "filters": {"min_side": 32}, "report": {"enabled": False}, "ray": {"num_cpus": 2},
        }))
        env = cli_environment()
        run = tmp / "run"
        curate_cli(["run", str(config), "--out", str(run)], env)
        yield {"tmp": tmp, "server": server, "inputs": inputs, "config": config, "env": env, "run": run,
               "manifest": read_manifest(str(run))}


def _copy(world, name: str) -> Path:
    target = world["tmp"] / name
    shutil.copytree(world["run"], target)
    return target


def _one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, (done.stdout + done.stderr)[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return " ".join(lines)


def _bookkeeping(run: Path) -> dict:
    return {"state": (run / "state.json").read_bytes(), "config": (run / "config.yaml").read_bytes(),
            "done": sorted(p.name for p in (run / "_done").iterdir()),
            "extending": (run / "_extending.json").exists()}


def _truncated_parquet(server) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(_rows(server, ["/ok/3.jpg", "/ok/4.jpg"]), sink)
    return sink.getvalue().to_pybytes()[:-20]


def test_an_extend_with_an_unreadable_new_file_changes_nothing_then_the_fixed_file_extends(world):
    run, server, new = _copy(world, "run3"), world["server"], world["inputs"] / "b.parquet"
    before = _bookkeeping(run)
    no_caption = pa.BufferOutputStream()
    pq.write_table(pa.table({"url": [server.url("/ok/3.jpg")], "text": ["a photo"]}), no_caption)
    try:
        for bad in (b"this is not parquet at all", no_caption.getvalue().to_pybytes(), _truncated_parquet(server)):
            new.write_bytes(bad)
            done = curate_cli(["run", str(world["config"]), "--out", str(run), "--extend"], world["env"], ok=False)
            assert "b.parquet" in _one_line_error(done)
            assert _bookkeeping(run) == before, "a refused --extend changed the run directory"
        pq.write_table(_rows(server, ["/ok/3.jpg", "/ok/4.jpg"]), new)  # fixed
        curate_cli(["run", str(world["config"]), "--out", str(run), "--extend"], world["env"])
    finally:
        new.unlink()
    assert read_manifest(str(run)).num_rows == 5
    assert not (run / "_extending.json").exists()


def _kill_when(args: list[str], env: dict, condition, limit: float = 600) -> None:
    proc = subprocess.Popen(["curate", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + limit
    try:
        while proc.poll() is None and time.time() < deadline:
            if condition():
                return
            time.sleep(0.05)
        raise AssertionError(f"the command ended before it could be killed: {proc.communicate()[0].decode()[-3000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_retry_and_refilter_refuse_a_run_whose_extend_was_killed(world):
    run, server, new = _copy(world, "run5"), world["server"], world["inputs"] / "c.parquet"
    parts = {p.name: p.read_bytes() for p in (run / "manifest").glob("*.parquet")}
    slow = [f"/slow/{i}.jpg" for i in range(4)]
    pq.write_table(_rows(server, slow), new)
    try:
        seen = len(server.requests)
        _kill_when(["run", str(world["config"]), "--out", str(run), "--extend"], world["env"],
                   lambda: (run / "_extending.json").exists() and any("/slow/" in r for r in server.requests[seen:]))
        retry = curate_cli(["retry", str(run)], world["env"], ok=False)
        assert "--extend" in _one_line_error(retry) and "interrupted" in retry.stderr
        refilter = curate_cli(["refilter", str(run), "--set", "filters.min_caption_words=1"], world["env"], ok=False)
        assert "--extend" in _one_line_error(refilter)
        assert {p.name: p.read_bytes() for p in (run / "manifest").glob("*.parquet")} == parts
        curate_cli(["run", str(world["config"]), "--out", str(run), "--extend"], world["env"])  # finishes it
    finally:
        new.unlink()
    assert read_manifest(str(run)).num_rows == 7
    assert not (run / "_extending.json").exists()


def test_a_resume_with_state_json_removed_is_refused(world):
    run = _copy(world, "run10a")
    (run / "state.json").unlink()
    done = curate_cli(["run", str(world["config"]), "--out", str(run)], world["env"], ok=False)
    assert "state.json is missing" in _one_line_error(done)


def test_a_resume_with_commits_removed_reads_every_file_and_redoes_a_truncated_shard(world):
    run = _copy(world, "run10b")
    shutil.rmtree(run / "_commits")
    shard = sorted((run / "downloaded").glob("*.parquet"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    done = curate_cli(["run", str(world["config"]), "--out", str(run)], world["env"])
    assert "Traceback" not in done.stdout + done.stderr
    assert shard.name in done.stdout, done.stdout[-3000:]
    got, want = read_manifest(str(run)), world["manifest"]
    for name in ("sample_id", "status", "reason", "sha256", "output_shard"):
        assert got.column(name).to_pylist() == want.column(name).to_pylist(), name


def test_the_same_run_directory_spelled_otherwise_or_moved_resumes(world):
    """A copy of the finished run under another name (moved), named with a trailing slash, and
    input.path spelled relative with a trailing slash: the run is recognised and nothing is
    fetched again."""
    tmp = world["tmp"]
    moved = _copy(world, "moved-run")
    relative_input = "./" + os.path.relpath(world["inputs"], tmp) + "/"
    seen = len(world["server"].requests)
    done = subprocess.run(["curate", "run", str(world["config"]), "--out", "moved-run/",
                           "--set", f"input.path={relative_input}"],
                          env=world["env"], capture_output=True, text=True, timeout=900, cwd=tmp)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "download: already done" in done.stdout
    assert len(world["server"].requests) == seen, "the resumed run fetched again"
    assert read_manifest(str(moved)).column("status").to_pylist() == world["manifest"].column("status").to_pylist()
