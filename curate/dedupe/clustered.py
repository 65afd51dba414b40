"""Clustered near-duplicate search (SemDeDup-style) for large N, run as Ray tasks.

SemDeDup (Abbas et al. 2023) k-means-clusters the embeddings and dedupes inside each cluster
only, which loses the pairs that straddle a cluster boundary. Here every row also joins a few
*neighbouring* cells as a halo member, chosen with a geometric test, so boundary pairs are
searched too:

* Cells are the Voronoi cells of the k-means centroids (nearest centroid in L2).
* Pair (x, y) with cosine >= t has ``||x - y|| <= r = sqrt(2 (1 - t))`` (unit vectors).
  If y lies in cell A and x in cell B, x is within r of cell A, so x is within r of the
  bisecting hyperplane between A and B:

      bisector distance  (||x - c_A||^2 - ||x - c_B||^2) / (2 ||c_A - c_B||)  <=  r.

  Cells failing this test can never hold a near duplicate of x; they are skipped for free.
* Each row x is a *query* member of its own cell plus up to ``max_assign - 1`` other cells
  among its ``n_candidates`` nearest centroids that pass the test, nearest bisector first.
  Each cell then runs one exact ``IndexFlatIP.range_search``: all its query members against
  its own (primary) rows. Pair (x, y) is found when x is a query member of y's cell or y of
  x's cell.

Where it can differ from exact (flat) search, precisely: a pair (x, y) is missed only if y's
cell is not among x's selected cells *and* x's cell is not among y's. That needs a cell that
passed the bisector test but was cut by ``max_assign`` (counted in ``ClusterStats.n_capped``)
or that is not among the ``n_candidates`` nearest centroids. With ``max_assign >=
n_candidates >= n_clusters`` the result equals flat search exactly. In high dimension most
rows pass the test for more than ``max_assign`` cells, so ``n_capped`` is usually most rows;
recall is then measured, not guaranteed (bench/dedupe.py: 0.998 at the default
``max_assign=6``, docs/benchmarks.md).

The result does not depend on the number of partitions or Ray tasks: cells are fixed before
partitioning, every cell's search is exact, and candidates are merged as a set and re-scored
in float64 (:func:`curate.dedupe._faiss.finalize_pairs`).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass

import numpy as np

import faiss

from curate.dedupe import _faiss as fx

# Cells per row, primary included. On bench/dedupe.py's data at cosine 0.95 and N = 100k:
# recall 0.992 (4), 0.996 (5), 0.998 (6), 0.9996 (8); the cell-search cost grows about
# linearly with it (0.015, 0.018, 0.022, 0.028 of flat's N^2/2 scores).
DEFAULT_MAX_ASSIGN = 6
# Nearest centroids examined per row for the halo test.
DEFAULT_N_CANDIDATES = 16
# k-means training sample per centroid and iterations: cells only need to be compact, not
# optimal, and training is O(K^2 * points_per_centroid * d * iterations).
KMEANS_POINTS_PER_CENTROID = 32
KMEANS_NITER = 10
# Ray resources per cell-search task: fractional so tasks never starve other Ray work on a
# small machine (NOTES-dependencies 2b: integer CPUs on 2 cores deadlock actor pools).
TASK_NUM_CPUS = 0.5
# Slack (in embedding distance) on the bisector test for float32 rounding of distances.
BISECTOR_SLACK = 1e-3


@dataclass
class ClusterStats:
    n_rows: int
    n_clusters: int
    max_assign: int
    n_partitions: int
    used_ray: bool
    mean_assign: float  # cells per row (primary + halo)
    n_capped: int  # rows with more passing cells than max_assign (the only recall risk)
    scored_pairs: int  # similarity scores computed in the cell searches (flat needs n^2 / 2)
    largest_cell: int  # primary rows in the biggest cell
    seconds_kmeans: float
    seconds_assign: float
    seconds_search: float
    worker_peak_rss_bytes: int | None  # max VmHWM over Ray workers (includes mapped embeddings)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class CellPlan:
    """Rows per cell: ``db`` rows (primary members) and ``query`` rows (primary + halo)."""

    db_rows: list[np.ndarray]
    query_rows: list[np.ndarray]
    mean_assign: float
    n_capped: int


def default_n_clusters(n: int) -> int:
    """2*sqrt(n) cells, so each holds ~sqrt(n)/2 rows: cell-search work ~ max_assign * n^1.5 / 2
    balances the k-means assignment work ~ 2 n^1.5; at least 39 training rows per centroid."""
    return int(max(1, min(round(2 * math.sqrt(n)), n // 39)))


def clustered_pairs(
    emb: np.ndarray,
    threshold: float,
    *,
    n_clusters: int | None = None,
    max_assign: int | None = None,
    n_candidates: int = DEFAULT_N_CANDIDATES,
    n_partitions: int | None = None,
    use_ray: bool | None = None,
    use_gpu: bool | None = None,
    seed: int = 0,
    on_searched: fx.Searched = fx.no_report,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, ClusterStats]:
    """Like :func:`curate.dedupe.near_duplicate_pairs` (method="clustered"), plus statistics.

    ``use_ray`` None: Ray tasks when Ray is initialised (the caller owns ``ray.init``), else all
    cells on a thread pool in this process. ``n_partitions``: groups of cells, one Ray task (or
    pool job) each, default 4 per Ray CPU or 2 per thread; it changes speed, never the result.
    ``on_searched(rows)``: called as each partition finishes, with its cells' primary rows
    (the calls add up to N; k-means and the cell plan come before the first call).
    """
    emb = fx.check_embeddings(emb)
    threshold = fx.check_threshold(threshold)
    n = len(emb)
    n_clusters = int(n_clusters or default_n_clusters(n))
    n_clusters = max(1, min(n_clusters, n))
    max_assign = int(max_assign or DEFAULT_MAX_ASSIGN)
    gpu = fx.resolve_gpu(use_gpu)
    use_ray = _resolve_ray(use_ray)
    radius = threshold - fx.CANDIDATE_MARGIN
    if n < 2:
        on_searched(n)
        empty = np.empty(0, np.int64)
        stats = ClusterStats(n, 0, max_assign, 0, use_ray, float(n), 0, 0, n, 0.0, 0.0, 0.0, None)
        return empty, empty.copy(), np.empty(0, np.float64), stats

    t0 = time.perf_counter()
    kmeans = _train_kmeans(emb, n_clusters, seed, gpu)
    t1 = time.perf_counter()
    plan = plan_cells(emb, kmeans, radius, max_assign, n_candidates)
    t2 = time.perf_counter()
    n_partitions = int(n_partitions or _default_partitions(use_ray))
    parts = balance_partitions(plan, n_partitions)
    # Every row is the primary member of one cell, and every cell with rows is in a partition.
    part_rows = [sum(len(plan.db_rows[c]) for c in cells) for cells in parts]
    if use_ray:
        a, b, peak = _search_with_ray(emb, plan, parts, radius, part_rows, on_searched)
    else:
        a, b, peak = _search_in_process(emb, plan, parts, radius, part_rows, on_searched)
    i, j, sim = fx.finalize_pairs(emb, a, b, threshold)
    t3 = time.perf_counter()

    stats = ClusterStats(
        n_rows=n,
        n_clusters=n_clusters,
        max_assign=max_assign,
        n_partitions=len(parts),
        used_ray=use_ray,
        mean_assign=plan.mean_assign,
        n_capped=plan.n_capped,
        scored_pairs=int(sum(len(d) * len(q) for d, q in zip(plan.db_rows, plan.query_rows))),
        largest_cell=int(max((len(d) for d in plan.db_rows), default=0)),
        seconds_kmeans=t1 - t0,
        seconds_assign=t2 - t1,
        seconds_search=t3 - t2,
        worker_peak_rss_bytes=peak,
    )
    return i, j, sim, stats


# --- cells ----------------------------------------------------------------------------------


def _train_kmeans(emb: np.ndarray, k: int, seed: int, gpu: bool) -> faiss.Kmeans:
    kmeans = faiss.Kmeans(
        emb.shape[1],
        k,
        niter=KMEANS_NITER,
        seed=seed,
        max_points_per_centroid=KMEANS_POINTS_PER_CENTROID,
        gpu=gpu,
        verbose=False,
    )
    n_train = min(len(emb), k * KMEANS_POINTS_PER_CENTROID)
    with fx.faiss_threads(fx.threads_for(n_train * k * KMEANS_NITER)):
        kmeans.train(emb)
    return kmeans


def plan_cells(
    emb: np.ndarray, kmeans: faiss.Kmeans, radius: float, max_assign: int, n_candidates: int
) -> CellPlan:
    """Primary cell and halo cells of every row (see the module docstring for the test)."""
    k = kmeans.centroids.shape[0]
    n_candidates = max(1, min(n_candidates, k))
    r = math.sqrt(max(0.0, 2.0 * (1.0 - radius))) + BISECTOR_SLACK
    centroid_dist = np.sqrt(np.maximum(faiss.pairwise_distances(kmeans.centroids, kmeans.centroids), 0))

    member_rows, member_cells, primary = [], [], np.empty(len(emb), np.int64)
    n_capped, n_members = 0, 0
    for start in range(0, len(emb), fx.QUERY_BATCH):
        batch = emb[start : start + fx.QUERY_BATCH]
        with fx.faiss_threads(fx.threads_for(len(batch) * k)):
            sq_dist, cells = kmeans.index.search(batch, n_candidates)
        bisector = _bisector_distance(sq_dist, cells, centroid_dist)
        passing = bisector <= r
        n_capped += int(np.count_nonzero(passing.sum(axis=1) > max_assign))
        # Keep the max_assign passing cells closest by bisector (the primary has -inf).
        order = np.argsort(np.where(passing, bisector, np.inf), axis=1, kind="stable")[:, :max_assign]
        chosen = np.take_along_axis(passing, order, axis=1)
        rows, col = np.nonzero(chosen)
        member_rows.append(rows + start)
        member_cells.append(np.take_along_axis(cells, order, axis=1)[rows, col])
        primary[start : start + len(cells)] = cells[:, 0]
        n_members += len(rows)

    rows = np.concatenate(member_rows)
    cells = np.concatenate(member_cells).astype(np.int64)
    return CellPlan(
        db_rows=_split_by_cell(np.arange(len(emb)), primary, k),
        query_rows=_split_by_cell(rows, cells, k),
        mean_assign=n_members / max(1, len(emb)),
        n_capped=n_capped,
    )


def _bisector_distance(sq_dist: np.ndarray, cells: np.ndarray, centroid_dist: np.ndarray) -> np.ndarray:
    """Distance from each row to the hyperplane between its nearest centroid and each candidate."""
    gap = sq_dist - sq_dist[:, :1]
    sep = centroid_dist[cells[:, :1], np.maximum(cells, 0)]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(sep > 0, gap / (2 * sep), np.where(gap <= 0, 0.0, np.inf))
    out[cells < 0] = np.inf  # fewer centroids than candidates
    out[:, 0] = -np.inf  # the row's own cell
    return out


def _split_by_cell(rows: np.ndarray, cells: np.ndarray, k: int) -> list[np.ndarray]:
    order = np.argsort(cells, kind="stable")  # rows stay ascending inside each cell
    bounds = np.searchsorted(cells[order], np.arange(k + 1))
    sorted_rows = rows[order]
    return [sorted_rows[bounds[c] : bounds[c + 1]] for c in range(k)]


def balance_partitions(plan: CellPlan, n_partitions: int) -> list[list[int]]:
    """Cells -> partitions, largest cell first onto the least-loaded partition (deterministic)."""
    cost = np.array([len(d) * len(q) for d, q in zip(plan.db_rows, plan.query_rows)], np.int64)
    live = [c for c in np.argsort(-cost, kind="stable").tolist() if cost[c] > 0]
    n_partitions = max(1, min(n_partitions, len(live)))
    load = [0] * n_partitions
    parts: list[list[int]] = [[] for _ in range(n_partitions)]
    for cell in live:
        p = min(range(n_partitions), key=lambda x: (load[x], x))
        parts[p].append(cell)
        load[p] += int(cost[cell])
    return parts


# --- cell search ----------------------------------------------------------------------------


def _pack(plan: CellPlan, cells) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cells' row lists as flat arrays + offsets (cheap to ship to a Ray task)."""
    cells = list(cells)
    db = [plan.db_rows[c] for c in cells]
    qs = [plan.query_rows[c] for c in cells]
    db_off = np.concatenate([[0], np.cumsum([len(x) for x in db])]).astype(np.int64)
    q_off = np.concatenate([[0], np.cumsum([len(x) for x in qs])]).astype(np.int64)
    cat = lambda xs: np.concatenate(xs).astype(np.int64) if xs else np.empty(0, np.int64)  # noqa: E731
    return cat(db), db_off, cat(qs), q_off


