"""Output shards are streamed chunk by chunk (curate.pipeline.output): the files must hold
every row in sample_id order with its own image, one type per column across chunks, and
nothing may appear under a final name when a shard fails half-way (disk full, a missing
image)."""

from __future__ import annotations

import json
import os
import random

import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from curate.core import commits, storage
from curate.flow import pairs, shards
from curate.flow.pairs import PairsKind
from stage_helpers import config
from curate.schemas.columns import CAPTION_STRUCT


def _image(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)  # write_shard copies bytes; it never decodes them


def _downloaded(tmp_path, shards: int, per_shard: int, image_bytes: int) -> tuple[str, dict[str, tuple[str, bytes]]]:
    """Download shards in img2dataset's layout (the columns write_shard reads), rows shuffled
    inside each shard as img2dataset's threads finish them; sample_id -> (shard, bytes)."""
    rng = random.Random(0)
    where: dict[str, tuple[str, bytes]] = {}
    folder = tmp_path / "downloaded"
    folder.mkdir()
    for s in range(shards):
        name = f"{s:05d}"
        ids = [f"00000-{s * per_shard + i:010d}" for i in range(per_shard)]
        images = [_image(rng, image_bytes) for _ in ids]
        where.update({i: (name, b) for i, b in zip(ids, images)})
        order = list(range(per_shard))
        rng.shuffle(order)
        pq.write_table(pa.table({"sample_id": [ids[i] for i in order], "jpg": [images[i] for i in order]}),
                       folder / f"{name}.parquet")
    return str(folder), where


def _manifest_rows(where: dict[str, tuple[str, bytes]], every: int = 2) -> pa.Table:
    """Kept manifest rows (every ``every``-th sample), in sample_id order. The first rows have
    no captions list and a NULL score, so a chunk alone would infer other types."""
    ids = sorted(where)[::every]
    captions, scores = [], []
    for n, _ in enumerate(ids):
        if n < 5:
            captions.append(None)
            scores.append(None)
            continue
        captions.append([
            {"text": f"caption ünïcode {n}", "source": "synthetic", "clip_score": 0.5, "itm_prob": 0.9,
             "itm_cosine": 0.4, "kept": True, "reason": None},
            {"text": f"dropped {n}", "source": "original", "clip_score": 0.1, "itm_prob": 0.1, "itm_cosine": 0.1,
             "kept": False, "reason": "itm_prob_below:0.5"},
        ])
        scores.append(0.25 + n / 1000)
    return pa.table({
        "sample_id": pa.array(ids, pa.string()),
        "url": pa.array([f"http://127.0.0.1/{i}.jpg" for i in ids], pa.string()),
        "caption": pa.array([None if n % 3 == 0 else f"alt {n}" for n in range(len(ids))], pa.string()),
        "caption_chosen": pa.array([f"caption ünïcode {n}" for n in range(len(ids))], pa.string()),
        "caption_source": pa.array(["original" if n < 5 else "synthetic" for n in range(len(ids))], pa.string()),
        "original_caption_reason": pa.array([None if n < 5 else "itm_prob_below:0.5" for n in range(len(ids))],
                                            pa.string()),
        "captions": pa.array(captions, pa.list_(CAPTION_STRUCT)),
        "clip_score": pa.array(scores, pa.float32()),
        "status": pa.array(["kept"] * len(ids), pa.string()),
        "reason": pa.array([None] * len(ids), pa.string()),
        "download_shard": pa.array([where[i][0] for i in ids], pa.string()),
        "download_key": pa.array([i[-4:] for i in ids], pa.string()),
        "output_shard": pa.array(["00000"] * len(ids), pa.string()),
    })


PAIRS = PairsKind(config("output.formats=[webdataset, parquet]"))


