"""The clustered near-duplicate search, distributed: cells written as partitions, one task per group of cells.

The method of :mod:`curate.dedupe.clustered` (k-means cells with boundary halos, an exact
search inside each cell; SemDeDup-style, Abbas et al. 2023), cut so that no process holds
every embedding:

1. the driver trains k-means on a bounded sample of the embeddings (:func:`train_cells`);
2. a task per input file assigns each of its rows to its primary cell and up to
   ``max_assign - 1`` halo cells (the bisector test of :mod:`curate.dedupe.clustered`) and
   writes ``(group, cell, sample_id, primary, score, emb)`` sorted by group
   (:func:`assign_file`);
3. a task per group of cells reads only its group's rows (Parquet row groups are pruned by
   their statistics) and searches each cell exactly: its rows against the cell's primary
   rows (:func:`search_group`). Pairs come back as sample_ids with their float64 cosine.

Recall is that of the in-memory clustered method (0.998 at the defaults on bench/dedupe.py's
data): a pair is missed only when neither row reaches the other's cell.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import faiss

from curate.core import storage
from curate.dedupe import _faiss as fx
from curate.dedupe.clustered import (
    BISECTOR_SLACK, DEFAULT_MAX_ASSIGN, DEFAULT_N_CANDIDATES, KMEANS_POINTS_PER_CENTROID, _train_kmeans,
    default_n_clusters,
)

TASK_CPUS = 0.5
# The k-means sample and the number of cells are bounded, so the driver's share does not grow
# with the rows: 2^18 training vectors (512 MiB at 512-d), 2^13 cells (~120k rows per cell at 1B rows).
MAX_SAMPLE = 1 << 18
MAX_CELLS = 1 << 13
ROW_GROUP = 4096  # rows per Parquet row group of a cell file: a group's task skips the others'
# A near-duplicate pair of representatives, with the scores the survivor is chosen by.
PAIRS = pa.schema([("a", pa.string()), ("b", pa.string()), ("score_a", pa.float64()), ("score_b", pa.float64())])


def n_cells(n: int) -> int:
    return int(max(1, min(default_n_clusters(n), MAX_CELLS, n)))


def _embeddings(column) -> np.ndarray:
    values = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return values.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(values), -1)


def _sample(uri: str, fraction: float, seed: int) -> np.ndarray:
    """Ray task: a seeded random share of one file's embeddings."""
    table = storage.read_parquet([uri], columns=["sample_id", "emb"])
    if table.num_rows == 0:
        return np.empty((0, 0), np.float32)
    rng = np.random.default_rng([seed, int.from_bytes(uri.encode()[-8:], "little")])
    keep = rng.random(table.num_rows) < fraction
    return _embeddings(table.column("emb").filter(pa.array(keep))) if keep.any() else np.empty((0, 0), np.float32)


def train_cells(files: list[str], total: int, seed: int = 0) -> np.ndarray:
    """Centroids (k, d) of k-means on a sample of at most MAX_SAMPLE embeddings of ``files``."""
    import ray

    k = n_cells(total)
    want = min(total, k * KMEANS_POINTS_PER_CENTROID, MAX_SAMPLE)
    task = ray.remote(num_cpus=TASK_CPUS)(_sample)
    parts = [a for a in ray.get([task.remote(f, want / max(total, 1), seed) for f in files]) if len(a)]
    sample = np.concatenate(parts) if parts else np.empty((0, 0), np.float32)
    k = max(1, min(k, len(sample)))
    return _train_kmeans(sample, k, seed, fx.resolve_gpu(None)).centroids.copy()


def _cells_of(emb: np.ndarray, centroids: np.ndarray, radius: float, max_assign: int) -> tuple[np.ndarray, ...]:
    """(row, cell, primary?) memberships: each row's nearest cell and the halo cells the
    bisector test lets through, at most ``max_assign`` (as curate.dedupe.clustered.plan_cells,
    with the centroid separations computed per row instead of as a k x k matrix)."""
    k = len(centroids)
    n_candidates = max(1, min(DEFAULT_N_CANDIDATES, k))
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(centroids)
    r = math.sqrt(max(0.0, 2.0 * (1.0 - radius))) + BISECTOR_SLACK
    rows_out, cells_out, primary_out = [], [], []
    for start in range(0, len(emb), fx.QUERY_BATCH):
        batch = emb[start : start + fx.QUERY_BATCH]
        with fx.faiss_threads(fx.threads_for(len(batch) * k)):
            sq_dist, cells = index.search(batch, n_candidates)
        safe = np.maximum(cells, 0)
        sep = np.linalg.norm(centroids[safe] - centroids[safe[:, :1]], axis=2)
        gap = sq_dist - sq_dist[:, :1]
        with np.errstate(divide="ignore", invalid="ignore"):
            bisector = np.where(sep > 0, gap / (2 * sep), np.where(gap <= 0, 0.0, np.inf))
        bisector[cells < 0] = np.inf
        bisector[:, 0] = -np.inf
        passing = bisector <= r
        order = np.argsort(np.where(passing, bisector, np.inf), axis=1, kind="stable")[:, :max_assign]
        rows, col = np.nonzero(np.take_along_axis(passing, order, axis=1))
        rows_out.append(rows + start)
        cells_out.append(np.take_along_axis(cells, order, axis=1)[rows, col])
        primary_out.append(col == 0)
    cat = lambda xs, t: np.concatenate(xs).astype(t) if xs else np.empty(0, t)  # noqa: E731
    return cat(rows_out, np.int64), cat(cells_out, np.int64), cat(primary_out, bool)


