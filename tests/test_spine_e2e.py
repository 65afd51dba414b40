"""`curate run` end to end on a real HTTP server with real Ray: the accounting invariant,
every failure kind, output shards read back with the libraries a trainer uses, and query."""

from __future__ import annotations

import io
import json
import subprocess

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from corpus import blocked_rows, mixed_corpus
from curate.core.config import load_config
from curate.pipeline.runner import run_pipeline
from curate.synth.http_server import CorpusServer
from e2e import FAST_SETTINGS, corpus_rows, read_manifest, write_input


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("spine")
    with CorpusServer({c.path: c.route for c in mixed_corpus() if c.route}) as server:
        rows = corpus_rows(server)
        write_input(rows, tmp / "input.parquet")
        overrides = [f"input.path={tmp / 'input.parquet'}", "download.shard_size=7", "output.samples_per_shard=2"]
        cfg = load_config(None, FAST_SETTINGS + overrides, out=str(tmp / "run"))
        cfg.download.allow_private_hosts = True
        result = run_pipeline(cfg)
    return rows, result, str(tmp / "run")


def test_every_input_row_once_with_expected_status_and_reason(finished_run):
    rows, _, run_root = finished_run
    manifest = read_manifest(run_root).to_pylist()
    assert len(manifest) == len(rows)
    assert len({m["sample_id"] for m in manifest}) == len(rows)
    for want, got in zip(rows, manifest):
        assert got["url"] == (want["url"].strip() if want["url"] else want["url"]) or want["want_status"] == "blocked"
        assert (got["status"], (got["reason"] or ":").split(":")[0] or None) == (
            want["want_status"], want["want_reason"]
        ), got


def test_private_hosts_blocked_by_default_and_still_in_manifest(tmp_path, ray_session):
    """With the default config nothing below is fetched (no traffic leaves the precheck)."""
    rows = blocked_rows() + [{"url": "http://127.0.0.1:9/a.jpg", "caption": "local", "reason": "private_host"}]
    write_input([{"url": r["url"], "caption": r["caption"]} for r in rows], tmp_path / "in.parquet")
    cfg = load_config(None, [f"input.path={tmp_path / 'in.parquet'}"], out=str(tmp_path / "run"))
    result = run_pipeline(cfg)
    manifest = read_manifest(str(tmp_path / "run")).to_pylist()
    assert [m["status"] for m in manifest] == ["blocked"] * len(rows)
    assert [m["reason"].split(":")[0] for m in manifest] == [r["reason"] for r in rows]
    assert result.index["total"] == 0 and result.summary["statuses"] == {"blocked": len(rows)}


def test_manifest_records_sizes_hash_and_shard_for_kept(finished_run):
    _, _, run_root = finished_run
    kept = [m for m in read_manifest(run_root).to_pylist() if m["status"] == "kept"]
    assert len(kept) == sum(1 for c in mixed_corpus() if c.status == "kept")
    for m in kept:
        assert m["width"] == 64 and m["height"] == 64  # border resize to download.image_size
        assert m["original_width"] == 96 and m["original_height"] == 80
        assert len(m["sha256"]) == 64 and m["output_shard"] is not None and m["caption_chosen"]


def test_webdataset_shards_hold_every_kept_sample_once(finished_run):
    _, result, run_root = finished_run
    kept = {m["sample_id"]: m for m in read_manifest(run_root).to_pylist() if m["status"] == "kept"}
    tars = [f"{run_root}/output/{s['name']}.tar" for s in result.index["shards"]]
    seen = []
    for sample in wds.WebDataset(tars, shardshuffle=False).decode("pil"):
        seen.append(sample["__key__"])
        meta = sample["json"]
        assert meta["sample_id"] == sample["__key__"]
        assert sample["txt"] == kept[sample["__key__"]]["caption_chosen"]
        assert isinstance(sample["jpg"], Image.Image) and sample["jpg"].size == (64, 64)
    assert sorted(seen) == sorted(kept) and len(seen) == len(set(seen))
    assert all(s["count"] <= 2 for s in result.index["shards"])
    assert result.index["total"] == len(kept)


def test_parquet_shards_hold_every_kept_sample_once(finished_run):
    _, result, run_root = finished_run
    kept = {m["sample_id"] for m in read_manifest(run_root).to_pylist() if m["status"] == "kept"}
    files = [f"{run_root}/output/{s['name']}.parquet" for s in result.index["shards"]]
    table = pq.ParquetDataset(files).read()
    ids = table.column("sample_id").to_pylist()
    assert sorted(ids) == sorted(kept) and len(ids) == len(set(ids))
    for image_bytes in table.column("jpg").to_pylist():
        Image.open(io.BytesIO(image_bytes)).verify()


def test_summary_counts_match_manifest(finished_run):
    rows, result, _ = finished_run
    assert result.summary["rows_in"] == len(rows)
    assert sum(result.summary["statuses"].values()) == len(rows)
    assert result.summary["kept"] == result.index["total"]


def test_query_cli_json_and_csv(finished_run, cli_env):
    rows, _, run_root = finished_run
    sql = "SELECT status, count(*) AS n FROM manifest GROUP BY status ORDER BY status"
    out = subprocess.run(["curate", "query", run_root, sql, "--format", "json"], capture_output=True, text=True, env=cli_env, check=True)
    counts = {r["status"]: r["n"] for r in json.loads(out.stdout)}
    assert sum(counts.values()) == len(rows) and counts["kept"] == 5
    out = subprocess.run(["curate", "query", run_root, sql, "--format", "csv"], capture_output=True, text=True, env=cli_env, check=True)
    assert out.stdout.splitlines()[0] == "status,n"
    bad = subprocess.run(["curate", "query", run_root, "SELECT nope FROM manifest"], capture_output=True, text=True, env=cli_env)
    assert bad.returncode == 2 and "query failed" in bad.stderr


def test_manifest_out_of_memory_stops_cleanly_and_resumes_with_a_larger_limit(tmp_path, ray_session, finished_run):
    """DuckDB running out of manifest.memory_limit: a clear stop naming the key, nothing of the
    manifest written; the same run resumes with a larger limit (a resource key, not a result
    key) and equals an uninterrupted run."""
    from curate.pipeline.runner import RunStopped

    _, _, want_root = finished_run
    with CorpusServer({c.path: c.route for c in mixed_corpus() if c.route}) as server:
        write_input(corpus_rows(server), tmp_path / "input.parquet")
        overrides = [f"input.path={tmp_path / 'input.parquet'}", "download.shard_size=7", "output.samples_per_shard=2"]

        def run(*more):
            cfg = load_config(None, FAST_SETTINGS + overrides + list(more), out=str(tmp_path / "run"))
            cfg.download.allow_private_hosts = True
            return run_pipeline(cfg)

        with pytest.raises(RunStopped, match=r"needs more memory than manifest.memory_limit \(1MB\).*"
                                             r"--set manifest.memory_limit=4GB\) to resume"):
            run("manifest.memory_limit=1MB")
        assert not list((tmp_path / "run" / "manifest").glob("*.parquet"))
        run()  # the default limit
    got, want = read_manifest(str(tmp_path / "run")), read_manifest(want_root)
    # Same rows and verdicts; URLs differ only by the server's port.
    assert got.drop_columns(["url", "input_file"]).equals(want.drop_columns(["url", "input_file"]))
