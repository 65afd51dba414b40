"""Benchmark of streaming memory: peak RSS of `curate run` at N and 10x N input rows.

    .venv/bin/python bench/memory.py              # 10k vs 100k rows (8.6 min here with a quiet machine)
    .venv/bin/python bench/memory.py --quick      # 2k vs 20k rows (about 4 min)
    .venv/bin/python bench/memory.py --sizes 10000,100000 --json out.json
    .venv/bin/python bench/memory.py --sizes 10000 --workdir DIR --keep-runs   # leaves DIR/run-10000 to inspect

Download-free path: img2dataset-format shards (64 px JPEGs, 5% failed downloads) are
written straight into RUN/downloaded/ with their _stats.json commit markers and the
download step is marked done (bench/_shards.py), so the run is prepare -> process (inspect
+ the tiny CLIP stage, 1 actor) -> manifest (caption decision, exact + near dedupe over the
CLIP embeddings) -> output (WebDataset + Parquet shards). Shards of 10,000 rows.

Each run is a fresh subprocess; a sampler thread in it polls /proc for the whole process
tree (the driver, and the Ray GCS, raylet and workers it starts: all its descendants) every
0.25 s. Figures: the sum over every process of its VmHWM (each process's own peak: an upper
bound, and it counts the object store's shared pages once per process that maps them); the
largest simultaneous sum of RSS; the same minus file-backed and shared-memory pages
("private"); the driver's own VmHWM; and per step (from RUN/progress.json) the peaks seen
while that step ran. Ratio = figure at 10x N / figure at N; target < 1.5, apart from the
dedupe index (4 bytes x 512 = 2 KiB per vector for a real 512-d CLIP; the tiny CLIP's
embeddings are smaller).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Session, TreeMemory, markdown_table, run_sub  # noqa: E402

SHARD = 10_000
MIB = 2**20


def measure(args) -> dict:
    from rich.console import Console

    from _shards import config_on_copy
    from curate.pipeline.runner import run_pipeline

    run = Path(args.work) / f"run-{args.n}"
    cfg = config_on_copy(
        Path(args.template), run, args.shard_size,
        output={"path": str(run), "formats": ["webdataset", "parquet"], "samples_per_shard": 10_000},
        clip={"model": "curate:tiny-clip", "batch_size": 256, "actors": 1, "num_cpus": 1, "threads": 1},
        dedupe={"threshold": 0.99},
    )

    def phase():
        p = run / "progress.json"
        return json.loads(p.read_text()).get("current") if p.exists() else "start"

    t = time.perf_counter()
    with TreeMemory(label=phase) as mem:
        result = run_pipeline(cfg, Console(quiet=True))
    wall = time.perf_counter() - t
    out = mem.report()
    out.update(n=args.n, wall_seconds=wall, step_seconds=result.summary["step_seconds"],
               kept=result.summary.get("kept"), dedupe_index_bytes=_size(run / "dedupe_index"),
               embedding_dim=_dim(run))
    if not args.keep_runs:
        shutil.rmtree(run, ignore_errors=True)
    return out


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _dim(run: Path) -> int | None:
    import pyarrow.parquet as pq

    for f in sorted((run / "scored").glob("*.parquet")):
        col = pq.read_table(f, columns=["clip_image_embedding"]).column(0).drop_null()
        if len(col):
            return len(col[0].as_py())
    return None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cmd", nargs="?", default="bench")
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--quick", action="store_true", help="2k vs 20k rows")
    parser.add_argument("--json")
    parser.add_argument("--workdir")
    parser.add_argument("--keep-runs", action="store_true",
                        help="leave WORKDIR/run-N behind (scored runs to inspect); needs --workdir")
    for a in ("--template", "--work", "--result"):
        parser.add_argument(a)
    parser.add_argument("--n", type=int)
    parser.add_argument("--shard-size", type=int)
    args = parser.parse_args(argv)
    if args.keep_runs and not args.workdir and args.cmd != "_measure":
        parser.error("--keep-runs needs --workdir (the runs are left there)")
    if args.cmd == "_measure":
        Path(args.result).write_text(json.dumps(measure(args)))
        return
    sizes = [2000, 20000] if args.quick else [int(s) for s in args.sizes.split(",")]
    session = Session()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="memory-bench-"))
    from _shards import write_download_free_run

    results = []
    try:
        for n in sizes:
            shard = min(SHARD, max(1, n // 4))
            template = work / f"shards-{n}"
            t = time.perf_counter()
            if not template.exists():
                write_download_free_run(template / "run", n, shard_size=shard)
            gen = time.perf_counter() - t
            res = run_sub(__file__, "_measure", "--template", str(template), "--work", str(work), "--n", str(n),
                          "--shard-size", str(shard), *(["--keep-runs"] if args.keep_runs else []))
            res["generate_seconds"] = gen
            shutil.rmtree(template, ignore_errors=True)
            results.append(res)
            print(f"  N={n:,}: sum VmHWM {res['peak_hwm_sum_bytes'] / MIB:,.0f} MiB, peak RSS sum "
                  f"{res['peak_rss_sum_bytes'] / MIB:,.0f} MiB, private {res['peak_private_sum_bytes'] / MIB:,.0f} MiB, "
                  f"driver {res['driver_hwm_bytes'] / MIB:,.0f} MiB; run {res['wall_seconds']:.0f} s", flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    session.end()
    keys = [("peak_hwm_sum_bytes", "sum of VmHWM, all processes"), ("peak_rss_sum_bytes", "peak simultaneous RSS sum"),
            ("peak_private_sum_bytes", "peak simultaneous private RSS sum"), ("driver_hwm_bytes", "driver VmHWM")]
    lo, hi = results[0], results[-1]
    table = [[label] + [f"{r[k] / MIB:,.0f}" for r in results] + [f"{hi[k] / lo[k]:.2f}"] for k, label in keys]
    print(markdown_table(["MiB"] + [f"N={r['n']:,}" for r in results] + ["ratio"], table))
    print()
    phases = sorted({p for r in results for p in r["peaks_by_phase"]})
    rows = []
    for p in phases:
        cells = []
        for r in results:
            v = r["peaks_by_phase"].get(p)
            cells.append(f"{v['rss_sum_bytes'] / MIB:,.0f} / {v['driver_rss_bytes'] / MIB:,.0f}" if v else "-")
        rows.append([p] + cells)
    print("peak RSS sum / driver RSS while each step ran (MiB):")
    print(markdown_table(["step"] + [f"N={r['n']:,}" for r in results], rows))
    print()
    for r in results:
        print(f"N={r['n']:,}: steps {r['step_seconds']}; kept {r['kept']}; dedupe index {r['dedupe_index_bytes'] / MIB:.1f} MiB "
              f"(embedding dim {r['embedding_dim']}); processes seen {r['processes']}; top VmHWM by name "
              + ", ".join(f"{k} {v / MIB:,.0f}" for k, v in r["hwm_by_name_bytes"].items()))
    for r in results:
        print(f"\nN={r['n']:,}: processes at the tree's peak ({r['peak_rss_sum_bytes'] / MIB:,.0f} MiB, during "
              f"{r['phase_at_peak']}), RSS / private MiB:")
        for p in r["processes_at_peak"]:
            print(f"  {p['rss_bytes'] / MIB:6,.0f} / {p['private_bytes'] / MIB:6,.0f}  {p['title']}")
    if args.json:
        Path(args.json).write_text(json.dumps({**session.meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
