"""Near-duplicate pairs: every pair of rows whose embeddings have cosine >= threshold.

Three FAISS strategies, one contract (see :mod:`curate.dedupe._faiss`): FAISS proposes
candidates, a float64 recomputation decides. ``flat`` is exact; ``ivf`` and ``clustered``
are approximate only in *recall* (they may miss a pair, never invent one). ``auto`` picks by N;
the cut-offs come from ``bench/dedupe.py`` on a 2-core CPU (docs/benchmarks.md).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

import faiss

from curate.dedupe import _faiss as fx

Method = Literal["auto", "flat", "ivf", "clustered"]

# auto: exact flat search up to this many rows (~7 s on 2 cores at 20k). Its cost grows as
# N^2 (100k rows: 5e9 scores, 90 s), the approximate methods' as ~N^1.5.
FLAT_MAX_N = 20_000
# auto: IVF for FLAT_MAX_N < N <= IVF_MAX_N, clustered above. Measured on CPU
# (docs/benchmarks.md), clustered beats IVF at every N >= 50k in both time and recall: IVF's
# range_search scans lists one query at a time, clustered scores whole cells with BLAS. So
# the IVF band is empty by default; IVF remains for method="ivf" and for saved indexes.
IVF_MAX_N = FLAT_MAX_N
# Rows per block of the flat search: only block pairs (k, l) with l >= k are searched,
# which halves the N^2 work of a plain all-vs-all range_search.
FLAT_BLOCK = 16_384
# Training rows per IVF list (FAISS warns below 39) and k-means iterations (FAISS default 25):
# training cost grows as nlist^2, and lists only need to be compact, not optimal.
TRAIN_POINTS_PER_CELL = 40
IVF_KMEANS_NITER = 10


def near_duplicate_pairs(
    emb: np.ndarray,
    threshold: float,
    *,
    method: Method = "auto",
    use_gpu: bool | None = None,
    nlist: int | None = None,
    nprobe: int | None = None,
    n_clusters: int | None = None,
    max_assign: int | None = None,
    n_partitions: int | None = None,
    use_ray: bool | None = None,
    seed: int = 0,
    on_searched: fx.Searched = fx.no_report,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``(i, j, sim)`` with ``i < j`` and cosine ``sim >= threshold``, sorted by (i, j).

    ``emb`` is float32 (N, d) with L2-normalised rows, so inner product = cosine.
    ``i``/``j`` are int64 row numbers, ``sim`` the float64 cosine.

    method:
      * ``flat``: exact, ``IndexFlatIP.range_search`` over blocks (N^2/2 scores).
      * ``ivf``: ``IndexIVFFlat`` (inner product), ``nlist`` lists (default
        :func:`ivf_nlist`), ``nprobe`` probed (default :func:`ivf_nprobe`); every row queries
        the index, so a pair is found from either end. Approximate recall.
      * ``clustered``: k-means cells with boundary halos, one Ray task per partition of cells
        (:func:`curate.dedupe.clustered.clustered_pairs`). Approximate recall.
      * ``auto``: :func:`choose_method` (flat up to 20k rows, clustered above).

    ``use_gpu``: None uses a GPU when ``faiss.get_num_gpus() > 0``. ``use_ray`` (clustered
    only): None uses Ray tasks when Ray is initialised, else runs the cells in this process.
    ``seed`` fixes IVF/k-means training samples. Results of the approximate methods depend on
    row order through those samples only; :func:`curate.dedupe.dedupe` sorts by sample_id first.
    ``on_searched(rows)`` is called as blocks of rows finish their search (progress); the
    calls add up to N.
    """
    emb = fx.check_embeddings(emb)
    threshold = fx.check_threshold(threshold)
    n = len(emb)
    if method == "auto":
        method = choose_method(n)
    if n < 2:
        on_searched(n)
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64)
    gpu = fx.resolve_gpu(use_gpu)
    if method == "flat":
        a, b = _flat_candidates(emb, threshold - fx.CANDIDATE_MARGIN, gpu, on_searched)
    elif method == "ivf":
        a, b = _ivf_candidates(emb, threshold - fx.CANDIDATE_MARGIN, nlist, nprobe, seed, gpu, on_searched)
    elif method == "clustered":
        from curate.dedupe.clustered import clustered_pairs

        i, j, sim, _stats = clustered_pairs(
            emb,
            threshold,
            n_clusters=n_clusters,
            max_assign=max_assign,
            n_partitions=n_partitions,
            use_ray=use_ray,
            use_gpu=gpu,
            seed=seed,
            on_searched=on_searched,
        )
        return i, j, sim
    else:
        raise ValueError(f"method must be auto, flat, ivf or clustered, got {method!r}")
    return fx.finalize_pairs(emb, a, b, threshold)


def choose_method(n: int) -> str:
    """``flat`` (exact) while affordable, then ``ivf`` (empty band by default), then
    ``clustered``; see FLAT_MAX_N and IVF_MAX_N."""
    if n <= FLAT_MAX_N:
        return "flat"
    if n <= IVF_MAX_N:
        return "ivf"
    return "clustered"


