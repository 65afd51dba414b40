"""Thumbnails for the report, read from the downloaded shards: only the sampled rows.

The manifest's ``download_shard`` / ``download_key`` point into RUN/downloaded/ (the
img2dataset Parquet output, image bytes in a column named after the encode format). Each
shard is read once, with a filter on ``key``, so a report over millions of rows reads a
few hundred images. Thumbnails are re-encoded small JPEGs as ``data:`` URIs: the page
stays one self-contained file that opens offline.
"""

from __future__ import annotations

import base64
import io
from collections import defaultdict

import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from curate.core import storage

THUMB_SIDE = 160  # pixels of the longer side: sharp at the grid's 128 CSS pixels on HiDPI screens


def data_uri(image_bytes: bytes, side: int = THUMB_SIDE) -> str | None:
    """A small JPEG data URI of an image, None when the bytes don't decode."""
    try:
        with Image.open(io.BytesIO(image_bytes)) as image:
            image = image.convert("RGB")
            image.thumbnail((side, side))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=85)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _read_shard(downloaded_dir: str, shard: str, keys: list[str], image_col: str) -> dict[str, bytes]:
    uri = storage.join(downloaded_dir, f"{shard}.parquet")
    fs, path = storage.fs_and_path(uri)
    if not fs.exists(path):
        return {}
    table = pq.read_table(path, columns=["key", image_col], filesystem=fs, filters=pc.field("key").isin(keys))
    return {k: v for k, v in zip(table.column("key").to_pylist(), table.column(image_col).to_pylist()) if v}


def load_thumbnails(downloaded_dir: str, rows: list[dict], image_col: str) -> dict[str, str]:
    """sample_id -> data URI for the given manifest rows (those without stored bytes are left out)."""
    keys_by_shard: dict[str, dict[str, str]] = defaultdict(dict)
    for row in rows:
        if row.get("download_shard") and row.get("download_key"):
            keys_by_shard[row["download_shard"]][row["download_key"]] = row["sample_id"]
    thumbs: dict[str, str] = {}
    for shard, ids_by_key in sorted(keys_by_shard.items()):
        for key, image in _read_shard(downloaded_dir, shard, sorted(ids_by_key), image_col).items():
            uri = data_uri(image)
            if uri:
                thumbs[ids_by_key[key]] = uri
    return thumbs
