"""A bucket that refuses writes in the middle of a `curate run`: the run directory is in a
bucket on a real S3 server (moto, 127.0.0.1), reached through a fault-injecting reverse
proxy (``tests/s3_fault_proxy.py``) that starts answering every upload with a real S3
error at a chosen point of the run. The run must stop with one clear message (no
traceback), leave nothing under a committed name that isn't whole, and, once the bucket
takes writes again, resume to exactly the manifest and output of an uninterrupted run.

The endpoint comes from ``storage.endpoint_url`` (the proxy), so the driver and every Ray
worker (img2dataset's shard writers, the scored-part and output writers) go through the
fault; the test reads the bucket directly from moto.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from corpus import mixed_corpus
from curate.synth.http_server import CorpusServer
from e2e import FAST_SETTINGS, corpus_rows
from s3_fault_proxy import ERRORS, S3FaultProxy
from s3_server import s3_server  # noqa: F401 - the fixture

BUCKET = "curate-faults"
SETTINGS = FAST_SETTINGS + ["download.shard_size=5", "download.threads=2", "output.samples_per_shard=3",
                            "report.enabled=false", "ray.num_cpus=2"]


def _fresh_fs():
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True)  # talks to moto directly (AWS_ENDPOINT_URL)


def _run(run: str, env: dict, endpoint: str) -> tuple[int, str, str]:
    args = ["curate", "run", str(Path(__file__).with_name("minimal.yaml")), "--out", f"s3://{BUCKET}/runs/{run}",
            "--set", f"input.path=s3://{BUCKET}/in/pairs.parquet", "--set", f"storage.endpoint_url={endpoint}"]
    args += [a for s in SETTINGS for a in ("--set", s)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    return done.returncode, done.stdout, done.stderr


def _manifest(fs, run: str) -> pa.Table:
    fs.invalidate_cache()
    return pq.ParquetDataset(f"{BUCKET}/runs/{run}/manifest", filesystem=fs).read().sort_by("sample_id")


@pytest.fixture(scope="module")
def bucket(s3_server):  # noqa: F811 - the fixture imported above
    """moto behind the proxy, the mixed corpus as input in the bucket, and an uninterrupted
    run through the proxy (passing everything) to compare with."""
    fs = _fresh_fs()
    fs.mkdir(BUCKET)
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    # The endpoint comes from the config only. botocore would retry a 503 up to five times inside
    # each of s3fs's own five attempts (about 50 s per refused write here); the standard
    # AWS_MAX_ATTEMPTS=1 leaves only s3fs's retries, so a throttled run stops quickly. A 403 is
    # retried by neither.
    moto = env.pop("AWS_ENDPOINT_URL")
    env["AWS_MAX_ATTEMPTS"] = "1"
    with S3FaultProxy(int(moto.rsplit(":", 1)[1])) as proxy, \
            CorpusServer({c.path: c.route for c in mixed_corpus() if c.route}) as server:
        rows = corpus_rows(server)
        with fs.open(f"{BUCKET}/in/pairs.parquet", "wb") as handle:
            pq.write_table(pa.Table.from_pylist([{"url": r["url"], "caption": r["caption"]} for r in rows]), handle)
        code, out, err = _run("baseline", env, proxy.url)
        assert code == 0, (out[-2000:], err[-3000:])
        # the driver's and the Ray workers' writes (download shards) went through the proxy
        assert any(k.startswith(f"/{BUCKET}/runs/baseline/downloaded/") for k in proxy.forwarded_writes)
        assert not proxy.refused_writes
        yield fs, rows, proxy, env


def _tar_members(fs, run: str, name: str) -> list[tuple[str, bytes]]:
    """(name, bytes) of every member: the tar headers carry the time they were written."""
    with tarfile.open(fileobj=io.BytesIO(fs.cat_file(f"{BUCKET}/runs/{run}/output/{name}.tar"))) as tar:
        return sorted((m.name, tar.extractfile(m).read()) for m in tar.getmembers())


def _assert_nothing_half_written_is_committed(fs, run: str) -> None:
    """Every file under a committed name reads back whole; no output index."""
    root = f"{BUCKET}/runs/{run}"
    fs.invalidate_cache()
    for marker in fs.glob(f"{root}/downloaded/*_stats.json"):
        shard = marker[: -len("_stats.json")] + ".parquet"
        assert pq.read_table(shard, filesystem=fs).num_rows == json.loads(fs.cat_file(marker))["count"]
    for path in fs.glob(f"{root}/scored/*/*.parquet"):
        assert ".tmp-" in path or pq.read_table(path, filesystem=fs).num_rows > 0
    assert not fs.glob(f"{root}/manifest/*.parquet")
    assert not fs.exists(f"{root}/output/index.json"), "the output index was written although the run stopped"
    for path in fs.glob(f"{root}/output/*.tar"):
        _tar_members(fs, run, path.rsplit("/", 1)[1][: -len(".tar")])  # every committed tar opens and lists


# Where the bucket starts refusing, how, and what the message must say (a regex): the
# first write refused is the next one, which may be the commit record of what was just
# committed (RUN/_commits/..., curate.core.commits) or another shard or part:
# - "download": after the first download shard is committed (its _stats.json), while the
#   others are still being written by img2dataset in Ray workers; 403 AccessDenied.
# - "score": after the first scored part is committed, so the Ray Data tasks that commit
#   the other parts meet the fault; 503 SlowDown, persistent (every retry is throttled too).
CASES = {
    "download": (lambda key: "/downloaded/" in key and key.endswith("_stats.json"), "AccessDenied",
                 r"shards could not be written to s3://{bucket}/runs/{run}/downloaded"
                 r"|cannot write s3://{bucket}/runs/{run}/_commits/downloaded/\d+(\.parquet|_stats\.json)\.json"),
    "score": (lambda key: "/scored/" in key and "/part-" in key and ".tmp-" not in key, "SlowDown",
              r"cannot write s3://{bucket}/runs/{run}/(_commits/)?scored/\d+/part-"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bucket_refusing_writes_stops_cleanly_and_resumes_to_the_same_result(bucket, case):
    fs, rows, proxy, env = bucket
    trigger, code_name, says = CASES[case]
    run = f"refused-{case}"
    proxy.refuse_after(lambda key: key.startswith(f"/{BUCKET}/runs/{run}/") and trigger(key), code_name)
    try:
        code, out, err = _run(run, env, proxy.url)
        refused = list(proxy.refused_writes)
    finally:
        proxy.pass_through()  # the bucket takes writes again
        proxy.refused_writes.clear()
    assert refused, f"the run ended before the bucket refused a write: nothing was tested ({out[-2000:]})"
    assert code == 2, (out[-2000:], err[-3000:])
    # curate itself prints one message and no traceback; lines from Ray workers ("(... pid=...)")
    # are img2dataset logging its own failed shard write, which the message points to
    driver_lines = [line for line in err.splitlines() if "pid=" not in line]
    assert not any("Traceback" in line for line in driver_lines), err[-3000:]
    messages = [line for line in driver_lines if line.startswith("error:")]
    assert len(messages) == 1 and messages[0].startswith("error: the run stopped: "), err[-3000:]
    message = messages[0]
    assert re.search(says.format(bucket=BUCKET, run=run), message) and "run the same command again to resume" in message
    assert ERRORS[code_name][1].rstrip(".") in err  # the bucket's own answer is shown (message or worker log)
    _assert_nothing_half_written_is_committed(fs, run)

    code, out, err = _run(run, env, proxy.url)
    assert code == 0, (out[-2000:], err[-3000:])
    assert "prepare: already done, skipped" in out  # it resumed, it did not start over
    manifest = _manifest(fs, run)
    assert manifest.equals(_manifest(fs, "baseline"))
    ids = manifest.column("sample_id").to_pylist()
    assert len(ids) == len(rows) == len(set(ids))  # every input row once
    index = {r: json.loads(fs.cat_file(f"{BUCKET}/runs/{r}/output/index.json")) for r in (run, "baseline")}
    assert index[run]["shards"] == index["baseline"]["shards"] and index[run]["total"] > 0
    in_output = []
    for shard in index["baseline"]["shards"]:
        table = pq.read_table(f"{BUCKET}/runs/{run}/output/{shard['name']}.parquet", filesystem=fs)
        assert table.equals(pq.read_table(f"{BUCKET}/runs/baseline/output/{shard['name']}.parquet", filesystem=fs))
        assert _tar_members(fs, run, shard["name"]) == _tar_members(fs, "baseline", shard["name"])
        in_output += table.column("sample_id").to_pylist()
    kept = manifest.filter(pc.equal(manifest.column("status"), "kept")).column("sample_id").to_pylist()
    assert sorted(in_output) == sorted(kept)  # every kept sample in exactly one output shard
