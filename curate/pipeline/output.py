"""Step 5: write the training shards from the manifest's kept rows.

Shard ``NNNNN`` holds the kept samples whose manifest ``output_shard`` is ``NNNNN``, in
sample_id order, as ``NNNNN.tar`` (WebDataset: ``KEY.jpg``, ``KEY.txt``, ``KEY.json``)
and/or ``NNNNN.parquet`` (image bytes + metadata). Each shard is written by one Ray task
and committed by rename. ``index.json`` (shard names and counts) is written last and
records the manifest digest: a resumed run re-uses shards written for the same manifest,
and a refilter (another manifest) replaces them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import tarfile
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.pipeline import commits, storage
from curate.pipeline.config import CurateConfig
from curate.pipeline.rundir import RunDir

# Manifest columns that say where the bytes are or why, not what the sample is.
_LOCATION_COLUMNS = ("download_shard", "download_key", "output_shard", "status", "reason")
_SUFFIX = {"webdataset": ".tar", "parquet": ".parquet"}


def manifest_digest(run: RunDir) -> str:
    digest = hashlib.sha256()
    for uri in storage.list_files(run.manifest, ".parquet"):
        fs, path = storage.fs_and_path(uri)
        digest.update(fs.cat_file(path))
    return digest.hexdigest()


def json_value(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _training_record(row: dict) -> dict:
    """A manifest row as the trainer sees it: the kept captions only (the manifest keeps all)."""
    record = {k: json_value(v) for k, v in row.items()}
    if record.get("captions") is not None:
        record["captions"] = [
            {k: json_value(v) for k, v in c.items() if k not in ("kept", "reason")} for c in record["captions"] if c["kept"]
        ]
    return record


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
    (curate.pipeline.commits). A shard is done only when all its files are there and match
    their records (``_shard_done``), so a resume rewrites a shard that stopped between two
    renames, or whose files were deleted or damaged since."""

    def __init__(self, out_dir: str, name: str, formats: list[str], parquet_schema: pa.Schema):
        self.uris = {f: storage.join(out_dir, name + _SUFFIX[f]) for f in formats}
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


def _parquet_schema(meta: pa.Schema, image_col: str) -> pa.Schema:
    """The Parquet shard's schema: the manifest's columns as a trainer sees them (captions
    without the kept/reason fields, as in _training_record) plus the image bytes. Fixed once
    per shard, so every chunk is written with the same types."""
    fields = []
    for field in meta:
        if field.name == "captions":
            item = field.type.value_type
            kept = [f for f in item if f.name not in ("kept", "reason")]
            field = field.with_type(pa.list_(pa.struct(kept)))
        fields.append(field)
    return pa.schema(fields + [pa.field(image_col, pa.binary())])


def write_shard(rows: pa.Table, name: str, out_dir: str, downloaded_dir: str, image_col: str, formats: list[str]) -> int:
    """Write one output shard in every format, CHUNK_ROWS rows at a time; returns its count."""
    images = ShardImages(name, rows.select(["sample_id", "download_shard"]), downloaded_dir, image_col)
    meta = rows.drop_columns([c for c in _LOCATION_COLUMNS if c in rows.column_names])
    schema = _parquet_schema(meta.schema, image_col)
    with ShardFiles(out_dir, name, formats, schema) as files:
        for chunk in meta.to_batches(max_chunksize=CHUNK_ROWS):
            records = [_training_record(r) for r in chunk.to_pylist()]
            data = [images[r["sample_id"]] for r in records]
            if files.tar is not None:
                for record, image in zip(records, data):
                    files.tar.write({
                        "__key__": record["sample_id"],
                        image_col: image,
                        "txt": record["caption_chosen"] or "",
                        "json": json.dumps(record, ensure_ascii=False).encode("utf-8"),
                    })
            if files.parquet is not None:
                table = pa.Table.from_pylist([{**r, image_col: d} for r, d in zip(records, data)], schema=schema)
                files.parquet.write_table(table)
    return rows.num_rows


def _shard_done(out_dir: str, name: str, formats: list[str]) -> bool:
    """Every file of the shard is committed and matches its commit record."""
    return all(commits.problem(storage.join(out_dir, name + _SUFFIX[f])) is None for f in formats)


def _reset_if_other_manifest(run: RunDir, digest: str) -> None:
    marker = storage.join(run.output, "_manifest_digest")
    if not storage.exists(marker) or storage.read_text(marker) != digest:
        commits.remove_tree(run.output)
        storage.write_text(marker, digest)
    storage.remove_temporaries(run.output)


def shard_counts(run: RunDir) -> dict[str, int]:
    """Output shard name -> kept samples, reading only the manifest's ``output_shard`` column:
    the driver never holds the kept rows themselves."""
    files = storage.list_files(run.manifest, ".parquet")
    shards = storage.read_parquet(files, columns=["output_shard"]).column("output_shard") if files else pa.array([])
    counts = pc.value_counts(pc.drop_null(shards)).to_pylist() if len(shards) else []
    return {c["values"]: c["counts"] for c in sorted(counts, key=lambda c: c["values"])}


def _write_from_manifest(writer, manifest_files: list[str], name: str, *args) -> int:
    """Ray task: read this shard's kept rows from the manifest (row groups of other shards are
    skipped by their statistics: shards follow sample_id order) and write the shard."""
    rows = storage.read_parquet(manifest_files, filters=pc.field("output_shard") == name)
    return writer(rows.sort_by("sample_id"), name, *args)


def write_output(cfg: CurateConfig, run: RunDir, counts: dict[str, int], on_shard=None) -> dict:
    """Write every output shard of the manifest's kept rows (``counts``: ``shard_counts(run)``),
    then the index."""
    import ray

    from curate.pipeline.documents_output import write_document_shard

    digest = manifest_digest(run)
    _reset_if_other_manifest(run, digest)
    remote = ray.remote(num_cpus=0.5)(_write_from_manifest)
    writer = write_document_shard if cfg.documents else write_shard
    files = storage.list_files(run.manifest, ".parquet")
    names = list(counts)
    futures = {
        name: remote.remote(writer, files, name, run.output, run.downloaded, cfg.download.encode_format,
                            cfg.output.formats)
        for name in names if not _shard_done(run.output, name, cfg.output.formats)
    }
    for name, future in futures.items():
        written = ray.get(future)
        if written != counts[name]:  # the manifest changed under us: never index a partial shard
            raise RuntimeError(f"output shard {name}: wrote {written} samples, the manifest has {counts[name]}")
        if on_shard:
            on_shard(counts[name])
    index = {
        "kind": cfg.input.kind,
        "formats": cfg.output.formats,
        "image_format": cfg.download.encode_format,
        "total": int(sum(counts.values())),
        "shards": [
            {"name": n, "count": counts[n], "files": [n + _SUFFIX[f] for f in cfg.output.formats]} for n in names
        ],
        "manifest_digest": digest,
    }
    storage.write_text(storage.join(run.output, "index.json"), json.dumps(index, indent=2))
    return index
