"""Input and run directory in an S3 bucket: a real S3-compatible server (moto's standalone
server) on 127.0.0.1, credentials and endpoint from the standard AWS environment variables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq

from corpus import mixed_corpus
from curate.synth.http_server import CorpusServer
from e2e import FAST_SETTINGS, corpus_rows
from s3_server import s3_server  # noqa: F401 - the fixture


def test_run_and_query_with_input_and_output_in_a_bucket(s3_server, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)  # not an instance cached for another test's server
    fs.mkdir("curate-test")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    with CorpusServer({c.path: c.route for c in mixed_corpus() if c.route}) as server:
        rows = corpus_rows(server)
        with fs.open("curate-test/in/pairs.parquet", "wb") as handle:
            pq.write_table(pa.Table.from_pylist([{"url": r["url"], "caption": r["caption"]} for r in rows]), handle)
        args = ["curate", "run", "--out", "s3://curate-test/runs/r1", "--set", "input.path=s3://curate-test/in/",
                "--set", "input.format=parquet", "--set", "output.path=unused"]
        args += [a for s in FAST_SETTINGS for a in ("--set", s)]
        config = tmp_path / "c.yaml"
        config.write_text("input: {path: x.parquet}\noutput: {path: x}\n")
        out = subprocess.run(args[:2] + [str(config)] + args[2:], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "testing-secret" not in out.stdout + out.stderr  # credentials are never logged

    index = json.loads(fs.cat_file("curate-test/runs/r1/output/index.json"))
    assert index["total"] == 5 and fs.exists(f"curate-test/runs/r1/output/{index['shards'][0]['name']}.tar")
    manifest = pq.ParquetDataset("curate-test/runs/r1/manifest", filesystem=fs).read()
    assert manifest.num_rows == len(rows) and len(set(manifest.column("sample_id").to_pylist())) == len(rows)

    query = subprocess.run(["curate", "query", "s3://curate-test/runs/r1", "SELECT count(*) AS n FROM manifest", "--format", "json"],
                           capture_output=True, text=True, env=env, timeout=120)
    assert query.returncode == 0, query.stderr
    assert json.loads(query.stdout) == [{"n": len(rows)}]


def _curate_run(config, out: str, env: dict, settings: list[str]) -> subprocess.Popen:
    args = ["curate", "run", str(config), "--out", out] + [a for s in settings for a in ("--set", s)]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def test_bucket_run_killed_mid_download_resumes_to_the_same_result(s3_server, tmp_path):
    """Endpoint from the config (storage.endpoint_url), not the environment; SIGKILL during
    the download into the bucket; the same command again gives the uninterrupted result."""
    import signal

    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)  # not an instance cached for another test's server
    fs.mkdir("curate-resume")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    endpoint = env.pop("AWS_ENDPOINT_URL")
    with CorpusServer({c.path: c.route for c in mixed_corpus() if c.route}) as server:
        rows = corpus_rows(server)
        with fs.open("curate-resume/in/pairs.parquet", "wb") as handle:
            pq.write_table(pa.Table.from_pylist([{"url": r["url"], "caption": r["caption"]} for r in rows]), handle)
        config = tmp_path / "c.yaml"
        config.write_text("input: {path: s3://curate-resume/in/pairs.parquet}\noutput: {path: unused}\n")
        settings = FAST_SETTINGS + [f"storage.endpoint_url={endpoint}", "download.shard_size=5", "download.threads=2",
                                    "report.enabled=false"]
        baseline = _curate_run(config, "s3://curate-resume/runs/base", env, settings)
        assert baseline.wait(timeout=600) == 0, baseline.stdout.read().decode()[-3000:]

        killed = _curate_run(config, "s3://curate-resume/runs/r", env, settings)
        deadline = time.time() + 600
        while killed.poll() is None and time.time() < deadline:
            fs.invalidate_cache()
            if len(fs.glob("curate-resume/runs/r/downloaded/*_stats.json")) >= 2:
                os.killpg(killed.pid, signal.SIGKILL)
                break
            time.sleep(0.1)
        killed.wait()
        assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed mid-download"
        again = _curate_run(config, "s3://curate-resume/runs/r", env, settings)
        output = again.stdout.read().decode()
        assert again.wait(timeout=600) == 0, output[-3000:]
    assert "prepare: already done, skipped" in output  # it resumed, it did not start over
    fs.invalidate_cache()
    read = lambda run: pq.ParquetDataset(f"curate-resume/runs/{run}/manifest", filesystem=fs).read().sort_by("sample_id")  # noqa: E731
    assert read("r").equals(read("base")) and read("r").num_rows == len(rows)
    index = {run: json.loads(fs.cat_file(f"curate-resume/runs/{run}/output/index.json")) for run in ("base", "r")}
    assert index["r"]["shards"] == index["base"]["shards"] and index["r"]["total"] > 0


def test_documents_are_read_from_a_bucket_in_both_layouts(s3_server, tmp_path):
    """input.kind: documents reads jsonl (OBELICS) and Parquet (MMC4) from s3:// like local files."""
    import s3fs

    from curate.core.config import load_config
    from curate.flow.documents_input import read_documents_file
    from curate.core.inputs import resolve_input_files

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("curate-docs")
    obelics = {"texts": [None, "a red circle", "more"], "images": ["http://h/a.jpg", None, None], "page": "p0"}
    fs.pipe("curate-docs/obelics/part.jsonl", (json.dumps(obelics) + "\n").encode())
    mmc4 = pa.Table.from_pylist([{"text_list": ["s0", "s1"], "image_info": [{"raw_url": "http://h/b.jpg", "matched_text_index": 1}]}])
    with fs.open("curate-docs/mmc4/part.parquet", "wb") as handle:
        pq.write_table(mmc4, handle)
    for path, layout, want in (("s3://curate-docs/obelics/", "obelics", [("http://h/a.jpg", 0)]),
                               ("s3://curate-docs/mmc4/", "mmc4", [("http://h/b.jpg", 1)])):
        fmt = "jsonl" if layout == "obelics" else "parquet"
        cfg = load_config(None, [f"input.path={path}", f"input.format={fmt}", "input.kind=documents",
                                 f"input.documents.layout={layout}", "clip.model=curate:tiny-clip"], out=str(tmp_path))
        [item] = resolve_input_files(cfg.input)
        docs, images = read_documents_file(item, cfg.input)
        assert docs.column("doc_error").to_pylist() == [None]
        assert list(zip(images.column("url").to_pylist(), images.column("original_slot").to_pylist())) == want
