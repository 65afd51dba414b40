"""`curate run --address` on a real 2-node Ray cluster started on this machine: the worker node
runs in its own mount namespace with a private /tmp, so it can only reach the run through the
bucket (a real S3-compatible server on 127.0.0.1). The run equals a single-node run; a worker
node killed in the middle of the score step costs a resume, not the result; a local run
directory on the cluster is refused before anything is written."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster import Cluster
from corpus import image_bytes, mixed_corpus
from curate.synth.http_server import CorpusServer, Route
from e2e import FAST_SETTINGS, assert_same_decisions, corpus_rows
from s3_server import s3_server  # noqa: F401 - the fixture

BUCKET = "curate-cluster"
SETTINGS = FAST_SETTINGS + ["clip.model=curate:tiny-clip", "clip.num_cpus=0.5", "clip.batch_size=4",
                            "download.shard_size=6", "dedupe.threshold=0.99", "output.samples_per_shard=4"]


def _env() -> dict:
    return dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
                RAY_AUTH_MODE="disabled")


def _curate(config, out: str, settings: list[str], address: str | None = None) -> subprocess.Popen:
    args = ["curate", "run", str(config), "--out", out] + [a for s in settings for a in ("--set", s)]
    args += ["--address", address] if address else []
    return subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _finish(process: subprocess.Popen, timeout: float = 900) -> str:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-3000:]
    return out


def _manifest(fs, run: str) -> pa.Table:
    return pq.ParquetDataset(f"{BUCKET}/{run}/manifest", filesystem=fs).read().sort_by("sample_id")


@pytest.fixture(scope="module")
def corpus(s3_server, tmp_path_factory):
    """The mixed corpus plus copies of one picture, served on 127.0.0.1; its input in the bucket."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(BUCKET)
    copy = image_bytes("PNG", seed=5)
    routes = {c.path: c.route for c in mixed_corpus() if c.route}
    routes.update({f"/copy{i}.png": Route(copy, content_type="image/png") for i in range(3)})
    root = tmp_path_factory.mktemp("cluster")
    config = root / "c.yaml"
    config.write_text(f"input: {{path: s3://{BUCKET}/in/, format: parquet}}\noutput: {{path: unused}}\n")
    with CorpusServer(routes) as server:
        rows = corpus_rows(server) + [{"url": server.url(f"/copy{i}.png"), "caption": "the same picture again"}
                                      for i in range(3)]
        table = pa.Table.from_pylist([{"url": r["url"], "caption": r["caption"]} for r in rows])
        for i, part in enumerate((table.slice(0, 12), table.slice(12))):  # two input files
            with fs.open(f"{BUCKET}/in/part-{i}.parquet", "wb") as handle:
                pq.write_table(part, handle)
        single = _finish(_curate(config, f"s3://{BUCKET}/single", SETTINGS))
        assert "kept" in single
        yield fs, config, rows, _manifest(fs, "single")


def test_two_nodes_a_bucket_and_the_result_of_one_node(corpus, tmp_path):
    fs, config, rows, single = corpus
    with Cluster(head_cpus=1) as cluster:
        worker = cluster.add_worker(cpus=2)
        before = set(cluster.worker_logs(worker))
        _finish(_curate(config, f"s3://{BUCKET}/two", SETTINGS + ["manifest.partition_rows=7"], cluster.address))
        ran_there = set(cluster.worker_logs(worker)) - before
        assert ran_there, "the worker node ran none of the run's tasks"

        # A local run directory is another folder on every node: refused, nothing written.
        local = _curate(config, str(tmp_path / "local"), SETTINGS, cluster.address)
        out, _ = local.communicate(timeout=600)
        assert local.returncode == 2 and "a local folder, but the Ray cluster has 2 nodes" in out, out[-2000:]
        assert not (tmp_path / "local").exists()

    two = _manifest(fs, "two")
    assert two.num_rows == len(rows)
    assert_same_decisions(two, single)
    assert _index(fs, "two") == _index(fs, "single")
    for name in fs.ls(f"{BUCKET}/single/output"):
        if name.endswith(".parquet"):  # the same samples, images and captions in the same shards
            other = name.replace("/single/", "/two/")
            assert_same_decisions(pq.read_table(other, filesystem=fs), pq.read_table(name, filesystem=fs))


