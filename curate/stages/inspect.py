"""Inspect stage: what the downloader said about each row, and the image rules.

Maps img2dataset's (status, error_message) to a reason code (``download_reason``), hashes
the decoded pixels (``pixel_sha256``: exact dedupe of re-encoded copies), and rejects images
by their original size (``filters.min_side``, ``filters.max_side``, ``filters.max_aspect_ratio``;
OBELICS, Laurençon et al. 2023, keeps sides of 150..20,000 pixels and aspect ratios up to 2). Its rules
gate the score step: model stages skip the images they reject, so these thresholds are
fixed for a run (a refilter can't score an image that was never scored).

Runs as a light Ray Data task; no model.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pyarrow as pa
from PIL import Image

from curate.schemas import reasons as R
from curate.schemas.reasons import fmt_threshold
from curate.stages.base import IMAGE, BatchStage, Rule
from curate.download.download_errors import download_reason

WIDTH, HEIGHT = "original_width", "original_height"


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


class InspectStage(BatchStage):
    """The downloader's verdict as a reason code, a pixel hash, and the image-size rules (which gate scoring)."""

    key = "inspect"
    section = "filters"
    reads = ("status", "error_message", WIDTH, HEIGHT, IMAGE)
    # The verdict the fetching worker verified (curate.download.safe_downloader); download
    # shards of an earlier curate have none.
    optional_reads = ("fetch_reason",)
    writes = pa.schema([("download_reason", pa.string()), ("pixel_sha256", pa.string())])
    rows = "all"
    gates = True

    def __call__(self, batch: pa.Table) -> pa.Table:
        columns = ["status", "error_message", self.image_col] + [c for c in self.optional_reads if c in batch.column_names]
        rows = batch.select(columns).to_pylist()
        failed = [download_reason(r["status"], r["error_message"], r.get("fetch_reason")) for r in rows]
        hashes = [None if f else pixel_hash(r[self.image_col]) for f, r in zip(failed, rows)]
        return self.append(batch, {"download_reason": failed, "pixel_sha256": hashes})

    def rules(self) -> list[Rule]:
        f = self.cfg.filters
        # Missing sizes pass: no evidence against the image.
        sized = f"{WIDTH} > 0 AND {HEIGHT} > 0"
        short, long = f"least({WIDTH}, {HEIGHT})", f"greatest({WIDTH}, {HEIGHT})"
        rules = [Rule.fixed(f"{sized} AND {short} < {f.min_side}", R.IMAGE_TOO_SMALL, f.min_side)]
        if f.max_side is not None:
            rules.append(Rule.fixed(f"{sized} AND {long} > {f.max_side}", R.IMAGE_SIDE_ABOVE, f.max_side))
        return rules + [
            Rule.fixed(f"{sized} AND {long}::DOUBLE / greatest({short}, 1) > {f.max_aspect_ratio!r}",
                       R.ASPECT_RATIO_ABOVE, fmt_threshold(f.max_aspect_ratio)),
        ]
