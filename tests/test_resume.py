"""Kill `curate run` with SIGKILL mid-run, run the same command again: the final manifest and
output equal those of an uninterrupted run."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import yaml

from corpus import mixed_corpus
from curate.synth.http_server import CorpusServer
from e2e import FAST_SETTINGS, assert_same_decisions, corpus_rows, read_manifest, same_but_float_bits, write_input


# The tiny captioner samples its captions: a resumed run must draw the same ones (per-caption
# seeds), so the manifests compare equal with CapFilt deciding.
SETTINGS = ["download.shard_size=5", "download.threads=2", "caption.model=curate:tiny-blip-captioner",
            "caption.batch_size=4", "clip.model=curate:tiny-clip", "clip.batch_size=4", "dedupe.threshold=0.99"]


def _config(tmp_path, input_path) -> str:
    cfg = {"input": {"path": str(input_path)}, "output": {"path": "unused", "samples_per_shard": 4},
           "ray": {"num_cpus": 2}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _run(config, out, env, kill_when=None):
    args = ["curate", "run", config, "--out", out] + [a for s in FAST_SETTINGS + SETTINGS for a in ("--set", s)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    if kill_when is None:
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output.decode()[-3000:]
        return True
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        if kill_when(out):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.05)
    proc.communicate()
    return False  # finished before the kill condition held


def _tar_members(path):
    """(name, bytes) of each member; a .json record parsed, to compare its scores within 1e-5."""
    import tarfile

    with tarfile.open(path) as tar:
        members = sorted((m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile())
    return [(name, json.loads(data) if name.endswith(".json") else data) for name, data in members]


KILL_POINTS = {
    "during_download": lambda out: len(glob.glob(f"{out}/downloaded/*_stats.json")) >= 3,
    # the score step runs the captioner (and CLIP): killed once its first batch is committed
    "during_captioning": lambda out: len(glob.glob(f"{out}/scored/*/*.parquet")) >= 1,
}


def _copies(rows: list[dict], k: int) -> list[dict]:
    """The corpus again, its served URLs with a query (``?copy=k``, k > 0): other URLs, each fetched."""
    return [dict(r, url=f"{r['url']}?copy={k}") if k and (r["url"] or "").startswith("http://127.0.0.1:") else r
            for r in rows]


@pytest.fixture(scope="module")
def served_baseline(tmp_path_factory):
    """The corpus served for the whole module, and one uninterrupted run to compare against."""
    tmp = tmp_path_factory.mktemp("resume")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    with CorpusServer({c.path: c.route for c in mixed_corpus() if c.route}, latency=0.05) as server:
        # 3x the corpus under other URLs: enough shards to kill in the middle; and rows
        # repeating some URLs under other captions (one sample each, fetched once).
        rows = [r for k in range(3) for r in _copies(corpus_rows(server), k)]
        rows += [dict(r, caption=f"another caption of picture {i}") for i, r in enumerate(corpus_rows(server)[:6])]
        write_input(rows, tmp / "in.parquet")
        config = _config(tmp, tmp / "in.parquet")
        baseline = str(tmp / "baseline")
        _run(config, baseline, env)
        yield rows, config, baseline, env


@pytest.mark.parametrize("kill_point", sorted(KILL_POINTS))
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, served_baseline, kill_point):
    rows, config, baseline, env = served_baseline
    resumed = str(tmp_path / "resumed")
    killed = _run(config, resumed, env, kill_when=KILL_POINTS[kill_point])
    assert killed, "the run finished before the kill point; the test proved nothing"
    assert not glob.glob(f"{resumed}/manifest/*.parquet"), "killed run must not have a manifest yet"
    _run(config, resumed, env)

    want, got = read_manifest(baseline), read_manifest(resumed)
    assert got.num_rows == len(rows) and got.column("sample_id").to_pylist() == want.column("sample_id").to_pylist()
    assert_same_decisions(got, want)  # CapFilt's choices equal; re-scored batches' floats within 1e-5
    index_want = json.loads(open(f"{baseline}/output/index.json").read())
    index_got = json.loads(open(f"{resumed}/output/index.json").read())
    assert index_got["shards"] == index_want["shards"] and index_got["total"] > 0
    for shard in index_want["shards"]:
        assert same_but_float_bits(_tar_members(f"{resumed}/output/{shard['name']}.tar"),
                                   _tar_members(f"{baseline}/output/{shard['name']}.tar"))
        assert_same_decisions(pq.read_table(f"{resumed}/output/{shard['name']}.parquet"),
                              pq.read_table(f"{baseline}/output/{shard['name']}.parquet"))