def _index(fs, run: str) -> dict:
    """The output index, but for the digest of the manifest's files (other partitions, other files)."""
    import json

    index = json.loads(fs.cat_file(f"{BUCKET}/{run}/output/index.json"))
    index.pop("manifest_digest")
    return index


def test_a_worker_node_killed_while_scoring_costs_a_resume_not_the_result(corpus):
    fs, config, rows, single = corpus
    out = f"s3://{BUCKET}/killed"
    with Cluster(head_cpus=1) as cluster:
        worker = cluster.add_worker(cpus=2)
        run = _curate(config, out, SETTINGS, cluster.address)
        deadline = time.time() + 600
        while time.time() < deadline and run.poll() is None:
            if fs.exists(f"{BUCKET}/killed/scored") and fs.find(f"{BUCKET}/killed/scored"):
                break
            time.sleep(0.5)
            fs.invalidate_cache()
        assert run.poll() is None, "the run ended before the score step committed anything"
        cluster.kill(worker)
        try:
            run.communicate(timeout=900)  # Ray retries on the head node, or the run stops cleanly
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, 9)
            run.communicate()
        if run.returncode != 0:  # stopped: the same command again, on a fresh worker node, resumes
            cluster.add_worker(cpus=2)
            _finish(_curate(config, out, SETTINGS, cluster.address))
    assert_same_decisions(_manifest(fs, "killed"), single)
    assert _index(fs, "killed") == _index(fs, "single")


def test_eval_trains_on_the_private_disk_worker_from_the_bucket(corpus, tmp_path):
    """`curate eval` of the bucket run on the 2-node cluster: the selections are written to the
    bucket, a job placed on the private-disk worker copies its shards in, trains, and uploads
    its checkpoint and metrics; the evaluation set (a local folder of the driver) travels as a
    Ray object."""
    import json

    from curate.eval.evalsets import write_synthetic_sets

    fs, *_ = corpus
    sets = write_synthetic_sets(tmp_path / "sets", seed=1, per_class=2)
    micro = tmp_path / "micro-clip.json"
    micro.write_text(json.dumps({"embed_dim": 32, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32,
                                                                 "layers": 1, "head_width": 16},
                                 "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                                              "layers": 1}}))
    with Cluster(head_cpus=1) as cluster:
        worker = cluster.add_worker(cpus=2)
        before = set(cluster.worker_logs(worker))
        done = subprocess.run(
            ["curate", "eval", f"s3://{BUCKET}/single", "-s", "raw", "-s", "clip", "--seeds", "0,1",
             "--zeroshot", str(sets["shapes"]), "--model", str(micro), "--samples-seen", "16", "--batch-size", "8",
             "--warmup", "1", "--address", cluster.address],
            env=_env(), capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        assert set(cluster.worker_logs(worker)) - before, "the worker node ran none of the eval's tasks"
    for selection in ("raw", "clip"):
        for seed in (0, 1):
            job = f"{BUCKET}/single/eval/{selection}/{seed}"
            metrics = json.loads(fs.cat_file(f"{job}/metrics.json"))
            assert metrics["checkpoint"] == f"s3://{job}/checkpoint.pt" and fs.exists(f"{job}/checkpoint.pt")
            assert metrics["samples_seen"] == 16 and 0 <= metrics["metrics"]["shapes/top1"] <= 1
    results = pq.read_table(f"{BUCKET}/single/eval/results.parquet", filesystem=fs)
    assert sorted(set(results.column("selection").to_pylist())) == ["clip", "raw"]
