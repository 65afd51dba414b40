"""Step 5: write the training shards from the manifest's kept rows.

Shard ``NNNNN`` holds the kept samples whose manifest ``output_shard`` is ``NNNNN``, in
sample_id order, as ``NNNNN.tar`` (WebDataset: ``KEY.jpg``, ``KEY.txt``, ``KEY.json``)
and/or ``NNNNN.parquet`` (image bytes + metadata). Each shard is written by one Ray task
and committed by rename. ``index.json`` (shard names and counts) is written last and
records the manifest digest: a resumed run re-uses shards written for the same manifest,
and a refilter (another manifest) replaces them.
"""

from __future__ import annotations

import hashlib
import io
import json
import math

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.pipeline import storage
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


def images_for(rows: pa.Table, downloaded_dir: str, image_col: str) -> dict[str, bytes]:
    images: dict[str, bytes] = {}
    for shard in sorted(set(rows.column("download_shard").to_pylist())):
        ids = pc.filter(rows.column("sample_id"), pc.equal(rows.column("download_shard"), shard))
        fs, path = storage.fs_and_path(storage.join(downloaded_dir, f"{shard}.parquet"))
        table = pq.read_table(
            path, columns=["sample_id", image_col], filesystem=fs, filters=pc.field("sample_id").isin(ids)
        )
        images.update(zip(table.column("sample_id").to_pylist(), table.column(image_col).to_pylist()))
    return images


def _tar_bytes(records: list[dict], images: dict[str, bytes], image_col: str) -> bytes:
    import webdataset as wds

    buffer = io.BytesIO()
    with wds.TarWriter(buffer) as sink:
        for record in records:
            sink.write({
                "__key__": record["sample_id"],
                image_col: images[record["sample_id"]],
                "txt": record["caption_chosen"] or "",
                "json": json.dumps(record, ensure_ascii=False).encode("utf-8"),
            })
    return buffer.getvalue()


def _parquet_table(records: list[dict], images: dict[str, bytes], image_col: str) -> pa.Table:
    table = pa.Table.from_pylist(records)
    return table.append_column(image_col, pa.array([images[r["sample_id"]] for r in records], pa.binary()))


def write_shard(rows: pa.Table, name: str, out_dir: str, downloaded_dir: str, image_col: str, formats: list[str]) -> int:
    """Write one output shard in every format; returns its sample count."""
    images = images_for(rows, downloaded_dir, image_col)
    missing = set(rows.column("sample_id").to_pylist()) - images.keys()
    if missing:
        raise RuntimeError(f"output shard {name}: image bytes not found for {sorted(missing)[:5]}")
    meta = rows.drop_columns([c for c in _LOCATION_COLUMNS if c in rows.column_names])
    records = [_training_record(r) for r in meta.to_pylist()]
    if "webdataset" in formats:
        storage.atomic_write(storage.join(out_dir, f"{name}.tar"), _tar_bytes(records, images, image_col))
    if "parquet" in formats:
        storage.write_parquet(storage.join(out_dir, f"{name}.parquet"), _parquet_table(records, images, image_col))
    return rows.num_rows


def _shard_done(out_dir: str, name: str, formats: list[str]) -> bool:
    return all(storage.exists(storage.join(out_dir, name + _SUFFIX[f])) for f in formats)


def _reset_if_other_manifest(run: RunDir, digest: str) -> None:
    marker = storage.join(run.output, "_manifest_digest")
    if not storage.exists(marker) or storage.read_text(marker) != digest:
        storage.remove_tree(run.output)
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
