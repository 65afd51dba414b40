"""The driver's peak memory over a whole `curate run` at N and 10x N input rows: nothing on the
driver may grow with the rows (target: at most 1.2x for 10x the rows).

    .venv/bin/python bench/driver_memory.py                        # 1M vs 10M rows
    .venv/bin/python bench/driver_memory.py --sizes 100000,1000000 # quicker
    .venv/bin/python bench/driver_memory.py --nodes 1,2 --sizes 1000000   # a 1-node vs a 2-node Ray cluster

Download-free and model-free at size, by replicating one scored template:
one template of T rows (bench/_shards.py's rendered images, 5% download failures) is scored
for real once (inspect, caption rules, the tiny CLIP). A run of N rows is N/T input files of
the template's rows; its download shards and scored parts are the template's, one per file,
with the file's sample_ids. Copies after the first are *exact* copies of the first (same
bytes, same embeddings) and carry no image bytes: the decision still runs over every row
(every rule, the caption decision, dedupe's hash shuffle over all candidates), but the near
search sees one representative per picture and the output step writes the first copy's
kept images only. Prepare, the manifest step (every phase) and the output step run for real;
download and score find their work committed. Each run is a fresh subprocess; the driver's
VmHWM is read from /proc, and each step's time is split into its Ray tasks' own time
(summed) and the rest (the driver, scheduling, waiting).

``--nodes 1,2`` runs each size on a Ray cluster started for it (tests/cluster.py): one node
with both cores, then a head and a worker node with one core each. The worker shares this
machine's disk, so the run directory stays local with ``storage.shared_filesystem: true``.
Two cores cannot show a speed-up; what the comparison shows is whether the tasks spread over
the nodes and what the second node costs (scheduling, object transfer) per row.
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

MIB = 2**20
TEMPLATE_ROWS = 10_000


def _config(run: Path, inputs: Path, extra: dict | None = None):
    from curate.core.config import validate

    return validate({
        "input": {"path": str(inputs), "format": "parquet"},
        "output": {"path": str(run), "formats": ["webdataset", "parquet"], "samples_per_shard": 10_000},
        "download": {"image_size": 64, "shard_size": TEMPLATE_ROWS, "allow_private_hosts": True},
        "filters": {"min_side": 32},
        "clip": {"model": "curate:tiny-clip", "batch_size": 256, "num_cpus": 1, "threads": 1},
        "dedupe": {"threshold": 0.99},
        "report": {"enabled": False},
        **(extra or {}),
    })


def make_template(work: Path) -> Path:
    """A scored download-free run of TEMPLATE_ROWS rows; its scored parts merged into one."""
    import pyarrow.parquet as pq
    from rich.console import Console

    from _shards import write_download_free_run
    from curate.core import storage
    from curate.pipeline.runner import run_pipeline

    template = work / "template"
    if (template / "ready").exists():
        return template
    shutil.rmtree(template, ignore_errors=True)
    inputs = write_download_free_run(template / "run", TEMPLATE_ROWS, shard_size=TEMPLATE_ROWS)
    (template / "input").mkdir()
    shutil.move(str(inputs), template / "input" / "part-00000.parquet")
    run_pipeline(_config(template / "run", template / "input"), Console(quiet=True))
    parts = storage.list_files(str(template / "run" / "scored"), ".parquet", recursive=True)
    pq.write_table(storage.read_parquet(parts).sort_by("sample_id"), template / "scored.parquet")
    (template / "ready").write_text("")
    return template


def replicate(template: Path, run: Path, inputs: Path, copies: int) -> None:
    """``copies`` input files and their committed download shards and scored parts."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    width = max(5, len(str(copies - 1)))
    source = pq.read_table(template / "input" / "part-00000.parquet")
    scored = pq.read_table(template / "scored.parquet")
    shard0 = template / "run" / "downloaded" / "00000.parquet"
    stats = json.loads((template / "run" / "downloaded" / "00000_stats.json").read_text())
    inputs.mkdir(parents=True)
    (run / "downloaded").mkdir(parents=True)
    (run / "_done").mkdir(parents=True)
    for c in range(copies):
        name = f"{c:0{width}d}"
        pq.write_table(source, inputs / f"part-{c:05d}.parquet")
        ids = pc.binary_join_element_wise(pa.scalar(f"{c:05d}"), pc.utf8_slice_codeunits(scored.column("sample_id"), 5), "")
        copy = scored.set_column(scored.schema.get_field_index("sample_id"), "sample_id", ids)
        copy = copy.set_column(copy.schema.get_field_index("download_shard"), "download_shard",
                               pa.array([name] * copy.num_rows, pa.string()))
        (run / "scored" / name).mkdir(parents=True)
        pq.write_table(copy, run / "scored" / name / "part-template.parquet")
        if c == 0:
            shutil.copy(shard0, run / "downloaded" / f"{name}.parquet")
        else:  # the rows, without their bytes: nothing reads a copy's images (they are duplicates)
            pq.write_table(pa.table({"sample_id": ids}), run / "downloaded" / f"{name}.parquet")
        (run / "downloaded" / f"{name}_stats.json").write_text(json.dumps(stats))
    (run / "_done" / "download").write_text("{}")