# --- flat -----------------------------------------------------------------------------------


def _flat_candidates(emb: np.ndarray, radius: float, gpu: bool,
                     on_searched: fx.Searched) -> tuple[np.ndarray, np.ndarray]:
    d = emb.shape[1]
    if gpu:  # one index, every row against every row; the GPU makes the 2x waste irrelevant
        index = faiss.IndexFlatIP(d)
        index.add(emb)
        q, ids, _ = fx.range_search(index, emb, radius, gpu_index=fx.to_gpu(index))
        on_searched(len(emb))
        return q, ids
    # CPU: upper block triangle. Row block k queries blocks l >= k; pairs inside the diagonal
    # block come out in both orientations and finalize_pairs folds them.
    starts = list(range(0, len(emb), FLAT_BLOCK))
    blocks = []
    for s in starts:
        index = faiss.IndexFlatIP(d)
        index.add(emb[s : s + FLAT_BLOCK])
        blocks.append(index)
    a_parts, b_parts = [], []
    for k, qs in enumerate(starts):
        queries = emb[qs : qs + FLAT_BLOCK]
        for l in range(k, len(starts)):
            q, ids, _ = fx.range_search(blocks[l], queries, radius)
            a_parts.append(q + qs)
            b_parts.append(ids + starts[l])
        on_searched(len(queries))
    return np.concatenate(a_parts), np.concatenate(b_parts)


# --- ivf ------------------------------------------------------------------------------------


def ivf_nlist(n: int) -> int:
    """Lists for an IVF over n rows: 4*sqrt(n), the low end of FAISS's 4..16*sqrt(n) guideline.

    Few, large lists keep recall high at a small nprobe for the very close pairs dedupe wants;
    capped so every list gets >= 39 training points.
    """
    return int(max(1, min(round(4 * math.sqrt(n)), n // 39)))


def ivf_nprobe(nlist: int) -> int:
    """Lists probed per query: 8 (recall 0.997..0.998 at cosine 0.95, N = 50k..100k, in
    bench/dedupe.py; every row is also a query, so a pair is found from either end)."""
    return int(min(nlist, 8))


def build_ivf(
    emb: np.ndarray, nlist: int | None = None, nprobe: int | None = None, seed: int = 0, *, fill: bool = True
):
    """Train (and fill) an inner-product ``IndexIVFFlat`` on a seeded sample of ``emb``."""
    n, d = emb.shape
    nlist = nlist or ivf_nlist(n)
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = IVF_KMEANS_NITER
    index.cp.seed = seed
    n_train = min(n, TRAIN_POINTS_PER_CELL * nlist)
    rows = np.sort(np.random.default_rng(seed).choice(n, n_train, replace=False))
    with fx.faiss_threads(fx.threads_for(n_train * nlist * IVF_KMEANS_NITER)):
        index.train(emb[rows])
    if fill:
        with fx.faiss_threads(fx.threads_for(n * nlist)):
            index.add(emb)
    index.nprobe = nprobe or ivf_nprobe(nlist)
    return index


def _ivf_candidates(emb, radius, nlist, nprobe, seed, gpu, on_searched) -> tuple[np.ndarray, np.ndarray]:
    if gpu:
        index = build_ivf(emb, nlist, nprobe, seed)
        q, ids, _ = fx.range_search(index, emb, radius, gpu_index=fx.to_gpu(index))
        on_searched(len(emb))
        return q, ids
    # CPU: the queries are the indexed rows themselves, so one quantizer pass (nprobe nearest
    # lists per row) serves both the add (nearest list) and the search (all nprobe lists).
    index = build_ivf(emb, nlist, nprobe, seed, fill=False)
    sims, lists = _coarse_assign(index, emb)
    nearest = np.ascontiguousarray(lists[:, 0])
    with fx.faiss_threads(fx.threads_for(len(emb) * index.nlist)):
        index.add_core(len(emb), faiss.swig_ptr(emb), None, faiss.swig_ptr(nearest))
    a_parts, b_parts = [], []
    for start in range(0, len(emb), fx.QUERY_BATCH):
        sl = slice(start, start + fx.QUERY_BATCH)
        with fx.faiss_threads(fx.threads_for(len(emb[sl]) * len(emb) * index.nprobe / index.nlist)):
            lims, _, ids = index.range_search_preassigned(emb[sl], radius, lists[sl], sims[sl])
        a_parts.append(start + np.repeat(np.arange(len(emb[sl])), np.diff(lims).astype(np.int64)))
        b_parts.append(ids.astype(np.int64))
        on_searched(len(emb[sl]))
    return np.concatenate(a_parts), np.concatenate(b_parts)


def _coarse_assign(index, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sims = np.empty((len(emb), index.nprobe), np.float32)
    lists = np.empty((len(emb), index.nprobe), np.int64)
    for start in range(0, len(emb), fx.QUERY_BATCH):
        sl = slice(start, start + fx.QUERY_BATCH)
        with fx.faiss_threads(fx.threads_for(len(emb[sl]) * index.nlist)):
            sims[sl], lists[sl] = index.quantizer.search(emb[sl], index.nprobe)
    return sims, lists
