"""Output shards of a documents run: one sample per kept document (docs/formats.md).

- Parquet, in the OBELICS layout: ``texts`` and ``images`` are aligned lists, each
  position holds a text or an image (the image's encoded bytes); ``image_ids`` and
  ``image_urls`` are aligned with them; plus the document's metadata columns.
- WebDataset: ``DOC.json`` holds the document with its ``sequence`` of
  ``{"type": "text", "text"}`` and ``{"type": "image", "member", "sample_id", "url"}``
  items, and each image is the member ``DOC.<k>.<ext>`` that ``member`` names.

Called by curate.pipeline.output.write_output as one Ray task per shard, with the same
commit-by-rename and index.json as pair runs.
"""

from __future__ import annotations

import json

import pyarrow as pa

from curate.pipeline.output import CHUNK_ROWS, ShardFiles, ShardImages, json_value

# Manifest columns about where the bytes are or why, not what the document is.
_LOCATION_COLUMNS = ("image_download_shards", "output_shard", "status", "reason")


def _image_locations(rows: pa.Table) -> pa.Table:
    ids, shards = [], []
    for doc_ids, doc_shards in zip(rows.column("image_ids").to_pylist(), rows.column("image_download_shards").to_pylist()):
        for sample_id, shard in zip(doc_ids, doc_shards):
            if sample_id is not None:
                ids.append(sample_id)
                shards.append(shard)
    return pa.table({"sample_id": pa.array(ids, pa.string()), "download_shard": pa.array(shards, pa.string())})


def _sequence(record: dict, image_col: str) -> tuple[list[dict], dict[str, str]]:
    """The document as a list of items, and member name -> image sample_id."""
    items, members = [], {}
    for text, sample_id, url in zip(record["texts"], record["image_ids"], record["image_urls"]):
        if sample_id is None:
            items.append({"type": "text", "text": text})
            continue
        member = f"{len(members)}.{image_col}"
        members[member] = sample_id
        items.append({"type": "image", "member": member, "sample_id": sample_id, "url": url})
    return items, members


def _tar_sample(record: dict, images: dict[str, bytes], image_col: str) -> dict:
    items, members = _sequence(record, image_col)
    meta = {k: json_value(v) for k, v in record.items() if k not in ("texts", "image_ids", "image_urls")}
    if meta.get("metadata"):  # the input's own columns, as an object rather than a string
        meta["metadata"] = json.loads(meta["metadata"])
    sample = {"__key__": record["sample_id"],
              "json": json.dumps({**meta, "sequence": items}, ensure_ascii=False).encode("utf-8")}
    sample.update({member: images[sample_id] for member, sample_id in members.items()})
    return sample


def _parquet_chunk(meta: pa.RecordBatch, images: dict[str, bytes], schema: pa.Schema) -> pa.Table:
    image_bytes = [[None if i is None else images[i] for i in ids] for ids in meta.column("image_ids").to_pylist()]
    return pa.Table.from_batches([meta]).append_column("images", pa.array(image_bytes, pa.list_(pa.binary()))).cast(schema)


def write_document_shard(rows: pa.Table, name: str, out_dir: str, downloaded_dir: str, image_col: str,
                         formats: list[str]) -> int:
    """Write one output shard of documents in every format, CHUNK_ROWS documents at a time;
    returns its document count."""
    images = ShardImages(name, _image_locations(rows), downloaded_dir, image_col)
    meta = rows.drop_columns([c for c in _LOCATION_COLUMNS if c in rows.column_names])
    schema = meta.schema.append(pa.field("images", pa.list_(pa.binary())))
    with ShardFiles(out_dir, name, formats, schema) as files:
        for chunk in meta.to_batches(max_chunksize=CHUNK_ROWS):
            records = chunk.to_pylist()
            # Read each image once for both formats, in document order (see ShardImages).
            data = {i: images[i] for r in records for i in r["image_ids"] if i is not None}
            if files.tar is not None:
                for record in records:
                    files.tar.write(_tar_sample(record, data, image_col))
            if files.parquet is not None:
                files.parquet.write_table(_parquet_chunk(chunk, data, schema))
    return rows.num_rows
