"""Benchmark of near-duplicate search: exact flat vs IVF vs clustered (k-means cells on Ray).

    .venv/bin/python bench/dedupe.py              # N = 100k and 1M (about 15-20 min on 2 cores)
    .venv/bin/python bench/dedupe.py --quick      # N = 10k and 50k (about 2 min)
    .venv/bin/python bench/dedupe.py --sizes 200000 --methods flat,ivf

Data: synthetic L2-normalised 512-d embeddings shaped like CLIP image embeddings: a shared
mean direction, N/1000 topics of log-normal sizes, within-topic noise with a power-law
spectrum (low intrinsic dimension), plus planted rows: near-duplicates of random rows at
cosine threshold+0.002..0.999, near-misses at threshold-0.03..threshold-0.002 (must not be
reported) and exact copies.

Methods: flat, ivf, clustered-inproc (k-means cells on a thread pool; N <= --inproc-max) and
clustered (the same cells as Ray tasks, num_cpus=0.5 each, after ray.init(num_cpus=2)).

Every measurement runs in a fresh subprocess that loads the embeddings, resets its peak RSS
(/proc/self/clear_refs) and reports time and the peak-RSS increase (VmHWM - VmRSS before):
FAISS allocations are invisible to tracemalloc. For the Ray method the driver's increase is
reported, and the largest worker VmHWM separately (it includes the shared-memory pages of the
embeddings that the worker maps from the object store).

Exact ground truth = flat search. Above --flat-full-max rows a full flat run would take hours
(N^2/2 scores), so flat runs for a random subset of --gt-queries query rows against all rows:
its time is extrapolated to N queries and recall/precision are computed on pairs touching
the subset. Recall on all planted pairs is reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

D = 512
THRESHOLD = 0.95
SEED = 0
METHODS = ("flat", "ivf", "clustered-inproc", "clustered")


# --- data -----------------------------------------------------------------------------------


def make_embeddings(n: int, d: int = D, threshold: float = THRESHOLD, seed: int = SEED):
    """Embeddings plus planted (near-duplicate, near-miss) pairs as row-index arrays (k, 2)."""
    rng = np.random.default_rng(seed)
    n_dup, n_miss, n_copy = int(0.04 * n), int(0.01 * n), int(0.005 * n)
    n_base = n - n_dup - n_miss - n_copy
    # Power-law spectrum in a random rotation: variance concentrated in few directions.
    rotation, _ = np.linalg.qr(rng.standard_normal((d, d)))
    scales = np.arange(1, d + 1) ** -0.6
    scales *= np.sqrt(d) / np.linalg.norm(scales)
    basis = (rotation * scales).T.astype(np.float32)
    mean = _unit(rng.standard_normal(d).astype(np.float32))
    n_topics = max(10, n // 1000)
    topics = rng.standard_normal((n_topics, d)).astype(np.float32) @ basis / np.sqrt(d)
    weights = rng.lognormal(0.0, 1.0, n_topics)
    topic = rng.choice(n_topics, n_base, p=weights / weights.sum())

    emb = np.empty((n, d), np.float32)
    for s in range(0, n_base, 65_536):
        e = min(n_base, s + 65_536)
        noise = rng.standard_normal((e - s, d), dtype=np.float32) @ basis / np.sqrt(d)
        emb[s:e] = _unit(noise + topics[topic[s:e]] + 0.8 * mean)

    def planted(src, lo, hi, start):
        cos = rng.uniform(lo, hi, len(src))
        # Perturb along the data's own directions (harder than isotropic noise).
        u = rng.standard_normal((len(src), d), dtype=np.float32) @ basis
        u -= (u * emb[src]).sum(1, keepdims=True) * emb[src]
        u = _unit(u)
        emb[start : start + len(src)] = _unit(cos[:, None] * emb[src] + np.sqrt(1 - cos[:, None] ** 2) * u)
        return np.stack([src, np.arange(start, start + len(src))], axis=1)

    dups = planted(rng.integers(0, n_base, n_dup), threshold + 0.002, 0.999, n_base)
    misses = planted(rng.integers(0, n_base, n_miss), threshold - 0.03, threshold - 0.002, n_base + n_dup)
    src = rng.integers(0, n_base, n_copy)
    emb[n_base + n_dup + n_miss :] = emb[src]
    copies = np.stack([src, np.arange(n_base + n_dup + n_miss, n)], axis=1)

    perm = rng.permutation(n)  # planted rows must not sit at the end
    new_pos = np.empty(n, np.int64)
    new_pos[perm] = np.arange(n)
    fix = lambda p: np.sort(new_pos[p], axis=1)  # noqa: E731
    return np.ascontiguousarray(emb[perm]), np.concatenate([fix(dups), fix(copies)]), fix(misses)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# --- one measurement (subprocess) -----------------------------------------------------------


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", text).group(1))


def measure(args) -> None:
    """Subprocess entry: run one method on the saved embeddings; write pairs + a JSON report."""
    out = Path(args.out)
    ray_seconds = None
    if args.method == "clustered":  # the pipeline's way: cells as Ray tasks
        import ray

        t = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, logging_level="error")
        ray_seconds = time.perf_counter() - t
    import faiss

    from curate.dedupe import _faiss as fx
    from curate.dedupe.clustered import clustered_pairs
    from curate.dedupe.near import ivf_nlist, ivf_nprobe, near_duplicate_pairs

    emb = np.load(args.emb)
    n = len(emb)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    rss0 = _status_kib("VmRSS")
    report: dict = {"method": args.method, "n": n}
    t = time.perf_counter()
    if args.method == "flat-subset":
        queries = gt_queries(n, args.gt_queries)
        index = faiss.IndexFlatIP(emb.shape[1])
        index.add(emb)
        q, j, _ = fx.range_search(index, emb[queries], args.threshold - fx.CANDIDATE_MARGIN)
        i = queries[q]
        keep = (i != j) & (fx.pair_cosines(emb, emb, i, j) >= args.threshold)
        i, j = np.minimum(i, j)[keep], np.maximum(i, j)[keep]
        report["queries"] = queries.tolist()
    elif args.method == "ivf-subset":
        i, j = _ivf_subset(emb, args, report)
    elif args.method in ("clustered", "clustered-inproc"):
        i, j, _, stats = clustered_pairs(emb, args.threshold, use_ray=args.method == "clustered")
        report["stats"] = stats.as_dict()
    else:
        i, j, _ = near_duplicate_pairs(emb, args.threshold, method=args.method)
        if args.method == "ivf":
            report["nlist"] = ivf_nlist(n)
            report["nprobe"] = ivf_nprobe(ivf_nlist(n))
    report["seconds"] = time.perf_counter() - t
    if args.method == "ivf-subset":  # build once + every row's query, extrapolated from the subset
        report["estimated_seconds"] = report["build_seconds"] + report["search_seconds"] * n / report["n_queries"]
    report["peak_rss_delta_bytes"] = (_status_kib("VmHWM") - rss0) * 1024
    report["ray_init_seconds"] = ray_seconds
    report["n_pairs"] = int(len(i))
    np.savez(out.with_suffix(".npz"), i=i, j=j)
    out.with_suffix(".json").write_text(json.dumps(report))


def gt_queries(n: int, k: int) -> np.ndarray:
    return np.sort(np.random.default_rng(SEED + 1).choice(n, min(k, n), replace=False))


def _ivf_subset(emb, args, report):
    """The library's IVF path (near._ivf_candidates), but only some rows query the index."""
    import faiss

    from curate.dedupe import _faiss as fx
    from curate.dedupe.near import _coarse_assign, build_ivf

    n = len(emb)
    t = time.perf_counter()
    index = build_ivf(emb, fill=False)
    nprobe, index.nprobe = index.nprobe, 1
    _, nearest = _coarse_assign(index, emb)
    nearest = np.ascontiguousarray(nearest[:, 0])
    index.add_core(n, faiss.swig_ptr(emb), None, faiss.swig_ptr(nearest))
    index.nprobe = nprobe
    report["build_seconds"] = time.perf_counter() - t
    # Query rows: the exact-subset rows and their true partners (a full run finds a pair from
    # either end, so both ends must query), plus random rows for a steadier time estimate.
    truth = np.load(args.truth)
    extra = np.random.default_rng(SEED + 3).choice(n, args.ivf_queries, replace=False)
    queries = np.unique(np.concatenate([gt_queries(n, args.gt_queries), truth["i"], truth["j"], extra]))
    t = time.perf_counter()
    sims, lists = _coarse_assign(index, emb[queries])
    lims, _, ids = index.range_search_preassigned(emb[queries], args.threshold - fx.CANDIDATE_MARGIN, lists, sims)
    report["search_seconds"] = time.perf_counter() - t
    report["n_queries"] = len(queries)
    report["queries"] = queries.tolist()
    report["nlist"], report["nprobe"] = int(index.nlist), int(index.nprobe)
    i = queries[np.repeat(np.arange(len(queries)), np.diff(lims).astype(np.int64))]
    j = ids.astype(np.int64)
    keep = (i != j) & (fx.pair_cosines(emb, emb, i, j) >= args.threshold)
    return np.unique(np.stack([np.minimum(i, j)[keep], np.maximum(i, j)[keep]], 1), axis=0).T