def measure(args) -> dict:
    from rich.console import Console

    from curate.pipeline.runner import run_pipeline

    run, inputs = Path(args.work) / f"run-{args.n}", Path(args.work) / f"input-{args.n}"
    for path in (run, inputs):
        shutil.rmtree(path, ignore_errors=True)
    t = time.perf_counter()
    replicate(Path(args.template), run, inputs, args.n // TEMPLATE_ROWS)
    made = time.perf_counter() - t
    extra = {"ray": {"address": args.address}, "storage": {"shared_filesystem": True}} if args.address else {}
    if args.partition_rows:
        extra["manifest"] = {"partition_rows": args.partition_rows}
    cfg = _config(run, inputs, extra)
    with TreeMemory(label=lambda: json.loads((run / "progress.json").read_text()).get("current")
                    if (run / "progress.json").exists() else "start") as mem:
        t = time.perf_counter()
        result = run_pipeline(cfg, Console(quiet=True))
        wall = time.perf_counter() - t
    out = mem.report()
    out.update(n=args.n, wall_seconds=wall, replicate_seconds=made, step_seconds=result.summary["step_seconds"],
               task_seconds=result.summary["task_seconds"], partitions=result.summary["partitions"],
               kept=result.summary["kept"], rows_in=result.summary["rows_in"])
    shutil.rmtree(run, ignore_errors=True)
    shutil.rmtree(inputs, ignore_errors=True)
    return out


def _node_counts(spec: str | None) -> list[int]:
    return [int(k) for k in spec.split(",")] if spec else [0]  # 0: local Ray started by the run


def _measure_on(nodes: int, template: Path, work: Path, n: int, partition_rows: int | None) -> dict:
    """One measurement in a fresh process; with ``nodes``, on a cluster of that many nodes."""
    argv = ["_measure", "--template", str(template), "--work", str(work), "--n", str(n)]
    argv += ["--partition-rows", str(partition_rows)] if partition_rows else []
    if not nodes:
        return run_sub(__file__, *argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from cluster import Cluster

    cores = 2
    with Cluster(head_cpus=cores // nodes) as cluster:
        for _ in range(nodes - 1):
            cluster.add_worker(cpus=cores // nodes, private=False)
        return {**run_sub(__file__, *argv, "--address", cluster.address), "nodes": nodes}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cmd", nargs="?", default="bench")
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--nodes", help="node counts of a Ray cluster started per run, e.g. 1,2")
    parser.add_argument("--partition-rows", type=int, help="manifest.partition_rows (default: the config's, 1M)")
    parser.add_argument("--workdir")
    parser.add_argument("--json")
    for a in ("--template", "--work", "--result", "--address"):
        parser.add_argument(a)
    parser.add_argument("--n", type=int)
    args = parser.parse_args(argv)
    if args.cmd == "_measure":
        Path(args.result).write_text(json.dumps(measure(args)))
        return
    session = Session()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="driver-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    template = make_template(work)
    print(f"template of {TEMPLATE_ROWS:,} rows scored in {time.perf_counter() - t:.0f} s", flush=True)
    results = []
    for n, nodes in [(int(s), k) for s in args.sizes.split(",") for k in _node_counts(args.nodes)]:
        res = _measure_on(nodes, template, work, n, args.partition_rows)
        results.append(res)
        print(f"  N={n:,}{f' on {nodes} node(s)' if nodes else ''}: driver VmHWM {res['driver_hwm_bytes'] / MIB:,.0f} MiB; run {res['wall_seconds']:.0f} s "
              f"({res['partitions']} partitions); steps {res['step_seconds']}; in tasks {res['task_seconds']}",
              flush=True)
    session.end()
    lo, hi = results[0], results[-1]
    heads = [f"N={r['n']:,}" + (f", {r['nodes']} node(s)" if r.get("nodes") else "") for r in results]
    print(markdown_table(["MiB"] + heads + ["ratio"], [
        ["driver VmHWM"] + [f"{r['driver_hwm_bytes'] / MIB:,.0f}" for r in results]
        + [f"{hi['driver_hwm_bytes'] / lo['driver_hwm_bytes']:.2f}"],
        ["peak RSS sum, all processes"] + [f"{r['peak_rss_sum_bytes'] / MIB:,.0f}" for r in results]
        + [f"{hi['peak_rss_sum_bytes'] / lo['peak_rss_sum_bytes']:.2f}"],
    ]))
    rows = []
    for r in results:
        for step in ("prepare", "manifest", "output"):
            seconds = r["step_seconds"].get(step)
            tasks = (r["task_seconds"].get("prepare") if step == "prepare"
                     else sum(v for k, v in r["task_seconds"].items() if k.startswith("manifest/")) if step == "manifest"
                     else None)
            rate = f"{r['rows_in'] / seconds:,.0f}" if seconds else "-"
            rows.append([f"{r['n']:,}" + (f" ({r['nodes']} node(s))" if r.get("nodes") else ""), step, f"{seconds:.1f}" if seconds else "-", rate,
                         f"{tasks:.1f}" if tasks is not None else "-",
                         f"{r['rows_in'] / tasks:,.0f}" if tasks else "-"])
    print(markdown_table(["rows", "step", "wall s", "rows/s", "task s (summed)", "rows per task-second"], rows))
    if args.json:
        Path(args.json).write_text(json.dumps({**session.meta, "results": results}, indent=2))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
