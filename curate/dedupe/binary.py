"""Near duplicates by binary codes: every pair of 64-bit hashes within a Hamming distance.

FAISS's ``IndexBinaryFlat`` scores a pair with one XOR and a popcount, so an exact search of
the upper block triangle (each block of rows against itself and the blocks after it) costs
N^2/2 popcounts: about 5e11 at a million rows, minutes on one core. Above that, a
multi-index hashing index (``IndexBinaryMultiHash``) is the known next step; not built yet.
"""

from __future__ import annotations

import numpy as np

import faiss

from curate.dedupe import _faiss as fx

BLOCK = 65_536


def codes_from_hex(values: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """(codes (M, 8) uint8, row numbers (M,)) of the non-null 16-hex-digit hashes in ``values``."""
    rows = np.array([i for i, v in enumerate(values) if v is not None], np.int64)
    codes = np.frombuffer(b"".join(bytes.fromhex(values[i]) for i in rows), np.uint8).reshape(len(rows), 8)
    return codes, rows


def hamming_pairs(codes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(i, j)``, ``i < j``, of rows of ``codes`` ((N, 8) uint8: 64-bit codes) whose
    Hamming distance is at most ``max_distance``, sorted by (i, j)."""
    codes = np.ascontiguousarray(codes, np.uint8)
    if codes.ndim != 2 or codes.shape[1] != 8:
        raise ValueError(f"codes: expected (N, 8) uint8, got shape {codes.shape}")
    starts = list(range(0, len(codes), BLOCK))
    a_parts, b_parts = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for k, qs in enumerate(starts):
        queries = codes[qs : qs + BLOCK]
        for start in starts[k:]:
            index = faiss.IndexBinaryFlat(64)
            index.add(codes[start : start + BLOCK])
            with fx.faiss_threads(fx.threads_for(len(queries) * index.ntotal)):
                lims, _, ids = index.range_search(queries, max_distance + 1)  # FAISS: distance < radius
            a_parts.append(qs + np.repeat(np.arange(len(queries), dtype=np.int64), np.diff(lims).astype(np.int64)))
            b_parts.append(start + ids.astype(np.int64))
    a, b = np.concatenate(a_parts), np.concatenate(b_parts)
    keep = a < b  # drop self pairs and the mirrored half of the diagonal blocks
    pairs = np.unique(np.stack([a[keep], b[keep]], axis=1), axis=0) if keep.any() else np.empty((0, 2), np.int64)
    return pairs[:, 0], pairs[:, 1]