def search_cells(emb, db_rows, db_off, q_rows, q_off, radius: float):
    """Exact range search of each cell's query rows against its primary rows -> candidate pairs.

    Cells are small (~sqrt(N)/2 primary rows), so FAISS runs single-threaded here and the
    parallelism comes from running partitions side by side (Ray tasks or a thread pool).
    """
    a_parts, b_parts = [], []
    for c in range(len(db_off) - 1):
        db = db_rows[db_off[c] : db_off[c + 1]]
        qs = q_rows[q_off[c] : q_off[c + 1]]
        if len(db) == 0 or len(qs) == 0:
            continue
        a, b = fx.range_pairs(emb, db, qs, radius)
        a_parts.append(a)
        b_parts.append(b)
    if not a_parts:
        return np.empty(0, np.int64), np.empty(0, np.int64), _peak_rss()
    return np.concatenate(a_parts), np.concatenate(b_parts), _peak_rss()


def _search_cells_task(emb, db_rows, db_off, q_rows, q_off, radius):
    # One OpenMP thread per task or pool thread (restored afterwards: Ray reuses workers).
    with fx.faiss_threads(1):
        return search_cells(emb, db_rows, db_off, q_rows, q_off, radius)


def _search_in_process(emb, plan, parts, radius, part_rows, on_searched):
    """Partitions on a thread pool (FAISS releases the GIL), one FAISS thread each."""
    from concurrent.futures import ThreadPoolExecutor

    def search(p: int):
        result = _search_cells_task(emb, *_pack(plan, parts[p]), radius)
        on_searched(part_rows[p])
        return result

    workers = max(1, min(len(parts), faiss.omp_get_max_threads()))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(search, range(len(parts))))
    return _merge(results, peak=None)


