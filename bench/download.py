"""Benchmark of the download step: `curate run` (download only, no model) vs img2dataset
called directly with the same settings, on the same local HTTP corpus.

    .venv/bin/python bench/download.py              # 3,000 rows, 2 rounds (about 4 min on 2 busy cores)
    .venv/bin/python bench/download.py --quick      # 1,000 rows, 1 round (about 1.5 min)
    .venv/bin/python bench/download.py --n 5000 --rounds 3 --latency 0.1 --json out.json

The corpus is curate.synth.corpus.make_corpus(N) (true/wrong/junk captions, duplicates,
5% 404s, 5% corrupt bodies) served by curate.synth.http_server.CorpusServer on 127.0.0.1
with ``--latency`` seconds added to every request (a slow web server); no traffic leaves
loopback. Every measurement runs in a fresh subprocess:

- ``curate``: ``curate run`` with no model stage (clip/itm/caption off), report off; the
  download figure is RUN/summary.json step_seconds["download"] (the img2dataset call plus
  curate's fetch policy and commit check; Ray is started before the step, as in a run).
  The whole run's wall time is reported beside it.
- ``i2d-ray``: img2dataset.download(distributor="ray") after ray.init(num_cpus=2) (not timed),
  the distributor curate uses. The clock includes ``from img2dataset import download``, which
  curate's step includes too.
- ``i2d-mp``: img2dataset.download(distributor="multiprocessing"), img2dataset's default.

Same settings for all: processes 2, threads 16, image_size 64, resize_mode border, jpg q95,
timeout 5 s, retries 0, shard size N/4 rows, Parquet output, sha256, no EXIF, curate's
user-agent token and X-Robots-Tag directives. Rounds run
the three interleaved (curate, ray, mp, curate, ...) so load changes on the shared machine
hit all of them; the ratio is computed per round and the median reported.
Ratio = curate images/s / img2dataset images/s (images = successfully downloaded rows).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Session, markdown_table, run_sub  # noqa: E402

SETTINGS = dict(processes=2, threads=16, image_size=64, resize_mode="border", encode_quality=95, timeout=5, retries=0)


def _successes(folder: Path) -> tuple[int, int]:
    ok = total = 0
    for stats in folder.glob("*_stats.json"):
        s = json.loads(stats.read_text())
        ok += s["successes"]
        total += s["count"]
    return ok, total


def measure(args) -> dict:
    work = Path(args.work)
    out = work / f"{args.method}-{args.round}"
    if args.method == "curate":
        from rich.console import Console

        from curate.core.config import validate
        from curate.pipeline.runner import run_pipeline

        cfg = validate({
            "input": {"path": str(work / "input.parquet")},
            "output": {"path": str(out), "formats": ["parquet"]},
            "download": {
                "image_size": SETTINGS["image_size"], "resize_mode": SETTINGS["resize_mode"],
                "encode_quality": SETTINGS["encode_quality"], "timeout": SETTINGS["timeout"],
                "retries": SETTINGS["retries"], "processes": SETTINGS["processes"], "threads": SETTINGS["threads"],
                "shard_size": args.shard_size, "allow_private_hosts": True,
            },
            "report": {"enabled": False},
            "ray": {"num_cpus": 2},
        })
        # Time img2dataset's download() call inside the step too, to see where the rest goes.
        import curate.download.download as stage

        inner, call = {}, stage._download

        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return call(*a, **kw)
            finally:
                inner["seconds"] = time.perf_counter() - t0

        stage._download = timed
        t = time.perf_counter()
        result = run_pipeline(cfg, Console(quiet=True))
        wall = time.perf_counter() - t
        ok, total = _successes(out / "downloaded")
        return {"seconds": result.summary["step_seconds"]["download"], "run_wall_seconds": wall,
                "step_seconds": result.summary["step_seconds"], "ok": ok, "rows": total,
                "i2d_call_seconds": inner.get("seconds")}

    distributor = {"i2d-ray": "ray", "i2d-mp": "multiprocessing"}[args.method]
    if distributor == "ray":
        import ray

        ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    # The clock includes importing img2dataset (cv2, albumentations, wandb: seconds on a busy
    # machine), as curate's download step does: its import happens inside the step.
    t = time.perf_counter()
    from img2dataset import download

    imported = time.perf_counter() - t
    download(
        url_list=str(work / "input.parquet"), input_format="parquet", url_col="url", caption_col="caption",
        output_folder=str(out), output_format="parquet", image_size=SETTINGS["image_size"],
        resize_mode=SETTINGS["resize_mode"], encode_format="jpg", encode_quality=SETTINGS["encode_quality"],
        timeout=SETTINGS["timeout"], retries=SETTINGS["retries"], processes_count=SETTINGS["processes"],
        thread_count=SETTINGS["threads"], number_sample_per_shard=args.shard_size, distributor=distributor,
        extract_exif=False, compute_hash="sha256", enable_wandb=False,
        user_agent_token="curate", disallowed_header_directives=["noai", "noimageai", "noindex", "noimageindex"],
    )
    seconds = time.perf_counter() - t
    ok, total = _successes(out)
    return {"seconds": seconds, "ok": ok, "rows": total, "import_seconds": imported, "i2d_call_seconds": seconds - imported}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cmd", nargs="?", default="bench")
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--quick", action="store_true", help="1,000 rows, 1 round")
    parser.add_argument("--methods", default="curate,i2d-ray,i2d-mp")
    parser.add_argument("--json", help="write the results here")
    # subprocess arguments
    parser.add_argument("--method")
    parser.add_argument("--work")
    parser.add_argument("--round", type=int, default=0)
    parser.add_argument("--shard-size", type=int)
    parser.add_argument("--result")
    args = parser.parse_args(argv)
    if args.cmd == "_measure":
        Path(args.result).write_text(json.dumps(measure(args)))
        return
    if args.quick:
        args.n, args.rounds = 1000, 1
    args.shard_size = args.shard_size or max(1, args.n // 4)
    methods = args.methods.split(",")

    import pyarrow.parquet as pq

    from curate.synth.corpus import make_corpus
    from curate.synth.http_server import CorpusServer

    session = Session()
    corpus = make_corpus(args.n, seed=0)
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="download-bench-") as work, CorpusServer(corpus.routes, latency=args.latency) as server:
        pq.write_table(corpus.input_table(server.base_url), Path(work) / "input.parquet")
        for r in range(args.rounds):
            for method in methods:
                res = run_sub(__file__, "_measure", "--method", method, "--work", work, "--round", str(r),
                              "--shard-size", str(args.shard_size))
                res.update(method=method, round=r, images_per_s=res["ok"] / res["seconds"])
                results.append(res)
                print(f"  round {r} {method}: {res['seconds']:.1f} s, {res['ok']}/{res['rows']} images, "
                      f"{res['images_per_s']:.1f} images/s", flush=True)
    summary = summarise(results, methods, args.rounds)
    session.end(prefix=f"N={args.n:,} rows, latency {args.latency} s per request, shard size {args.shard_size}, "
                       f"{args.rounds} round(s), ")
    print(markdown_table(["method", "seconds (per round)", "images/s (per round)", "median images/s"], summary["rows"]))
    print()
    for name, ratio in summary["ratios"].items():
        print(f"ratio curate / {name}: {ratio['median']:.2f} (per round: {', '.join(f'{x:.2f}' for x in ratio['per_round'])})")
    curate_runs = [r for r in results if r["method"] == "curate"]
    for r in results:
        print(f"round {r['round']} {r['method']}: img2dataset download() call {r['i2d_call_seconds']:.1f} s of {r['seconds']:.1f} s"
              + (f" (import {r['import_seconds']:.1f} s)" if "import_seconds" in r else ""))
    if curate_runs:
        print("curate step seconds per round: " + "; ".join(json.dumps(r["step_seconds"]) for r in curate_runs))
    if args.json:
        Path(args.json).write_text(json.dumps({**session.meta, "n": args.n,
                                               "latency": args.latency, "results": results, "summary": summary}, indent=2))


def summarise(results: list[dict], methods: list[str], rounds: int) -> dict:
    rows, rate = [], {}
    for m in methods:
        runs = [r for r in results if r["method"] == m]
        rate[m] = {r["round"]: r["images_per_s"] for r in runs}
        rows.append([m, ", ".join(f"{r['seconds']:.1f}" for r in runs), ", ".join(f"{r['images_per_s']:.1f}" for r in runs),
                     f"{statistics.median(rate[m].values()):.1f}"])
    ratios = {}
    if "curate" in rate:
        for m in methods:
            if m != "curate":
                per = [rate["curate"][r] / rate[m][r] for r in range(rounds)]
                ratios[m] = {"per_round": per, "median": statistics.median(per)}
    return {"rows": rows, "ratios": ratios}


if __name__ == "__main__":
    main()
