"""Small FAISS helpers shared by the dedupe methods: device choice, range search, pair clean-up.

Every method (flat, ivf, clustered, cross-run matching) works the same way:

1. FAISS proposes *candidate* pairs with a float32 similarity >= ``threshold - CANDIDATE_MARGIN``.
2. :func:`finalize_pairs` drops self-pairs, orients each pair as ``i < j``, removes repeats and
   recomputes the cosine of every candidate in float64, keeping those >= ``threshold``.

Step 2 makes the decision for a pair depend only on the two vectors, not on which index, batch
or Ray task found it (float32 BLAS results differ in the last bits with blocking, and a pair
found from both ends can get two slightly different float32 scores). So two methods that
propose the same true pairs return bit-identical ``(i, j, sim)`` arrays.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import numpy as np

import faiss

# float32 inner products of unit 512-d vectors are accurate to ~1e-6; the margin only has to
# cover that. Candidates inside the margin are settled by the float64 recomputation.
CANDIDATE_MARGIN = 1e-4
# Unit-norm check tolerance (CLIP embeddings normalised in fp16 are off by ~1e-3 at worst).
NORM_TOLERANCE = 1e-2
# Rows per FAISS query batch: bounds the memory of range_search results and temporaries.
QUERY_BATCH = 65_536
# GPU indexes have no range_search: kNN with this many neighbours, then CPU for rows that fill it.
GPU_KNN_K = 64
# FAISS calls scoring fewer pairs than this run on one OpenMP thread. On a busy machine
# (more runnable threads than cores) OpenMP barriers spin, and a many-small-calls workload
# measured 30x slower with 2 threads than with 1 (bench/dedupe.py on 2 cores).
SMALL_WORK = 50_000_000


# Progress callback of the searches: called with the number of rows whose search just finished.
Searched = Callable[[int], None]


def no_report(rows: int) -> None:
    """The default Searched: nobody follows this search."""


def gpu_available() -> bool:
    """True only when FAISS sees a GPU. faiss-cpu has no GPU symbols at all.

    Do not call ``index_cpu_to_all_gpus`` without this check: with a GPU build on a machine
    without a GPU it silently returns an *empty* index (ntotal 0), see NOTES-dependencies §1.
    """
    get = getattr(faiss, "get_num_gpus", None)
    return bool(get is not None and get() > 0)


def resolve_gpu(use_gpu: bool | None) -> bool:
    if use_gpu is None:
        return gpu_available()
    if use_gpu and not gpu_available():
        raise RuntimeError("use_gpu=True but faiss.get_num_gpus() == 0 (faiss-cpu, or no visible GPU)")
    return use_gpu


def to_gpu(index: faiss.Index) -> faiss.Index:
    """Copy a CPU index to all GPUs (caller has checked :func:`gpu_available`), keeping nprobe."""
    gpu_index = faiss.index_cpu_to_all_gpus(index)
    if gpu_index.ntotal != index.ntotal:  # the empty-index trap; never search it
        raise RuntimeError("faiss.index_cpu_to_all_gpus returned an index with the wrong size")
    nprobe = getattr(index, "nprobe", None)
    if nprobe is not None:
        faiss.GpuParameterSpace().set_index_parameter(gpu_index, "nprobe", nprobe)
    return gpu_index


@contextmanager
def faiss_threads(n: int | None):
    """Run the enclosed FAISS calls with ``n`` OpenMP threads (None: leave as is).

    The setting is per calling thread, so it is safe inside a thread pool or a reused Ray worker.
    """
    if n is None:
        yield
        return
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def threads_for(scored_pairs: float) -> int | None:
    """One thread for small FAISS calls, FAISS's default otherwise."""
    return 1 if scored_pairs < SMALL_WORK else None