def test_a_streamed_shard_holds_every_row_in_order_in_both_formats(tmp_path, monkeypatch):
    monkeypatch.setattr(pairs, "CHUNK_ROWS", 7)  # many chunks from a small shard
    downloaded, where = _downloaded(tmp_path, shards=3, per_shard=40, image_bytes=300)
    rows = _manifest_rows(where)
    out = str(tmp_path / "out")
    read = []
    monkeypatch.setattr(shards.ShardImages, "_read", _counting(shards.ShardImages._read, read))

    assert PAIRS.write_shard(rows, "00000", out, downloaded) == rows.num_rows

    assert read == ["00000", "00001", "00002"]  # each download shard read once, in order
    files = ["00000.parquet", "00000.tar", "00000_stats.json"]
    assert sorted(os.listdir(out)) == files + ["_commits"]
    assert all(commits.problem(f"{out}/{name}") is None for name in files)  # each committed with its record
    ids = rows.column("sample_id").to_pylist()
    samples = list(wds.WebDataset(f"{out}/00000.tar", shardshuffle=False))
    assert [s["__key__"] for s in samples] == [i.replace("-", "") for i in ids]  # digits, as img2dataset's
    for n, sample in enumerate(samples):
        assert sample["jpg"] == where[ids[n]][1]
        record = json.loads(sample["json"])
        assert record["sample_id"] == ids[n] and record["key"] == sample["__key__"]
        assert sample["txt"].decode() == record["caption"] == f"caption ünïcode {n}"
        assert record["alt_text"] == ("" if n % 3 == 0 else f"alt {n}")  # never NULL: one type for loaders
        assert record["alt_text_reason"] == ("" if n < 5 else "itm_prob_below:0.5")
        assert record["captions"] == ([] if n < 5 else [
            {"text": f"caption ünïcode {n}", "source": "synthetic", "clip_score": 0.5, "itm_prob": pytest.approx(0.9),
             "itm_cosine": pytest.approx(0.4)}])
        # The training caption's scores, and the alt-text's under its own name.
        assert record["clip_score"] == (None if n < 5 else 0.5)
        assert record["alt_text_clip_score"] == pytest.approx(rows.column("clip_score")[n].as_py())
        assert not {"status", "reason", "download_shard", "download_key", "output_shard", "caption_chosen"} & record.keys()

    parquet = pq.ParquetFile(f"{out}/00000.parquet")
    assert parquet.metadata.num_row_groups == -(-rows.num_rows // 7)
    table = parquet.read()
    assert table.schema.field("clip_score").type == pa.float32()  # the manifest's type, not inferred
    assert [f.name for f in table.schema.field("captions").type.value_type] == [
        "text", "source", "clip_score", "itm_prob", "itm_cosine"]
    assert table.column("sample_id").to_pylist() == ids
    assert [image["bytes"] for image in table.column("jpg").to_pylist()] == [where[i][1] for i in ids]
    assert table.column("alt_text_clip_score").to_pylist() == pytest.approx(rows.column("clip_score").to_pylist())
    # The same records in both formats.
    assert table.drop_columns(["jpg"]).to_pylist() == [json.loads(s["json"]) for s in samples]


def _counting(read, calls: list):
    def counted(self, shard):
        calls.append(shard)
        return read(self, shard)
    return counted


def test_a_missing_image_stops_the_shard_and_commits_nothing(tmp_path):
    downloaded, where = _downloaded(tmp_path, shards=2, per_shard=30, image_bytes=100)
    rows = _manifest_rows(where)
    lost = "00000-0000000040"  # a kept row whose image is not in its download shard
    shard = f"{downloaded}/00001.parquet"
    pq.write_table(pq.read_table(shard).filter(pa.compute.field("sample_id") != lost), shard)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match=f"output shard 00000: image bytes not found for \\['{lost}'\\]"):
        PAIRS.write_shard(rows, "00000", str(out), downloaded)
    assert os.listdir(out) == []  # no final file, no temporary


def test_a_full_disk_mid_shard_names_the_file_and_leaves_nothing(tmp_path, small_disk):
    # 4 MB of disk, ~6 MB of images: the tar fills it part-way through the shard.
    downloaded, where = _downloaded(tmp_path, shards=2, per_shard=100, image_bytes=30_000)
    rows = _manifest_rows(where, every=1)
    out = small_disk / "output"
    with pytest.raises(storage.WriteError, match=f"cannot write {out}/00000.(tar|parquet): .*No space left on device"):
        PAIRS.write_shard(rows, "00000", str(out), downloaded)
    assert os.listdir(out) == []
    # The space was the temporaries': with them gone, a smaller shard fits again.
    small = rows.slice(0, 20)
    assert PAIRS.write_shard(small, "00000", str(out), downloaded) == 20
    assert pq.read_table(out / "00000.parquet").num_rows == len(list(wds.WebDataset(str(out / "00000.tar"),
                                                                                    shardshuffle=False))) == 20


def test_atomic_open_commits_only_a_finished_block(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    with pytest.raises(ValueError):
        with storage.atomic_open(str(target)) as handle:
            handle.write(b"half")
            raise ValueError("the writer failed")
    assert not target.exists() and os.listdir(target.parent) == []
    with storage.atomic_open(str(target)) as handle:
        handle.write(b"whole")
    assert target.read_bytes() == b"whole"


def test_tar_shard_writes_what_webdataset_tarwriter_writes(tmp_path):
    """curate's TarShard (no torch import in the write tasks) against webdataset's own writer."""
    import tarfile

    samples = [{"__key__": f"00000-{i:010d}", "jpg": bytes([i]) * (100 + i), "txt": f"caption {i} ü",
                "json": b'{"a": 1}', "0.jpg": b"\xff\xd8"} for i in range(5)]
    with open(tmp_path / "ours.tar", "wb") as handle:
        ours = shards.TarShard(handle)
        for sample in samples:
            ours.write(sample)
        ours.close()
    with wds.TarWriter(str(tmp_path / "theirs.tar")) as theirs:
        for sample in samples:
            theirs.write(sample)

    def members(path):
        with tarfile.open(path) as tar:
            return [(m.name, m.size, m.mode, m.uname, m.gname, m.type, tar.extractfile(m).read()) for m in tar]

    assert members(tmp_path / "ours.tar") == members(tmp_path / "theirs.tar")
    assert [s["__key__"] for s in wds.WebDataset(str(tmp_path / "ours.tar"), shardshuffle=False)] == [
        s["__key__"] for s in samples]
