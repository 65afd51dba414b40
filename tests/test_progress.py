"""Progress: RUN/progress.json after a real run, mid-step updates from the polling thread,
failed steps, and counting only committed files."""

from __future__ import annotations

import json
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from curate.pipeline import storage
from curate.pipeline.progress import CommittedRows, Progress, parquet_rows, rows_in
from curate.pipeline.rundir import RunDir
from finished_run import ROWS, finished_run  # noqa: F401 - the shared run fixture

RUN_STEPS = ["prepare", "download", "process", "manifest", "output", "report"]


def _state(run: RunDir) -> dict:
    return json.loads(storage.read_text(storage.join(run.root, "progress.json")))


def test_a_finished_run_reports_every_step_done(finished_run):  # noqa: F811
    run = RunDir(str(finished_run))
    state = _state(run)
    steps = {s["name"]: s for s in state["steps"]}
    assert [s["name"] for s in state["steps"]] == RUN_STEPS and state["current"] is None
    assert steps["prepare"]["done"] == steps["prepare"]["total"] == ROWS
    assert all(s["state"] == "done" and s["error"] is None and s["finished"] >= s["started"] for s in steps.values())
    assert steps["download"]["total"] == steps["download"]["done"] == rows_in(run.download_list) == ROWS
    downloaded = sum(parquet_rows(u) for u in storage.list_files(run.downloaded, ".parquet"))
    assert steps["process"]["total"] == steps["process"]["done"] == downloaded
    assert steps["manifest"]["done"] == ROWS
    kept = pq.read_table(finished_run / "manifest").column("status").to_pylist().count("kept")
    assert steps["output"]["done"] == steps["output"]["total"] == kept
    assert all(isinstance(s["rows_per_s"], float) and s["rows_per_s"] >= 0 for s in steps.values())


def _write_part(folder, name: str, rows: int) -> None:
    storage.write_parquet(storage.join(str(folder), name), pa.table({"x": list(range(rows))}))


def test_polled_counts_reach_progress_json_while_the_step_runs(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    parts = tmp_path / "parts"
    progress = Progress(run, Console(record=True), poll_seconds=0.01)
    seen = threading.Event()

    def wait_for(done: int) -> None:
        # the step is still running: only the polling thread can have written this count
        for _ in range(3000):
            if storage.exists(progress.uri) and _state(run)["steps"][-1]["done"] == done:
                return
            seen.wait(0.01)
        raise AssertionError(f"progress.json never showed done={done}: {_state(run)}")

    with progress.step("work", total=30, count=CommittedRows(str(parts), ".parquet", parquet_rows)):
        for i in range(3):
            _write_part(parts, f"part-{i}.parquet", 10)
            wait_for(10 * (i + 1))
            assert _state(run)["current"] == "work" and _state(run)["steps"][-1]["state"] == "running"
    step = _state(run)["steps"][-1]
    assert step["state"] == "done" and step["done"] == step["total"] == 30 and step["rows_per_s"] > 0


def test_a_failing_step_is_recorded_and_raised(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    progress = Progress(run, Console(record=True))
    with progress.step("first", total=4):
        progress.advance(2)
        progress.advance(2)
    with pytest.raises(RuntimeError, match="disk full"):
        with progress.step("second", total=10):
            progress.advance(3)
            raise RuntimeError("disk full")
    first, second = _state(run)["steps"]
    assert first["state"] == "done" and first["done"] == 4
    assert second["state"] == "failed" and second["done"] == 3 and second["error"] == "RuntimeError: disk full"


def test_committed_rows_ignore_temporaries_and_read_each_file_once(tmp_path):
    reads = []

    def rows_of(uri: str) -> int:
        reads.append(uri)
        return parquet_rows(uri)

    counter = CommittedRows(str(tmp_path), ".parquet", rows_of)
    _write_part(tmp_path, "a.parquet", 5)
    (tmp_path / "b.parquet.tmp-123").write_bytes(b"half written")
    assert counter() == 5
    _write_part(tmp_path, "c.parquet", 7)
    assert counter() == 12 and counter() == 12
    assert sorted(u.rsplit("/", 1)[1] for u in reads) == ["a.parquet", "c.parquet"]


def test_a_retried_batch_does_not_push_a_step_past_its_total(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    progress = Progress(run, Console(record=True))
    with progress.step("process", total=10):
        progress.update(14)
        assert _state(run)["steps"][-1]["done"] == 10
