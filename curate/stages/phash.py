"""pHash stage: a 64-bit perceptual hash per image, and near duplicates within a Hamming distance.

pHash (Zauner 2010, "Implementation and Benchmarking of Perceptual Image Hash Functions"; the
``imagehash`` library): the image in grey at 32 x 32, its 2-D DCT, the 8 x 8 lowest
frequencies thresholded at their median. Re-encoding, resizing and small brightness changes
move few of the 64 bits; a different picture moves about half. ``phash`` (16 hex digits) is
stored in RUN/scored/; the dedupe stage asks this stage, as a :class:`DuplicateMatcher`, for
the pairs within ``dedupe.phash_distance`` bits (FAISS binary index, curate.dedupe.binary)
and records them as ``duplicate_kind: phash``. It needs no CLIP model.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from curate.dedupe.binary import codes_from_hex, hamming_pairs
from curate.stages.base import IMAGE, BatchStage


class PhashStage(BatchStage):
    """A 64-bit pHash of every live image; its near duplicates for the dedupe stage."""

    key = "phash"
    section = "dedupe"
    switch = "dedupe.phash"
    reads = (IMAGE,)
    writes = pa.schema([("phash", pa.string())])
    thresholds = ("dedupe.phash_distance",)
    duplicate_kind = "phash"

    def configured(self) -> bool:
        return self.cfg.dedupe.enabled and self.cfg.dedupe.phash

    def __call__(self, batch: pa.Table) -> pa.Table:
        import imagehash

        from curate.stages.model_support import decoded

        hashes: list[str | None] = [None] * batch.num_rows
        for i, image in decoded(batch, self.todo(batch), self.image_col):
            hashes[i] = str(imagehash.phash(image))
        return self.append(batch, {"phash": hashes})

    # -- as a duplicate matcher of the dedupe stage ----------------------------------------------

    def matches_duplicates(self) -> bool:
        return True

    def match_column(self) -> tuple[str, str]:
        return "phash", "phash"

    def duplicate_pairs(self, values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """Row pairs of ``values`` (hex hashes, NULL for an image without one) within
        ``dedupe.phash_distance`` bits."""
        codes, rows = codes_from_hex(values.to_pylist())
        i, j = hamming_pairs(codes, self.cfg.dedupe.phash_distance)
        return rows[i], rows[j]