def _search_with_ray(emb, plan, parts, radius, part_rows, on_searched):
    import ray

    task = ray.remote(num_cpus=TASK_NUM_CPUS)(_search_cells_task)
    emb_ref = ray.put(emb)  # once; workers map it read-only from the object store
    futures = [task.remote(emb_ref, *_pack(plan, cells), radius) for cells in parts]
    rows_of = dict(zip(futures, part_rows))
    pending = list(futures)
    while pending:  # report partitions as they finish; the results keep partition order
        done, pending = ray.wait(pending, num_returns=1)
        on_searched(rows_of[done[0]])
    results = ray.get(futures)
    del emb_ref
    peaks = [r[2] for r in results if r[2] is not None]
    return _merge(results, peak=max(peaks) if peaks else None)


def _merge(results, peak):
    if not results:
        return np.empty(0, np.int64), np.empty(0, np.int64), peak
    return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results]), peak


def _resolve_ray(use_ray: bool | None) -> bool:
    if use_ray is False:
        return False
    try:
        import ray
    except ImportError:
        if use_ray:
            raise
        return False
    if use_ray and not ray.is_initialized():
        raise RuntimeError("use_ray=True but Ray is not initialised; call ray.init() first")
    return ray.is_initialized()


def _default_partitions(use_ray: bool) -> int:
    """Enough partitions to even out cell sizes: 2 per concurrent task/thread."""
    if not use_ray:
        return 2 * faiss.omp_get_max_threads()
    import ray

    cpus = ray.cluster_resources().get("CPU", 1.0)
    return max(2, int(2 * cpus / TASK_NUM_CPUS))


def _peak_rss() -> int | None:
    """VmHWM of this process in bytes (Linux), else None."""
    try:
        with open("/proc/self/status") as fh:
            match = re.search(r"VmHWM:\s+(\d+) kB", fh.read())
        return int(match.group(1)) * 1024 if match else None
    except OSError:
        return None
