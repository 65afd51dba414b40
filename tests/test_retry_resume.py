"""A `curate retry` killed with SIGKILL while it downloads, run again: the run ends as an
uninterrupted retry of the same run ends (manifest, summary's retries, output shards)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from corpus import image_bytes
from curate.synth.http_server import CorpusServer, Route
from e2e import cli_environment, read_manifest


def _curate(args: list[str], kill_when=None) -> bool:
    proc = subprocess.Popen(["curate", *args], env=cli_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    if kill_when is None:
        output, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, output.decode()[-4000:]
        return True
    deadline = time.time() + 900
    while proc.poll() is None and time.time() < deadline:
        if kill_when():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.05)
    proc.communicate()
    return False  # it finished before the kill condition held


def _tar_members(path: str) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return sorted((m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile())


def test_a_killed_retry_resumes_to_the_uninterrupted_result(tmp_path):
    routes = {f"/ok/{i}.jpg": Route(image_bytes("JPEG", seed=50 + i)) for i in range(4)}
    # 503 at first; then slow, so that the retry's three download shards take a while
    routes.update({f"/flaky/{i}.jpg": Route(image_bytes("JPEG", seed=60 + i), fail_first=1, delay=1.0)
                   for i in range(6)})
    with CorpusServer(routes) as server:
        pq.write_table(pa.Table.from_pylist([{"url": server.url(p), "caption": f"a photo of the thing at {p}"}
                                             for p in routes]), tmp_path / "in.parquet")
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({
            "input": {"path": str(tmp_path / "in.parquet")},
            "output": {"path": "unused", "samples_per_shard": 3},
            "download": {"allow_private_hosts": True, "image_size": 64, "threads": 1, "shard_size": 2},
            "filters": {"min_side": 32}, "report": {"enabled": False}, "ray": {"num_cpus": 2},
        }))
        run, killed = tmp_path / "run", tmp_path / "killed"
        _curate(["run", str(config), "--out", str(run)])
        shutil.copytree(run, killed)  # the same finished run, twice
        _curate(["retry", str(run)])
        stats = lambda: len(glob.glob(f"{killed}/downloaded/retry-01/*_stats.json")) >= 1  # noqa: E731
        assert _curate(["retry", str(killed)], kill_when=stats), "the retry finished before the kill"
        assert not (killed / "_done" / "retry-01").exists()
        _curate(["retry", str(killed)])

    want, got = read_manifest(str(run)), read_manifest(str(killed))
    assert got.equals(want)
    assert got.filter(pa.compute.equal(got.column("attempts"), 2)).num_rows == 6
    assert set(got.column("status").to_pylist()) == {"kept"}
    summary_want = json.loads((run / "summary.json").read_text())["retries"]
    assert json.loads((killed / "summary.json").read_text())["retries"] == summary_want
    index = json.loads((run / "output" / "index.json").read_text())
    assert json.loads((killed / "output" / "index.json").read_text())["shards"] == index["shards"]
    for shard in index["shards"]:
        name = shard["name"]
        assert _tar_members(f"{killed}/output/{name}.tar") == _tar_members(f"{run}/output/{name}.tar")
        assert pq.read_table(f"{killed}/output/{name}.parquet").equals(pq.read_table(f"{run}/output/{name}.parquet"))
