"""Embedding indexes on disk: dedupe a new run against earlier runs, or against a test set.

File set (a directory, written by :func:`save_index`)::

    PATH/
      index.faiss    faiss.write_index of a CPU index with METRIC_INNER_PRODUCT over
                     L2-normalised float32 vectors: IndexFlatIP ("flat") or IndexIVFFlat ("ivf").
                     FAISS id k is row k of ids.parquet.
      ids.parquet    one column ``sample_id`` (string), one row per vector, in FAISS id order.
      meta.json      {"format": "curate-embedding-index", "format_version": 1, "kind",
                      "dim", "count", "metric": "inner_product", "normalized": true,
                      "nlist", "nprobe", "faiss_version", "curate_version"}

Local paths only (use fsspec to copy a directory to/from object storage).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import faiss

from curate.dedupe import _faiss as fx
from curate.dedupe.near import build_ivf
from curate.dedupe.threshold import DEFAULT_THRESHOLD

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
META_FILE = "meta.json"
FORMAT = "curate-embedding-index"
FORMAT_VERSION = 1
# kind="auto": exact flat index up to this many reference vectors (a test set, a small run);
# above, an IVF index so matching a new run costs ~N_new * nprobe/nlist * N_ref, not N_new * N_ref.
FLAT_INDEX_MAX_N = 200_000

IndexKind = Literal["auto", "flat", "ivf"]


@dataclass
class EmbeddingIndex:
    """A FAISS inner-product index plus the sample_id of every vector."""

    index: faiss.Index
    ids: np.ndarray  # object array of str; ids[k] is FAISS id k
    meta: dict = field(default_factory=dict)
    _rank_cache: np.ndarray | None = field(default=None, init=False, repr=False)

    @classmethod
    def build(
        cls,
        emb: np.ndarray,
        ids: Sequence[str],
        *,
        kind: IndexKind = "auto",
        nlist: int | None = None,
        nprobe: int | None = None,
        seed: int = 0,
    ) -> "EmbeddingIndex":
        emb = fx.check_embeddings(emb, "emb_ref")
        ids_arr = np.asarray(list(ids), dtype=object)
        if len(ids_arr) != len(emb):
            raise ValueError(f"ids: expected {len(emb)} ids, got {len(ids_arr)}")
        if kind == "auto":
            kind = "flat" if len(emb) <= FLAT_INDEX_MAX_N else "ivf"
        if kind == "flat" or len(emb) == 0:
            kind = "flat"
            index = faiss.IndexFlatIP(emb.shape[1])
            index.add(emb)
        elif kind == "ivf":
            index = build_ivf(emb, nlist, nprobe, seed)
            index.make_direct_map()  # reconstruct() for the float64 re-scoring
        else:
            raise ValueError(f"kind must be auto, flat or ivf, got {kind!r}")
        return cls(index, ids_arr, _meta(index, kind, emb.shape[1]))

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def match(
        self, emb_new: np.ndarray, threshold: float = DEFAULT_THRESHOLD, *, use_gpu: bool | None = None
    ) -> np.ndarray:
        """For each new row, the sample_id of its most similar reference row with cosine >=
        threshold (ties -> smallest sample_id), else None. Exact for "flat" indexes; "ivf"
        probes ``nprobe`` lists per new row (approximate recall, never a false match)."""
        threshold = fx.check_threshold(threshold)
        emb_new = fx.check_embeddings(emb_new, "emb_new")
        out = np.full(len(emb_new), None, dtype=object)
        if len(emb_new) == 0 or len(self) == 0:
            return out
        if emb_new.shape[1] != self.index.d:
            raise ValueError(f"emb_new has dimension {emb_new.shape[1]}, the index {self.index.d}")
        gpu_index = fx.to_gpu(self.index) if fx.resolve_gpu(use_gpu) else None
        q, ref, _ = fx.range_search(self.index, emb_new, threshold - fx.CANDIDATE_MARGIN, gpu_index=gpu_index)
        ref_vectors = self.index.reconstruct_batch(ref) if len(ref) else np.empty((0, self.index.d), np.float32)
        sim = fx.pair_cosines(emb_new, ref_vectors, q, np.arange(len(ref)))
        ok = sim >= threshold
        q, ref, sim = q[ok], ref[ok], sim[ok]
        # Best per new row: highest cosine, then smallest sample_id (then smallest FAISS id).
        order = np.lexsort([ref, self._id_rank()[ref], -sim, q])
        first = np.ones(len(order), bool)
        first[1:] = q[order][1:] != q[order][:-1]
        best = order[first]
        out[q[best]] = self.ids[ref[best]]
        return out

    def _id_rank(self) -> np.ndarray:
        if self._rank_cache is None:
            rank = np.empty(len(self.ids), np.int64)
            rank[np.argsort(self.ids.astype(str), kind="stable")] = np.arange(len(self.ids))
            self._rank_cache = rank
        return self._rank_cache

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(path / INDEX_FILE))
        pq.write_table(pa.table({"sample_id": pa.array(self.ids.tolist(), pa.string())}), path / IDS_FILE)
        (path / META_FILE).write_text(json.dumps(self.meta, indent=2) + "\n")
        return path


def _meta(index: faiss.Index, kind: str, dim: int) -> dict:
    from curate import __version__

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "dim": int(dim),
        "count": int(index.ntotal),
        "metric": "inner_product",
        "normalized": True,
        "nlist": int(index.nlist) if kind == "ivf" else None,
        "nprobe": int(index.nprobe) if kind == "ivf" else None,
        "faiss_version": faiss.__version__,
        "curate_version": __version__,
    }


def save_index(
    path: str | Path,
    emb: np.ndarray,
    ids: Sequence[str],
    *,
    kind: IndexKind = "auto",
    nlist: int | None = None,
    nprobe: int | None = None,
) -> Path:
    """Write ``emb`` (float32, L2-normalised) and their sample_ids as an index directory."""
    return EmbeddingIndex.build(emb, ids, kind=kind, nlist=nlist, nprobe=nprobe).save(path)


def load_index(path: str | Path) -> EmbeddingIndex:
    """Read a directory written by :func:`save_index`; checks that its three files agree."""
    path = Path(path)
    meta = json.loads((path / META_FILE).read_text())
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: not a {FORMAT} v{FORMAT_VERSION} directory (meta.json: {meta.get('format')!r})")
    index = faiss.read_index(str(path / INDEX_FILE))
    ids = np.asarray(pq.read_table(path / IDS_FILE, columns=["sample_id"]).column(0).to_pylist(), dtype=object)
    if not (index.ntotal == len(ids) == meta["count"]) or index.d != meta["dim"]:
        raise ValueError(
            f"{path}: index has {index.ntotal} vectors of dim {index.d}, ids.parquet {len(ids)} rows, "
            f"meta.json count={meta['count']} dim={meta['dim']}"
        )
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise ValueError(f"{path}: index metric must be inner product")
    if meta["kind"] == "ivf":
        faiss.extract_index_ivf(index).make_direct_map()
        index.nprobe = meta["nprobe"] or index.nprobe
    return EmbeddingIndex(index, ids, meta)


def match_against(
    emb_new: np.ndarray,
    emb_ref: np.ndarray,
    ref_ids: Sequence[str],
    threshold: float = DEFAULT_THRESHOLD,
    *,
    kind: IndexKind = "flat",
    use_gpu: bool | None = None,
) -> np.ndarray:
    """For each row of ``emb_new``: the sample_id in ``ref_ids`` it duplicates, or None.

    The reference with the highest cosine >= threshold wins; ties go to the smallest
    sample_id. ``kind="flat"`` (default) is exact. Use it for cross-run dedupe (reference =
    an earlier run's kept rows) and for decontamination (reference = evaluation images).
    For a saved reference use ``load_index(path).match(emb_new, threshold)``.
    """
    return EmbeddingIndex.build(emb_ref, ref_ids, kind=kind).match(emb_new, threshold, use_gpu=use_gpu)
