"""Nothing on the driver grows with the rows: input parts, partitions of the decision, and
dedupe over partitioned candidates give exactly what one process over everything gives."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus import image_bytes, mixed_corpus
from curate.core.config import load_config
from curate.core.inputs import plan_input_parts, read_input_file, read_input_part, resolve_input_files
from curate.pipeline.decide import plan_partitions
from curate.pipeline.runner import run_pipeline
from curate.stages.dedupe_stage import DedupeStage
from curate.synth.http_server import CorpusServer, Route
from e2e import FAST_SETTINGS, corpus_rows, read_manifest
from stage_helpers import config


def test_a_large_parquet_file_is_read_in_parts_with_the_sample_ids_of_the_whole(tmp_path):
    rows = [{"url": f"http://example.com/{i}.jpg", "caption": f"caption number {i}"} for i in range(35)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "big.parquet", row_group_size=10)
    pq.write_table(pa.Table.from_pylist(rows[:3]), tmp_path / "small.parquet")
    cfg = config(f"input.path={tmp_path}", "input.format=parquet").input
    files = resolve_input_files(cfg)
    parts = plan_input_parts(files, cfg, rows_per_part=12)
    # big.parquet: row groups of 10 cut after 20, 40 -> (0, 1), (2, 3); small.parquet whole
    assert [(p.item.index, p.split, p.row_groups, p.first_row) for p in parts] == [
        (0, 0, (0, 1), 0), (0, 1, (2, 3), 20), (1, 0, None, 0)]
    assert len({p.name for p in parts}) == 3
    whole = read_input_file(files[0], cfg)
    assert pa.concat_tables([read_input_part(p, cfg) for p in parts[:2]]).equals(whole)


def test_partitions_follow_the_input_parts_in_sample_id_order():
    prepared = {"parts": [
        {"part": "00001-0000", "rows": 5, "download_parts": ["part-00001-0000-00000.parquet"]},
        {"part": "00000-0000", "rows": 4, "download_parts": ["part-00000-0000-00000.parquet",
                                                            "part-00000-0000-00001.parquet"]},
        {"part": "00002-0000", "rows": 3, "download_parts": []},
    ]}
    partitions = plan_partitions(prepared, partition_rows=5)
    # download shards numbered as img2dataset numbers them: in name order of the list parts
    assert [(p.parts, p.shards, p.rows) for p in partitions] == [
        (("00000-0000", "00001-0000"), ("00000", "00001", "00002"), 9), (("00002-0000",), (), 3)]
    assert [p.parts for p in plan_partitions(prepared, partition_rows=1)] == [
        ("00000-0000",), ("00001-0000",), ("00002-0000",)]


def _run(root, rows, *settings):
    root.mkdir(parents=True, exist_ok=True)
    # Row groups of 2 rows: the prepare step cuts the file into parts of partition_rows.
    pq.write_table(pa.Table.from_pylist([{"url": r["url"], "caption": r["caption"]} for r in rows]),
                   root / "in.parquet", row_group_size=2)
    cfg = load_config(None, FAST_SETTINGS + [f"input.path={root / 'in.parquet'}", *settings], out=str(root / "run"))
    result = run_pipeline(cfg)
    return read_manifest(str(root / "run")), result


def test_many_partitions_give_the_manifest_and_output_of_one(tmp_path, ray_session):
    dup = image_bytes("PNG", seed=77)
    routes = {c.path: c.route for c in mixed_corpus() if c.route}
    routes.update({"/dup1.png": Route(dup, content_type="image/png"), "/dup2.png": Route(dup, content_type="image/png")})
    with CorpusServer(routes) as server:
        rows = corpus_rows(server)
        rows += [{"url": server.url(p), "caption": "a copy of one picture"} for p in ("/dup1.png", "/dup2.png")]
        # The first row's URL again, in the last partitions: one sample with the first row
        rows += [{"url": rows[0]["url"], "caption": c} for c in ("a second caption of it", "a third caption of it")]
        one, first = _run(tmp_path / "one", rows)
        many, second = _run(tmp_path / "many", rows, "download.shard_size=2", "manifest.partition_rows=3",
                            "output.samples_per_shard=2")
    assert second.summary["statuses"] == first.summary["statuses"] and second.summary["reasons"] == first.summary["reasons"]
    drop = ["input_file", "download_shard", "download_key", "output_shard"]  # where files are, not what was decided
    assert many.drop_columns(drop).equals(one.drop_columns(drop))
    kept = [m for m in many.to_pylist() if m["status"] == "kept"]
    # shards of 2 numbered in sample_id order across the partitions, as one process numbers them
    assert [m["output_shard"] for m in kept] == [f"{i // 2:05d}" for i in range(len(kept))]
    index = json.loads((tmp_path / "many" / "run" / "output" / "index.json").read_text())
    assert [s["count"] for s in index["shards"]] == [2] * (len(kept) // 2) + [1] * (len(kept) % 2)
    assert len(list((tmp_path / "many" / "run" / "manifest").glob("*.parquet"))) > 3  # really partitioned
    duplicates = [m for m in many.to_pylist() if m["status"] == "duplicate"]
    first_id = many.column("sample_id")[0].as_py()
    assert [m["reason"] for m in duplicates[-2:]] == [f"same_url_as:{first_id}"] * 2  # merged across partitions
    assert [m["duplicate_kind"] for m in duplicates[:-2]] == ["exact"]  # found across partitions
    first = many.to_pylist()[0]
    assert [(c["text"], c["source"]) for c in first["captions"]][1:] == [
        ("a second caption of it", "alternate"), ("a third caption of it", "alternate")]


def _candidate_files(tmp_path, n_partitions: int, emb: np.ndarray, keys: list[str | None], scores: np.ndarray):
    ids = [f"{i:05d}-{0:010d}" for i in range(len(emb))]
    table = pa.table({"sample_id": ids, "exact_key": pa.array(keys, pa.string()), "score": scores,
                      "emb": pa.array(list(emb), pa.list_(pa.float32()))})
    files = {}
    for p, rows in enumerate(np.array_split(np.arange(len(ids)), n_partitions)):
        uri = str(tmp_path / f"cand-{p}.parquet")
        pq.write_table(table.take(pa.array(rows)), uri)
        files[f"{p:05d}"] = uri
    return table, files


def _found(tmp_path, stage: DedupeStage, files: dict[str, str], name: str) -> dict:
    out = lambda p: str(tmp_path / name / f"found-{p}.parquet")  # noqa: E731
    counts = stage.find_partitioned(files, str(tmp_path / name / "work"), out, lambda rows: None)
    table = pa.concat_tables([pq.read_table(out(p)) for p in files])
    assert sum(counts.values()) == table.num_rows
    return {r["sample_id"]: (r["duplicate_of"], r["duplicate_kind"]) for r in table.to_pylist()}


@pytest.mark.parametrize("method", ["auto", "clustered"])
def test_partitioned_dedupe_finds_what_one_array_finds(tmp_path, ray_session, method):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(3000, 32)).astype(np.float32)
    emb[2000:2300] = emb[:300] + 0.002 * rng.normal(size=(300, 32)).astype(np.float32)  # near copies
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    keys = [f"bytes-{i}" for i in range(3000)]
    for i in range(2900, 3000):  # exact copies of rows 1000.. (same bytes, so the same embedding)
        keys[i], emb[i] = keys[i - 1900], emb[i - 1900]
    table, files = _candidate_files(tmp_path, 5, emb, keys, rng.random(3000))
    stage = DedupeStage(config("clip.model=curate:tiny-clip", "dedupe.threshold=0.95", f"dedupe.method={method}"))
    stage.bind([], [])
    want = stage.find(table, lambda rows: None).to_pylist()
    found = _found(tmp_path, stage, files, method)
    assert found == {r["sample_id"]: (r["duplicate_of"], r["duplicate_kind"]) for r in want}
    assert len(found) == 400 and {k for _, k in found.values()} == {"exact", "embedding"}


def test_a_placeholder_copied_thousands_of_times_is_one_representative(tmp_path, ray_session):
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(5000, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    keys = [f"bytes-{i}" for i in range(5000)]
    keys[100:], emb[100:] = ["placeholder"] * 4900, emb[100]
    _, files = _candidate_files(tmp_path, 4, emb, keys, np.zeros(5000))
    stage = DedupeStage(config("clip.model=curate:tiny-clip", "dedupe.keep=first", "dedupe.method=clustered"))
    stage.bind([], [])
    found = _found(tmp_path, stage, files, "placeholder")
    reps = pq.read_table([str(p) for p in sorted((tmp_path / "placeholder" / "work" / "reps").glob("*.parquet"))])
    assert reps.num_rows == 101  # the 4,900 copies reach the near search as one row
    assert len(found) == 4899 and set(found.values()) == {("00100-0000000000", "exact")}


def test_exact_copies_scored_a_float_bit_apart_keep_the_smallest_sample_id():
    """The same image and caption score differently in the last float bits from one batching
    to another (measured on the demo: two exact copies with one caption, 0.70284867 and
    0.70284873, survived the other way round after a rebatching). The keep score is compared
    at dedupe.KEEP_DECIMALS, so the smallest sample_id survives either way."""
    import duckdb

    from curate.flow.plan import make_plan

    plan = make_plan(config("clip.model=curate:tiny-clip", "dedupe.keep=clip_score"))
    [stage] = [s for s in plan.globals if isinstance(s, DedupeStage)]
    emb = [1.0] + [0.0] * 15
    for scores in ([0.7028487324714661, 0.7028486728668213], [0.7028486728668213, 0.7028487324714661]):
        decided = pa.table({"sample_id": ["00000-0000000111", "00000-0000000207"], "pixel_sha256": ["p", "p"],
                            "sha256": ["a", "b"], "chosen_clip_score": scores,
                            "clip_image_embedding": [emb, emb], "original_width": [8, 8], "original_height": [8, 8]})
        columns = ", ".join(f"{sql} AS {name}" for name, sql in stage.candidates().items())
        candidates = duckdb.connect().execute(f"SELECT sample_id, {columns} FROM decided").arrow().read_all()
        found = stage.find(candidates, lambda rows: None).to_pylist()
        assert [(r["sample_id"], r["duplicate_of"], r["duplicate_kind"]) for r in found] == [
            ("00000-0000000207", "00000-0000000111", "exact")]
