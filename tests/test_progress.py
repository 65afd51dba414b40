"""Progress: RUN/progress.json after a real run (every step, model stage and dedupe), after a
resumed run, mid-step updates from the polling thread, failed steps and parts, the model
actors' counter files, dedupe's searched-row reports, and counting only committed files."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from rich.console import Console

from curate.dedupe import dedupe
from curate.core import commits, storage
from curate.core.config import validate
from curate.core.progress import (
    CommittedRows, Progress, RowCounter, StageRows, parquet_rows, rows_in, stage_counts_dir,
)
from curate.core.rundir import RunDir
from curate.pipeline.runner import run_pipeline
from finished_run import ROWS

# The demo config runs all three model stages (captioner first) and near-dedupe.
MODEL_STAGES = ["caption", "clip", "itm"]
RUN_STEPS = ["prepare", "download", "score", *[f"score/{k}" for k in MODEL_STAGES],
             "manifest", "dedupe", "output", "report"]


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
    downloaded = sum(parquet_rows(u) for u in storage.list_files(run.downloaded, ".parquet")
                     if not u.endswith("_hosts.parquet"))  # a shard's per-host figures
    assert steps["score"]["total"] == steps["score"]["done"] == downloaded
    for key in MODEL_STAGES:
        stage = steps[f"score/{key}"]
        assert stage["total"] == stage["done"] == downloaded
        # The actors did count: at least their first batch is always written, never more rows
        # than there are (the last second's rows may still be unwritten if Ray was slow to
        # shut a pool down; the finished step reports its total either way).
        assert 0 < StageRows(stage_counts_dir(run, key), 0)() <= downloaded
    statuses = pq.read_table(finished_run / "manifest").column("status").to_pylist()
    candidates = statuses.count("kept") + statuses.count("duplicate")  # passed every filter
    assert "duplicate" in statuses and steps["dedupe"]["done"] == steps["dedupe"]["total"] == candidates
    assert steps["manifest"]["done"] == ROWS
    kept = statuses.count("kept")
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


def test_a_resumed_run_counts_committed_rows_once_per_stage(finished_run, tmp_path):  # noqa: F811
    """Only half of the rows committed to RUN/scored/ (a run killed while scoring): the resumed
    run re-scores the rest. Each stage starts from the rows still committed and its actors
    count only the rows they re-score; counter files of the earlier attempt are dropped."""
    root = tmp_path / "run"
    shutil.copytree(finished_run, root)
    data = yaml.safe_load((root / "config.yaml").read_text())
    data["output"]["path"] = str(root)
    cfg = validate(data)
    (root / "config.yaml").write_text(cfg.to_yaml())
    run = RunDir(str(root))
    parts = storage.list_files(run.scored, ".parquet", recursive=True)
    scored = storage.read_parquet(parts)
    for uri in parts:
        storage.remove_tree(uri)
    committed = scored.slice(0, scored.num_rows // 2)
    # Committed as the score step commits: per download shard, the file and its record (curate.core.commits).
    for shard in set(committed.column("download_shard").to_pylist()):
        mine = committed.filter(pc.equal(committed.column("download_shard"), shard))
        commits.write_parquet(storage.join(run.scored, shard, "part-committed.parquet"), mine)
    rescored = scored.num_rows - committed.num_rows
    stale = storage.join(stage_counts_dir(run, "clip"), "earlier-attempt.json")
    storage.write_text(stale, json.dumps({"rows": 10**6}))

    run_pipeline(cfg, Console(record=True, width=120))

    steps = {s["name"]: s for s in _state(run)["steps"]}
    downloaded = steps["score"]["total"]
    assert not storage.exists(stale) and 0 < rescored < downloaded
    for key in MODEL_STAGES:
        stage = steps[f"score/{key}"]
        assert stage["state"] == "done" and stage["done"] == stage["total"] == downloaded
        assert 0 < StageRows(stage_counts_dir(run, key), 0)() <= rescored
    assert steps["dedupe"]["state"] == "done" and steps["dedupe"]["done"] == steps["dedupe"]["total"] > 0


def test_stage_rows_sum_the_actor_counters_over_the_committed_rows(tmp_path):
    folder = str(tmp_path / "_progress" / "clip")
    first, second = RowCounter(folder), RowCounter(folder)
    first.add(64)  # an actor's first batch is written at once
    second.add(10)
    assert StageRows(folder, committed=100)() == 174
    first.add(64)
    second.add(5)
    first.flush()
    second.flush()
    assert StageRows(folder, committed=100)() == 243
    assert StageRows(str(tmp_path / "no-actor-yet"), committed=7)() == 7


@pytest.mark.parametrize("method, use_ray", [("flat", False), ("ivf", False), ("clustered", False), ("clustered", True)])
def test_dedupe_reports_every_candidate_searched_once(method, use_ray, request):
    if use_ray:
        request.getfixturevalue("ray_session")
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(400, 16)).astype(np.float32)
    emb[200:250] = emb[:50] + 0.001 * rng.normal(size=(50, 16)).astype(np.float32)  # near copies
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids = [f"{i:05d}" for i in range(400)]
    keys = [f"bytes-{i % 350}" for i in range(400)]  # rows 350.. are exact copies
    calls: list[int] = []
    out = dedupe(ids, emb, rng.random(400), threshold=0.95, exact_keys=keys, method=method,
                 use_ray=use_ray, n_partitions=3, on_searched=calls.append)
    assert sum(calls) == 400 and len(calls) >= 2 and (out != None).sum() >= 100  # noqa: E711
    exact_only: list[int] = []
    dedupe(ids, None, None, keep="first", exact_keys=keys, on_searched=exact_only.append)
    assert exact_only == [400]


def test_parts_follow_their_step_and_end_in_its_state(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    progress = Progress(run, Console(record=True))
    with progress.step("work", total=4, parts={"work/a": lambda: 3, "work/b": lambda: 1}):
        with progress.part("inner", total=5) as advance:
            advance(2)
            assert _state(run)["steps"][-1] == {**_state(run)["steps"][-1], "name": "inner", "done": 2, "state": "running"}
            advance(3)
        assert {s["name"]: s["state"] for s in _state(run)["steps"]}["inner"] == "done"
    steps = _state(run)["steps"]
    assert [s["name"] for s in steps] == ["work", "work/a", "work/b", "inner"]
    assert all(s["state"] == "done" and s["done"] == s["total"] for s in steps)
    with pytest.raises(RuntimeError, match="boom"):
        with progress.step("again", total=4, parts={"again/a": lambda: 2}):
            with progress.part("again/inner", total=5) as advance:
                advance(1)
                raise RuntimeError("boom")
    steps = {s["name"]: s for s in _state(run)["steps"]}
    assert steps["again/a"]["state"] == steps["again/inner"]["state"] == steps["again"]["state"] == "failed"
    assert steps["again/a"]["done"] == 2 and steps["again/inner"]["done"] == 1
    assert steps["again/inner"]["error"] == "RuntimeError: boom" and _state(run)["current"] is None
