"""Writing training shards: the pieces both kinds share.

A shard's files (``NNNNN.tar``: WebDataset; ``NNNNN.parquet``) stream to temporary names and
are committed together (:class:`ShardFiles`); a write task reads image bytes one download
shard at a time (:class:`ShardImages`), so it holds one download shard's images, not the
whole output shard.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import tarfile
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.core import commits, storage

SUFFIX = {"webdataset": ".tar", "parquet": ".parquet"}
# img2dataset's per-shard statistics file, beside each shard (and DataComp's resharder reads
# its ``successes``); written last, after the shard's files are committed.
STATS_SUFFIX = "_stats.json"


def json_value(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_shard_stats(out_dir: str, name: str, count: int, started: float) -> None:
    """``NNNNN_stats.json`` with the keys img2dataset's ``write_stats`` writes, for the tools
    that read them (img2dataset's own logger sums them; DataComp's resharder reads
    ``successes``). Every sample of an output shard is a success. Written by hand, not with
    img2dataset.logger.write_stats: importing that module imports wandb in every write task."""
    ended = time.time()
    stats = {
        "count": count, "successes": count, "failed_to_download": 0, "failed_to_resize": 0,
        "duration": ended - started, "start_time": started, "end_time": ended,
        "status_dict": {"success": count} if count else {},
    }
    commits.write_committed(storage.join(out_dir, name + STATS_SUFFIX), json.dumps(stats, indent=4).encode())


# Rows turned into Python records and written at a time: a write task holds one chunk's
# records, not a whole shard's (a shard of 10,000 samples with captions is ~100 MB of dicts).
CHUNK_ROWS = 1_000


class ShardImages:
    """Image bytes by sample_id for one output shard, read one download shard at a time.

    A shard's rows are written in sample_id order and a download shard holds consecutive
    sample_ids (prepare cuts the input in order), so each download shard is read once and
    only the images this output shard keeps from it are held: a write task's memory is
    bounded by a download shard, not by the output shard it writes. (Out of order, it is
    still correct: a shard is read again when it comes back.)"""

    def __init__(self, name: str, locations: pa.Table, downloaded_dir: str, image_col: str):
        self.name, self.downloaded_dir, self.image_col = name, downloaded_dir, image_col
        ids, shards = locations.column("sample_id").to_pylist(), locations.column("download_shard").to_pylist()
        self.shard_of = dict(zip(ids, shards))
        self.wanted: dict[str, list[str]] = {}
        for sample_id, shard in zip(ids, shards):
            self.wanted.setdefault(shard, []).append(sample_id)
        self.loaded: str | None = None
        self.images: dict[str, bytes] = {}

    def __getitem__(self, sample_id: str) -> bytes:
        shard = self.shard_of[sample_id]
        if shard != self.loaded:
            self.images = {}  # drop the previous shard's bytes before reading the next
            self.images = self._read(shard)
            self.loaded = shard
        return self.images[sample_id]

    def _read(self, shard: str) -> dict[str, bytes]:
        ids = self.wanted[shard]
        fs, path = storage.fs_and_path(storage.join(self.downloaded_dir, f"{shard}.parquet"))
        table = pq.read_table(path, columns=["sample_id", self.image_col], filesystem=fs,
                              filters=pc.field("sample_id").isin(ids))
        images = dict(zip(table.column("sample_id").to_pylist(), table.column(self.image_col).to_pylist()))
        missing = set(ids) - images.keys()
        if missing:
            raise RuntimeError(f"output shard {self.name}: image bytes not found for {sorted(missing)[:5]}")
        return images


class TarShard:
    """A WebDataset tar: the members ``KEY.EXT`` of each sample, in sorted order of EXT,
    USTAR, mode 0444, owner ``bigdata``, exactly as ``webdataset.TarWriter`` writes them.

    Written with the standard library's tarfile rather than webdataset's writer because
    ``import webdataset`` imports torch: ~450 MB in every output task's process, for a
    class that wraps tarfile (bench/memory.py: write tasks of 0.85-1.0 GB each with it).
    The tests read every shard back with ``webdataset.WebDataset``."""

    def __init__(self, fileobj):
        self.tar = tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.USTAR_FORMAT)

    def write(self, sample: dict) -> None:
        key = sample["__key__"]
        for ext in sorted(k for k in sample if not k.startswith("_")):
            data = sample[ext]
            data = data.encode("utf-8") if isinstance(data, str) else data
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), time.time(), 0o444
            info.uname = info.gname = "bigdata"
            self.tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self.tar.close()


class ShardFiles:
    """The files of one output shard, written chunk by chunk and committed together.

    Each format streams to a temporary name (storage.atomic_open): a write task never holds
    a whole shard's tar or Parquet file. They are renamed into place, one after the other,
    only once every chunk is written; on an error the temporaries are removed. Each file's
    size and sha256, counted as it streams, are recorded once it is renamed
    (curate.core.commits). A shard is done only when all its files are there and match
    their records (``curate.pipeline.output.shard_done``), so a resume rewrites a shard that
    stopped between two renames, or whose files were deleted or damaged since."""

    def __init__(self, out_dir: str, name: str, formats: list[str], parquet_schema: pa.Schema):
        self.uris = {f: storage.join(out_dir, name + SUFFIX[f]) for f in formats}
        self.schema = parquet_schema
        self.tar = self.parquet = None
        self.sinks: dict[str, commits.HashingSink] = {}

    def _open(self, stack: contextlib.ExitStack, fmt: str) -> commits.HashingSink:
        self.sinks[fmt] = commits.HashingSink(stack.enter_context(storage.atomic_open(self.uris[fmt])))
        return self.sinks[fmt]

    def __enter__(self) -> "ShardFiles":
        self.stack = contextlib.ExitStack()
        with self.stack as stack:
            if "webdataset" in self.uris:
                self.tar = TarShard(self._open(stack, "webdataset"))
            if "parquet" in self.uris:
                self.parquet = pq.ParquetWriter(self._open(stack, "parquet"), self.schema, compression="zstd")
            self.stack = stack.pop_all()
        return self

    def __exit__(self, kind, error, tb) -> bool:
        if kind is None:
            try:  # each file's end (tar end blocks, Parquet footer) before its handle commits it
                for writer in (self.tar, self.parquet):
                    if writer is not None:
                        writer.close()
            except BaseException as failed:
                self.stack.__exit__(type(failed), failed, failed.__traceback__)  # discards the files
                raise
        suppressed = self.stack.__exit__(kind, error, tb)
        if kind is None:  # every file renamed into place: record them
            for fmt, sink in self.sinks.items():
                commits.record(self.uris[fmt], sink.described())
        return suppressed