def generate(args) -> None:
    """Subprocess entry: write emb.npy and planted.npz for one N."""
    emb, dups, misses = make_embeddings(args.n, threshold=args.threshold)
    np.save(Path(args.out) / "emb.npy", emb)
    rng = np.random.default_rng(SEED + 2)
    a, b = rng.integers(0, len(emb), (2, 20_000))
    random_cos = np.einsum("ij,ij->i", emb[a], emb[b])
    np.savez(Path(args.out) / "planted.npz", dups=dups, misses=misses, random_cos=random_cos)


def run_sub(*argv: str, timeout: float | None = None) -> None:
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv]
    subprocess.run(cmd, check=True, timeout=timeout)


# --- evaluation -----------------------------------------------------------------------------


def pair_keys(i, j, n) -> np.ndarray:
    return np.asarray(i, np.int64) * n + np.asarray(j, np.int64)


def evaluate(found: np.ndarray, truth: np.ndarray, n: int, subset: np.ndarray | None):
    """Recall and precision of ``found`` pair keys against ``truth`` (restricted to subset rows)."""
    if subset is not None:
        i, j = found // n, found % n
        found = found[np.isin(i, subset) | np.isin(j, subset)]
    hits = np.isin(found, truth).sum()
    recall = hits / len(truth) if len(truth) else 1.0
    precision = hits / len(found) if len(found) else 1.0
    return float(recall), float(precision)


