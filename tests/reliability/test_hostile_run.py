"""One run over a demo-like corpus plus the hostile corpus, through download (Ray workers),
inspect, CLIP (tiny model, an actor pool), dedupe, manifest and output, with the CLIP actor
SIGKILLed mid-run. Every hostile row gets its exact (status, reason); the run finishes;
every input row is accounted for once; no request reaches the canary on 127.0.0.2."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.core.config import load_config
from curate.pipeline.runner import run_pipeline
from curate.synth.corpus import make_corpus
from curate.synth.http_server import CorpusServer
from e2e import FAST_SETTINGS
from faults import KillOnce, assert_accounting, scored_parts, tar_names
from hostile import CANARY_HOST, StreamServer, add_redirects_to_canary, hostile_rows, hostile_settings, routes

DEMO_ROWS = 120
CLIP = ["clip.model=curate:tiny-clip", "clip.num_cpus=0.5", "clip.threads=1", "clip.batch_size=4",
        "dedupe.threshold=0.99", "dedupe.keep=first"]  # copies of one image tie on score: first wins


def _input_table(rows, demo, base_url: str) -> pa.Table:
    """Binary columns, so a caption that is not UTF-8 reaches the reader as it came."""
    def cell(value):
        return value.encode("utf-8") if isinstance(value, str) else value

    urls = [cell(r.url) for r in rows] + [cell(base_url + r["path"]) for r in demo.rows]
    captions = [cell(r.caption) for r in rows] + [cell(r["caption"]) for r in demo.rows]
    return pa.table({"url": pa.array(urls, pa.binary()), "caption": pa.array(captions, pa.binary())})


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("hostile")
    demo = make_corpus(DEMO_ROWS, seed=3)
    canary, streams = StreamServer(CANARY_HOST), StreamServer()
    served = {**routes(), **demo.routes}
    add_redirects_to_canary(served, canary)
    run_root = str(tmp / "run")
    with CorpusServer(served) as files:
        rows = hostile_rows(files, streams, canary)
        pq.write_table(_input_table(rows, demo, files.base_url), tmp / "in.parquet")
        overrides = FAST_SETTINGS + hostile_settings() + CLIP + [
            f"input.path={tmp / 'in.parquet'}", "download.shard_size=30", "output.samples_per_shard=16"]
        cfg = load_config(None, overrides, out=run_root)
        # The CLIP actor is killed while it runs a batch (its title ends in ".submit"),
        # before any scored batch is committed: the batch must be re-run, not lost.
        killer = KillOnce("ClipStage", ").submit", ready=lambda: scored_parts(run_root) == 0)
        killer.start()
        try:
            result = run_pipeline(cfg)
        finally:
            killer.stop()
    streams.close()
    canary.close()
    return rows, len(rows) + DEMO_ROWS, run_root, result, killer, canary


def test_every_hostile_row_gets_its_exact_status_and_reason(hostile_run):
    rows, n, run_root, _, _, _ = hostile_run
    manifest = assert_accounting(n, run_root)
    first = manifest[0]["sample_id"]
    got = [(m["status"], m["reason"]) for m in manifest[: len(rows)]]
    want = [(r.status, r.reason.format(first=first) if r.reason else None) for r in rows]
    assert got == want


def test_nothing_reached_the_private_canary(hostile_run):
    *_, canary = hostile_run
    assert canary.hits == []


def test_clip_actor_killed_mid_run_and_run_finished_with_every_row_once(hostile_run):
    _, n, run_root, result, killer, _ = hostile_run
    assert killer.killed, "the CLIP actor was never killed mid-batch: the test proved nothing"
    manifest = assert_accounting(n, run_root)
    assert result.summary["rows_in"] == n
    scored = [m for m in manifest if m["status"] == "kept" or (m["reason"] or "").startswith(("duplicate_of", "caption"))]
    assert all(m["clip_score"] is not None for m in scored), "a row lost its CLIP score to the kill"


def test_input_text_never_shapes_output_paths(hostile_run):
    rows, _, run_root, result, _, _ = hostile_run
    expected = {"index.json", "sizes.json", "_manifest_digest"} | {f for s in result.index["shards"] for f in s["files"]}
    assert set(os.listdir(f"{run_root}/output")) == expected
    keys = {m["sample_id"].replace("-", "") for m in assert_accounting(len(rows) + DEMO_ROWS, run_root)}
    assert all(name.split(".", 1)[0] in keys and "/" not in name for name in tar_names(run_root))
    assert not any("passwd" in p for _, _, files in os.walk(run_root) for p in files)
