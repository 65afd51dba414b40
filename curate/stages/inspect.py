"""Per-row checks after download: map the downloader's errors to reasons, apply the cheap
filters, and hash the decoded pixels (for exact dedupe of re-encoded copies).

Runs as a Ray Data task over pyarrow batches; no model.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pyarrow as pa
from PIL import Image

from curate.pipeline.config import FilterConfig
from curate.stages.cheap_filters import caption_reject, image_reject
from curate.stages.download import download_reason

INSPECT_COLUMNS = {
    "download_reason": pa.string(),
    "image_reject": pa.string(),
    "caption_reject": pa.string(),
    "pixel_sha256": pa.string(),
}


def pixel_hash(data: bytes | None) -> str | None:
    """sha256 over the decoded RGB pixels and their shape; None if the bytes don't decode."""
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            pixels = np.asarray(image.convert("RGB"))
    except Exception:  # noqa: BLE001 - any decoder failure means "no pixel hash"
        return None
    digest = hashlib.sha256(str(pixels.shape).encode())
    digest.update(pixels.tobytes())
    return digest.hexdigest()


def inspect_batch(batch: pa.Table, filters: FilterConfig, image_col: str) -> pa.Table:
    """Append INSPECT_COLUMNS to a batch of downloaded rows."""
    columns = ["status", "error_message", "original_width", "original_height", "caption", "caption_bad_encoding", image_col]
    # The verdict the fetching worker verified (curate.stages.safe_downloader); shards of
    # an earlier curate have none.
    columns += [c for c in ("fetch_reason",) if c in batch.column_names]
    rows = batch.select(columns).to_pylist()
    out: dict[str, list] = {name: [] for name in INSPECT_COLUMNS}
    for row in rows:
        failed = download_reason(row["status"], row["error_message"], row.get("fetch_reason"))
        out["download_reason"].append(failed)
        out["image_reject"].append(None if failed else image_reject(row["original_width"], row["original_height"], filters))
        out["caption_reject"].append(caption_reject(row["caption"], bool(row["caption_bad_encoding"]), filters))
        out["pixel_sha256"].append(None if failed else pixel_hash(row[image_col]))
    for name, type_ in INSPECT_COLUMNS.items():
        batch = batch.append_column(name, pa.array(out[name], type_))
    return batch