def bench_size(n: int, args, work: Path) -> list[dict]:
    size_dir = work / f"n{n}"
    size_dir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    run_sub("_generate", "--n", str(n), "--out", str(size_dir), "--threshold", str(args.threshold))
    gen_seconds = time.perf_counter() - t
    planted = np.load(size_dir / "planted.npz")
    random_cos = planted["random_cos"]
    print(
        f"N={n:,}: data generated in {gen_seconds:.0f} s; random-pair cosine median "
        f"{np.median(random_cos):.2f}, p99 {np.quantile(random_cos, 0.99):.2f}; "
        f"{len(planted['dups']):,} planted duplicate pairs, {len(planted['misses']):,} near-misses",
        flush=True,
    )

    def run(method: str) -> dict:
        out = size_dir / method
        run_sub("_measure", "--method", method, "--emb", str(size_dir / "emb.npy"), "--out", str(out),
                "--threshold", str(args.threshold), "--gt-queries", str(args.gt_queries),
                "--ivf-queries", str(args.ivf_queries), "--truth", str(size_dir / "flat-subset.npz"))
        report = json.loads(out.with_suffix(".json").read_text())
        pairs = np.load(out.with_suffix(".npz"))
        report["keys"] = pair_keys(pairs["i"], pairs["j"], n)
        print(f"  {method}: {report['seconds']:.1f} s, {report['n_pairs']:,} pairs", flush=True)
        return report

    rows = []
    full_flat = n <= args.flat_full_max
    if "flat" in args.methods:
        base = run("flat" if full_flat else "flat-subset")
    else:
        base = run("flat-subset")
    subset = None if base["method"] == "flat" else np.array(base["queries"])
    if subset is not None:
        # Full flat = N^2/2 scores (upper block triangle); the subset scored len(subset) * N.
        base["estimated_seconds"] = base["seconds"] * (n / 2) / len(subset)
    truth = base["keys"]
    dups = pair_keys(planted["dups"][:, 0], planted["dups"][:, 1], n)
    misses = pair_keys(planted["misses"][:, 0], planted["misses"][:, 1], n)
    flat_seconds = base.get("estimated_seconds", base["seconds"])
    if "flat" in args.methods:
        rows.append(_row(n, base, flat_seconds, 1.0, 1.0, dups, misses, subset))
    for method in [m for m in args.methods if m != "flat"]:
        if method == "ivf" and n > args.ivf_full_max:
            method = "ivf-subset"
        if method == "clustered-inproc" and n > args.inproc_max:
            continue  # same algorithm as the Ray row; saves minutes at 1M
        report = run(method)
        recall, precision = evaluate(report["keys"], truth, n, subset)
        rows.append(_row(n, report, flat_seconds, recall, precision, dups, misses, subset))
    shutil.rmtree(size_dir, ignore_errors=True)
    return rows


