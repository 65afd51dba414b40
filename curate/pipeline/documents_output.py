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

import io
import json

import pyarrow as pa

from curate.pipeline import storage
from curate.pipeline.output import images_for, json_value

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


def _tar_bytes(records: list[dict], images: dict[str, bytes], image_col: str) -> bytes:
    import webdataset as wds

    buffer = io.BytesIO()
    with wds.TarWriter(buffer) as sink:
        for record in records:
            items, members = _sequence(record, image_col)
            meta = {k: json_value(v) for k, v in record.items() if k not in ("texts", "image_ids", "image_urls")}
            if meta.get("metadata"):  # the input's own columns, as an object rather than a string
                meta["metadata"] = json.loads(meta["metadata"])
            sample = {"__key__": record["sample_id"],
                      "json": json.dumps({**meta, "sequence": items}, ensure_ascii=False).encode("utf-8")}
            sample.update({member: images[sample_id] for member, sample_id in members.items()})
            sink.write(sample)
    return buffer.getvalue()


def _parquet_table(meta: pa.Table, images: dict[str, bytes]) -> pa.Table:
    image_bytes = [[None if i is None else images[i] for i in ids] for ids in meta.column("image_ids").to_pylist()]
    return meta.append_column("images", pa.array(image_bytes, pa.list_(pa.binary())))


def write_document_shard(rows: pa.Table, name: str, out_dir: str, downloaded_dir: str, image_col: str,
                         formats: list[str]) -> int:
    """Write one output shard of documents in every format; returns its document count."""
    images = images_for(_image_locations(rows), downloaded_dir, image_col)
    wanted = {i for ids in rows.column("image_ids").to_pylist() for i in ids if i is not None}
    if wanted - images.keys():
        raise RuntimeError(f"output shard {name}: image bytes not found for {sorted(wanted - images.keys())[:5]}")
    meta = rows.drop_columns([c for c in _LOCATION_COLUMNS if c in rows.column_names])
    if "webdataset" in formats:
        storage.atomic_write(storage.join(out_dir, f"{name}.tar"), _tar_bytes(meta.to_pylist(), images, image_col))
    if "parquet" in formats:
        storage.write_parquet(storage.join(out_dir, f"{name}.parquet"), _parquet_table(meta, images))
    return rows.num_rows