def assign_file(uri: str, out_uri: str, centroids: np.ndarray, threshold: float, groups: int,
                max_assign: int = DEFAULT_MAX_ASSIGN) -> int:
    """Ray task: one file's rows -> their cell memberships at ``out_uri``, sorted by group."""
    table = storage.read_parquet([uri], columns=["sample_id", "score", "emb"])
    schema = pa.schema([("group", pa.int32()), ("cell", pa.int32()), ("sample_id", pa.string()),
                        ("primary", pa.bool_()), ("score", pa.float64()), ("emb", table.schema.field("emb").type)])
    if table.num_rows == 0:
        storage.write_parquet(out_uri, schema.empty_table())
        return 0
    emb = fx.check_embeddings(_embeddings(table.column("emb")))
    rows, cells, primary = _cells_of(emb, centroids, threshold - fx.CANDIDATE_MARGIN, max_assign)
    taken = table.take(pa.array(rows))
    out = pa.table({"group": pa.array(cells % groups, pa.int32()), "cell": pa.array(cells, pa.int32()),
                    "sample_id": taken.column("sample_id"), "primary": pa.array(primary),
                    "score": taken.column("score").cast(pa.float64()), "emb": taken.column("emb")}, schema=schema)
    storage.write_parquet(out_uri, out.sort_by([("group", "ascending"), ("cell", "ascending")]), ROW_GROUP)
    return out.num_rows


def search_group(files: list[str], group: int, threshold: float) -> pa.Table:
    """Ray task: the pairs of one group of cells: sample_ids ``a < b`` with cosine >= threshold,
    and their scores (PAIRS)."""
    table = storage.read_parquet(files, filters=pc.field("group") == group)
    if table.num_rows == 0:
        return PAIRS.empty_table()
    ids = np.asarray(table.column("sample_id").to_pylist(), dtype=object)
    emb = _embeddings(table.column("emb"))
    cells = table.column("cell").to_numpy()
    primary = table.column("primary").to_numpy(zero_copy_only=False)
    a_parts, b_parts = [], []
    radius = threshold - fx.CANDIDATE_MARGIN
    with fx.faiss_threads(1):  # many small searches: parallelism comes from running groups side by side
        for cell in np.unique(cells):
            members = np.flatnonzero(cells == cell)
            db = members[primary[members]]
            if len(db) == 0:
                continue
            a, b = fx.range_pairs(emb, db, members, radius)
            a_parts.append(a)
            b_parts.append(b)
    if not a_parts:
        return PAIRS.empty_table()
    a, b = np.concatenate(a_parts), np.concatenate(b_parts)
    keep = ids[a] != ids[b]  # a row is in its own cell once as a query and once as a primary
    i, j, _ = fx.finalize_pairs(emb, a[keep], b[keep], threshold)
    scores = table.column("score").to_numpy(zero_copy_only=False)
    swap = ids[i] > ids[j]
    lo, hi = np.where(swap, j, i), np.where(swap, i, j)
    return pa.table({"a": pa.array(ids[lo].tolist(), pa.string()), "b": pa.array(ids[hi].tolist(), pa.string()),
                     "score_a": scores[lo], "score_b": scores[hi]}, schema=PAIRS)


def clustered_pairs(files: list[str], total: int, threshold: float, work: str, groups: int,
                    advance=None, seed: int = 0) -> pa.Table:
    """Every near-duplicate pair among the rows of ``files`` (``sample_id``, ``score``, ``emb``):
    k-means on the driver (bounded sample), assignment and search as Ray tasks."""
    import ray

    if total < 2:
        if advance:
            advance(total)
        return PAIRS.empty_table()
    centroids = ray.put(train_cells(files, total, seed))
    assign = ray.remote(num_cpus=TASK_CPUS)(assign_file)
    outs = [storage.join(work, "cells", f"part-{i:05d}.parquet") for i in range(len(files))]
    ray.get([assign.remote(f, o, centroids, threshold, groups) for f, o in zip(files, outs)])
    search = ray.remote(num_cpus=TASK_CPUS)(search_group)
    pending = [search.remote(outs, g, threshold) for g in range(groups)]
    results = []
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        results.append(ray.get(done[0]))
        if advance:
            advance(total // groups + (1 if len(results) <= total % groups else 0))
    pairs = pa.concat_tables(results)
    # A pair found in two cells comes twice: keep one.
    return pairs.group_by(["a", "b"]).aggregate([("score_a", "max"), ("score_b", "max")]).rename_columns(
        PAIRS.names).sort_by([("a", "ascending"), ("b", "ascending")]).cast(PAIRS)