def _row(n, report, flat_seconds, recall, precision, dups, misses, subset) -> dict:
    keys = report["keys"]
    row = {
        "n": n,
        "method": report["method"],
        "seconds": report["seconds"],
        "estimated_seconds": report.get("estimated_seconds"),
        "speedup_vs_flat": flat_seconds / report.get("estimated_seconds", report["seconds"]),
        "peak_rss_delta_mib": report["peak_rss_delta_bytes"] / 2**20,
        "n_pairs": report["n_pairs"],
        "recall": recall,
        "precision": precision,
        "ground_truth": "full flat" if subset is None else f"flat, {len(subset):,} random query rows",
        "planted_recall": _planted_recall(dups, keys, n, report),
        "near_misses_reported": int(np.isin(misses, keys).sum()),
        "ray_init_seconds": report.get("ray_init_seconds"),
        "stats": report.get("stats"),
        "nlist": report.get("nlist"),
        "n_queries": report.get("n_queries"),
        "nprobe": report.get("nprobe"),
    }
    if row["stats"]:
        row["worker_peak_rss_mib"] = (row["stats"]["worker_peak_rss_bytes"] or 0) / 2**20
    return row


def _planted_recall(dups, keys, n, report):
    if report["method"] == "flat-subset":
        return None
    if report["method"] == "ivf-subset":  # pairs whose both ends queried the index
        queried = np.array(report["queries"])
        dups = dups[np.isin(dups // n, queried) & np.isin(dups % n, queried)]
    return float(np.isin(dups, keys).mean())


# --- report ---------------------------------------------------------------------------------


def bytes_per_vector(method: str, n: int, d: int = D) -> str:
    """Memory held per vector by the method's FAISS structures (beyond the input array)."""
    if method.startswith("flat"):
        return f"{4 * d:,} (IndexFlatIP copy)"
    if method.startswith("ivf"):
        return f"{4 * d + 8:,} (IndexIVFFlat: vector + id)"
    cells = "~150 (cell lists, transient)"
    if method == "clustered":
        return f"{cells} + {4 * d:,} (one copy in the Ray object store, shared by the tasks)"
    return cells


def markdown(rows: list[dict]) -> str:
    lines = [
        "| N | method | time (s) | speed-up vs flat | peak RSS Δ (MiB) | index bytes/vector | pairs "
        "| recall | precision | recall (planted) | near-misses reported | ground truth |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["method"] == "flat-subset":
            time_cell = f"≈ {r['estimated_seconds']:,.0f} (est.; subset run {r['seconds']:.0f} s)"
            method = "flat (exact), subset"
            pairs = f"{r['n_pairs']:,} (subset)"
            recall = precision = planted = "exact"
        elif r["method"] == "ivf-subset":
            time_cell = f"≈ {r['estimated_seconds']:,.0f} (est.; build + {r['n_queries']:,} queries: {r['seconds']:.0f} s)"
            method = f"ivf (nlist {r['nlist']}, nprobe {r['nprobe']}), subset"
            pairs = f"{r['n_pairs']:,} (subset)"
            recall = f"{r['recall']:.4f}"
            precision = f"{r['precision']:.4f}"
            planted = f"{r['planted_recall']:.4f} (pairs with both rows queried)"
        else:
            time_cell = f"{r['seconds']:,.1f}"
            method = {"flat": "flat (exact)", "ivf": f"ivf (nlist {r['nlist']}, nprobe {r['nprobe']})",
                      "clustered": "clustered (Ray)", "clustered-inproc": "clustered (in-process)"}[r["method"]]
            pairs = f"{r['n_pairs']:,}"
            recall = f"{r['recall']:.4f}"
            precision = f"{r['precision']:.4f}"
            planted = f"{r['planted_recall']:.4f}"
            if r["estimated_seconds"]:
                time_cell = f"≈ {r['estimated_seconds']:,.0f}"
        mem = f"{r['peak_rss_delta_mib']:,.0f}"
        if r.get("worker_peak_rss_mib"):
            mem += f" (+ worker peak {r['worker_peak_rss_mib']:,.0f})"
        lines.append(
            f"| {r['n']:,} | {method} | {time_cell} | {r['speedup_vs_flat']:.1f}x | {mem} "
            f"| {bytes_per_vector(r['method'], r['n'])} | {pairs} | {recall} | {precision} | {planted} "
            f"| {r['near_misses_reported']} | {r['ground_truth']} |"
        )
    notes = []
    for r in rows:
        s = r.get("stats")
        if s:
            notes.append(
                f"- N={r['n']:,} {r['method']}: {s['n_clusters']} cells, {s['n_partitions']} partitions, "
                f"{s['mean_assign']:.2f} cells/row, {s['n_capped']:,} rows capped at max_assign, "
                f"{s['scored_pairs'] / (r['n'] ** 2 / 2):.4f} of flat's N²/2 scores; k-means "
                f"{s['seconds_kmeans']:.0f} s, assignment {s['seconds_assign']:.0f} s, cell search + "
                f"merge {s['seconds_search']:.0f} s"
                + (f"; ray.init {r['ray_init_seconds']:.1f} s (not in time)" if r["ray_init_seconds"] else "")
            )
    return "\n".join(lines + [""] + notes)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd")
    gen = sub.add_parser("_generate")
    gen.add_argument("--n", type=int, required=True)
    gen.add_argument("--out", required=True)
    gen.add_argument("--threshold", type=float, default=THRESHOLD)
    mes = sub.add_parser("_measure")
    mes.add_argument("--method", required=True)
    mes.add_argument("--emb", required=True)
    mes.add_argument("--out", required=True)
    mes.add_argument("--threshold", type=float, default=THRESHOLD)
    mes.add_argument("--gt-queries", type=int, default=2000)
    mes.add_argument("--ivf-queries", type=int, default=20_000)
    mes.add_argument("--truth", help="flat-subset pairs (for ivf-subset)")
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated N")
    parser.add_argument("--quick", action="store_true", help="N = 10k, 50k")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--threshold", type=float, default=THRESHOLD)
    parser.add_argument("--flat-full-max", type=int, default=200_000,
                        help="above this N, exact flat runs on --gt-queries random queries only")
    parser.add_argument("--gt-queries", type=int, default=4000)
    parser.add_argument("--ivf-full-max", type=int, default=200_000,
                        help="above this N, IVF is built on all rows but queried by --ivf-queries rows")
    parser.add_argument("--ivf-queries", type=int, default=20_000)
    parser.add_argument("--inproc-max", type=int, default=200_000,
                        help="run clustered without Ray (thread pool) only up to this N")
    parser.add_argument("--json", help="also write the rows as JSON here")
    parser.add_argument("--workdir", help="scratch directory (default: a new temp dir)")
    args = parser.parse_args(argv)
    if args.cmd == "_generate":
        return generate(args)
    if args.cmd == "_measure":
        return measure(args)

    sizes = [10_000, 50_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="dedupe-bench-"))
    started = time.perf_counter()
    print(f"load average at start: {os.getloadavg()}", flush=True)
    rows = []
    try:
        for n in sizes:
            rows.extend(bench_size(n, args, work))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - started
    print(f"\nload average at end: {os.getloadavg()}; total wall time {total / 60:.1f} min\n")
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([{k: v for k, v in r.items()} for r in rows], indent=2, default=str))


if __name__ == "__main__":
    main()