def check_embeddings(emb: np.ndarray, name: str = "emb") -> np.ndarray:
    """C-contiguous float32 (N, d) with unit rows: inner product must equal cosine."""
    arr = np.ascontiguousarray(emb, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (N, d), got shape {arr.shape}")
    if len(arr):
        norms = np.linalg.norm(arr, axis=1)
        bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
        if len(bad):
            raise ValueError(
                f"{name}: rows must be L2-normalised (cosine = inner product); row {bad[0]} has norm "
                f"{norms[bad[0]]:.4f} ({len(bad)} such rows)"
            )
    return arr


def check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not -1.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be a cosine in (-1, 1], got {threshold}")
    return threshold


def range_search(
    index: faiss.Index,
    queries: np.ndarray,
    radius: float,
    *,
    gpu_index: faiss.Index | None = None,
    knn_k: int = GPU_KNN_K,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (query row, index id, similarity) with inner product >= ``radius``, in query batches.

    With ``gpu_index`` (GPU indexes cannot range_search) the GPU answers a kNN query with
    ``knn_k`` neighbours; rows whose k-th neighbour is still >= radius may have more hits and
    are redone exactly with ``index.range_search`` on the CPU. Same result, mostly on the GPU.
    """
    q_parts, id_parts, sim_parts = [], [], []
    for start in range(0, len(queries), QUERY_BATCH):
        batch = queries[start : start + QUERY_BATCH]
        if gpu_index is None:
            with faiss_threads(threads_for(len(batch) * index.ntotal)):
                q, ids, sims = _cpu_range(index, batch, radius)
        else:
            q, ids, sims = _knn_then_range(gpu_index, index, batch, radius, knn_k)
        q_parts.append(q + start)
        id_parts.append(ids)
        sim_parts.append(sims)
    if not q_parts:
        return _empty_pairs()
    return np.concatenate(q_parts), np.concatenate(id_parts), np.concatenate(sim_parts)


def _cpu_range(index: faiss.Index, queries: np.ndarray, radius: float):
    lims, sims, ids = index.range_search(queries, radius)
    rows = np.repeat(np.arange(len(queries), dtype=np.int64), np.diff(lims).astype(np.int64))
    return rows, ids.astype(np.int64), sims


def _knn_then_range(search_index, cpu_index, queries, radius, k):
    k = max(1, min(k, search_index.ntotal))
    sims, ids = search_index.search(queries, k)
    hit = (sims >= radius) & (ids >= 0)
    # A full row (its k-th neighbour still qualifies) may have more hits beyond k.
    full = hit[:, -1] if k < search_index.ntotal else np.zeros(len(queries), bool)
    keep = hit & ~full[:, None]
    rows = np.nonzero(keep)
    q, i, s = rows[0].astype(np.int64), ids[keep].astype(np.int64), sims[keep]
    redo = np.flatnonzero(full)
    if len(redo):
        rq, ri, rs = _cpu_range(cpu_index, queries[redo], radius)
        q, i, s = np.concatenate([q, redo[rq]]), np.concatenate([i, ri]), np.concatenate([s, rs])
    return q, i, s


def _empty_pairs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)


def pair_cosines(a: np.ndarray, b: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
    """float64 cosine of ``a[rows_a[k]]`` and ``b[rows_b[k]]``.

    float32 x float32 products are exact in float64, so the result depends only on the two
    vectors (not on blocking or on which task computed it).
    """
    out = np.empty(len(rows_a), np.float64)
    step = 8192
    for start in range(0, len(rows_a), step):
        sl = slice(start, start + step)
        out[sl] = np.einsum(
            "ij,ij->i", a[rows_a[sl]].astype(np.float64), b[rows_b[sl]].astype(np.float64)
        )
    return out


def finalize_pairs(
    emb: np.ndarray, a: np.ndarray, b: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate pairs (any orientation, repeats allowed) -> sorted unique (i < j, cos >= threshold)."""
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    keep = lo != hi
    n = max(len(emb), 1)
    keys = np.unique(lo[keep] * n + hi[keep])  # sorted: pairs come out ordered by (i, j)
    i, j = keys // n, keys % n
    sim = pair_cosines(emb, emb, i, j)
    ok = sim >= threshold
    return i[ok], j[ok], sim[ok]


def range_pairs(emb, db, queries, radius: float):
    """Exact inner-product range search of rows ``queries`` of ``emb`` against rows ``db``
    (both int arrays of row numbers; emb: (N, d) float32, L2-normalised) -> (query rows,
    db rows) of every pair with cosine >= ``radius``, as two int arrays of equal length."""
    import faiss
    import numpy as np

    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(emb[db])
    lims, _, found = index.range_search(emb[queries], radius)
    hits = np.repeat(np.arange(len(queries)), np.diff(lims).astype(np.int64))
    return queries[hits], db[found]
