"""Disk full under a running `curate run`: the run directory lives on a small tmpfs, which
is filled to the last byte as soon as a step finishes. The run must stop with one clear
message (no traceback), leave no half-written file under a committed name, and, once
space is freed, resume to exactly the manifest and output of an uninterrupted run.

A real ENOSPC needs a real small filesystem: mounting tmpfs needs root (CI containers
run as root); elsewhere the test is skipped, saying why.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from corpus import mixed_corpus
from curate.synth.http_server import CorpusServer
from e2e import FAST_SETTINGS, corpus_rows, read_manifest, write_input
from faults import tar_names

# No model stage: the faults hit writes (download shards, scored parts), which don't depend on one.
# download.write_retry_pause=0: img2dataset's reader still retries writing its shard lists on the
# full disk (fill_after=prepare) all 100 times, without its ~3 minutes of pauses.
SETTINGS = FAST_SETTINGS + ["download.shard_size=6", "download.threads=4", "output.samples_per_shard=3",
                            "ray.num_cpus=2", "download.write_retry_pause=0"]


def _fill(mount: Path) -> Path:
    """Write zeros until the filesystem refuses: ENOSPC from here on."""
    filler = mount / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    return filler


def _run(input_path, out, env, fill_after=None, mount=None):
    args = ["curate", "run", str(Path(__file__).with_name("minimal.yaml")), "--out", out,
            "--set", f"input.path={input_path}"] + [a for s in SETTINGS for a in ("--set", s)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    filled = False
    while fill_after and proc.poll() is None and not filled:
        if os.path.exists(f"{out}/_done/{fill_after}"):
            _fill(mount)
            filled = True
        time.sleep(0.02)
    stdout, stderr = proc.communicate(timeout=600)
    return proc.returncode, stdout, stderr, filled


def _assert_nothing_half_written_is_committed(run: str) -> None:
    """Every file under a committed name reads back whole."""
    stats = glob.glob(f"{run}/downloaded/*_stats.json")
    for marker in stats:
        shard = marker[: -len("_stats.json")] + ".parquet"
        assert pq.read_table(shard).num_rows == json.loads(Path(marker).read_text())["count"]
    for path in glob.glob(f"{run}/scored/*/*.parquet") + glob.glob(f"{run}/manifest/*.parquet"):
        assert ".tmp-" in path or pq.read_table(path) is not None
    if os.path.exists(f"{run}/output/index.json"):
        pytest.fail("the output index was written although the run stopped")
    tar_names(run)  # every committed tar opens and lists


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diskfull")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    with CorpusServer({c.path: c.route for c in mixed_corpus() if c.route}) as server:
        rows = corpus_rows(server)
        write_input(rows, tmp / "in.parquet")
        code, out, err, _ = _run(tmp / "in.parquet", str(tmp / "baseline"), env)
        assert code == 0, err[-3000:]
        yield rows, tmp / "in.parquet", str(tmp / "baseline"), env


@pytest.mark.parametrize("fill_after", ["prepare", "download"])
def test_disk_full_stops_cleanly_and_resumes_to_the_same_result(small_disk, baseline, fill_after):
    rows, input_path, want_root, env = baseline
    run = str(small_disk / "run")
    code, out, err, filled = _run(input_path, run, env, fill_after=fill_after, mount=small_disk)
    assert filled, f"the run ended before {fill_after} finished: nothing was tested"
    assert code == 2, (out[-2000:], err[-3000:])
    assert "No space left on device" in err and "run the same command again to resume" in err
    # curate itself prints no traceback; lines from Ray workers ("(ray_download pid=...)") are
    # img2dataset logging its own failed shard write, which is the cause the message points to
    driver_lines = [line for line in err.splitlines() if "pid=" not in line]
    assert not any("Traceback" in line for line in driver_lines), err[-3000:]
    assert not glob.glob(f"{run}/manifest/*.parquet")
    _assert_nothing_half_written_is_committed(run)

    (small_disk / "filler").unlink()  # space is back
    code, out, err, _ = _run(input_path, run, env)
    assert code == 0, err[-3000:]
    assert read_manifest(run).equals(read_manifest(want_root))
    want_index = json.loads(Path(want_root, "output", "index.json").read_text())
    assert json.loads(Path(run, "output", "index.json").read_text())["shards"] == want_index["shards"]
    for shard in want_index["shards"]:
        assert pq.read_table(f"{run}/output/{shard['name']}.parquet").equals(
            pq.read_table(f"{want_root}/output/{shard['name']}.parquet"))
