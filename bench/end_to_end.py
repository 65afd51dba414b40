"""Benchmark of the whole demo pipeline at growing N: cost per sample must stay flat.

    .venv/bin/python bench/end_to_end.py                 # N = 1k, 5k, 20k (about 9 min here)
    .venv/bin/python bench/end_to_end.py --quick         # N = 500, 2k (about 5 min)
    .venv/bin/python bench/end_to_end.py --sizes 1000,10000,50000 --json out.json

Each N is `curate demo` (curate.demo.run_demo: make_corpus(N), the local HTTP server on
127.0.0.1 with 0.01 s latency, the demo config: download, cheap rules, tiny BLIP captioner
(5 captions per image), tiny CLIP, tiny BLIP ITM, CapFilt decision, exact + near dedupe,
WebDataset + Parquet output) in a fresh subprocess, with the HTML report off
(``report.enabled=false``; it is not a pipeline stage). Figures per N: samples/s over the
run (RUN/summary.json wall time), seconds per step (step_seconds) and rows/s per step
(RUN/progress.json), and cost per sample (ms) = seconds / N. The ratio printed is cost per
sample at the largest N / at the smallest N, per step and overall (flat = 1.0; fixed
start-up costs, Ray start, model loads, amortise, so small N looks worse).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Session, markdown_table, run_sub  # noqa: E402

STEPS = ("prepare", "download", "score", "manifest", "output")


def measure(args) -> dict:
    from rich.console import Console

    from curate.demo import run_demo

    out = Path(args.work) / f"demo-{args.n}"
    t = time.perf_counter()
    evaluation = run_demo(out, args.n, 0, ["report.enabled=false"], Console(quiet=True))
    total = time.perf_counter() - t
    run = out / "run"
    summary = json.loads((run / "summary.json").read_text())
    progress = json.loads((run / "progress.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return {
        "n": args.n, "wall_seconds": summary.get("wall_seconds"), "demo_seconds": total,
        "step_seconds": summary["step_seconds"], "kept": evaluation["kept"],
        "progress": {s["name"]: {"rows_per_s": s.get("rows_per_s"), "done": s.get("done"), "total": s.get("total")}
                     for s in progress["steps"]},
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cmd", nargs="?", default="bench")
    parser.add_argument("--sizes", default="1000,5000,20000")
    parser.add_argument("--quick", action="store_true", help="N = 500, 2000")
    parser.add_argument("--json")
    parser.add_argument("--work")
    parser.add_argument("--result")
    parser.add_argument("--n", type=int)
    args = parser.parse_args(argv)
    if args.cmd == "_measure":
        Path(args.result).write_text(json.dumps(measure(args)))
        return
    sizes = [500, 2000] if args.quick else [int(s) for s in args.sizes.split(",")]
    session = Session()
    work = Path(tempfile.mkdtemp(prefix="e2e-bench-"))
    results = []
    try:
        for n in sizes:
            res = run_sub(__file__, "_measure", "--work", str(work), "--n", str(n))
            res["load"] = list(os.getloadavg())
            results.append(res)
            wall = res["wall_seconds"] or sum(res["step_seconds"].values())
            print(f"  N={n:,}: {wall:.0f} s, {n / wall:.1f} samples/s, steps {res['step_seconds']}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    session.end(suffix=" (includes corpus generation)")
    lo, hi = results[0], results[-1]
    rows = []
    for step in STEPS + ("total",):
        cells = []
        for r in results:
            s = (r["wall_seconds"] or sum(r["step_seconds"].values())) if step == "total" else r["step_seconds"].get(step, 0.0)
            rate = r["progress"].get(step, {}).get("rows_per_s") if step != "total" else r["n"] / s
            cells.append(f"{s:.1f} s, {1000 * s / r['n']:.2f} ms" + (f", {rate:.0f} rows/s" if rate else ""))
        cost = lambda r: ((r["wall_seconds"] or sum(r["step_seconds"].values())) if step == "total"  # noqa: E731
                          else r["step_seconds"].get(step, 0.0)) / r["n"]
        ratio = cost(hi) / cost(lo) if cost(lo) else float("nan")
        rows.append([step] + cells + [f"{ratio:.2f}"])
    print(markdown_table(["step"] + [f"N={r['n']:,}: seconds, ms/sample, rows/s" for r in results]
                         + [f"cost ratio N={hi['n']:,} / N={lo['n']:,}"], rows))
    for r in results:
        print(f"N={r['n']:,}: kept {r['kept']}, load average after {r['load']}")
    if args.json:
        Path(args.json).write_text(json.dumps({**session.meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
