"""Where the driver's memory goes in the manifest step, sub-step by sub-step.

    .venv/bin/python bench/manifest_memory.py RUN [RUN ...]

    .venv/bin/python bench/manifest_memory.py --replicate 10,100 RUN   # RUN's rows x10 and x100, no dedupe
    .venv/bin/python bench/manifest_memory.py --memory-limit 128MB --replicate 100 RUN   # at another manifest.memory_limit

RUN is a scored run directory (for example one that ``bench/memory.py --workdir DIR
--keep-runs`` or a ``curate run`` left behind). For each RUN, in a fresh process, it runs
the manifest step's parts in order (curate.flow.decision.decide: open the views, the image
decision, the kind's caption decision, the ``final`` table, reading the manifest back in row
groups; dedupe is measured by bench/dedupe.py) and prints the driver's RSS and peak RSS (VmHWM) after each, so a growth can be
pinned on its part. Two runs of 10x different size side by side give the ratio per part.

``--replicate 10,100``: instead, measure copies of RUN with its rows/ and scored/ parts
repeated 10 and 100 times under new sample_ids (no images, no model: seconds to make),
with dedupe off, so only the DuckDB parts grow. This reaches 1M rows where a real
score step would take half an hour here.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_sub  # noqa: E402

MIB = 1024


def _mem() -> tuple[int, int]:
    status = Path(f"/proc/{os.getpid()}/status").read_text()
    field = lambda name: int(status.split(f"{name}:")[1].split()[0]) // MIB  # noqa: E731
    return field("VmRSS"), field("VmHWM")


def measure(run_root: str) -> dict:
    import duckdb
    import ray
    import yaml

    from curate.core.config import validate
    from curate.core.rundir import RunDir
    from curate.flow import decision
    from curate.flow.pairs import MANIFEST_ROW_GROUP
    from curate.flow.plan import make_plan

    run = RunDir(run_root)
    cfg = validate(yaml.safe_load(Path(run.config).read_text()))
    plan = make_plan(cfg)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="error")
    out = {"start": _mem()}
    con = decision.open_run_views(run, plan)
    out["views"] = _mem()
    # The parts of curate.flow.decision.decide and the pairs manifest, one at a time.
    image_status, image_reason = decision.case_sql(decision.image_rules(plan))
    global_status, global_reason = decision.case_sql(plan.rules("global"), prior="d")
    parts = {
        "image decision": lambda: con.execute(
            f"CREATE OR REPLACE TABLE image_decisions AS SELECT sample_id, {image_status} AS status, "
            f"{image_reason} AS reason FROM joined"),
        "caption decision": lambda: plan.kind.decide(con, plan),
        "final table (dedupe off)": lambda: con.execute(
            f"CREATE OR REPLACE TABLE final AS SELECT d.sample_id, {global_status} AS status, "
            f"{global_reason} AS reason, NULL::VARCHAR AS duplicate_of, NULL::VARCHAR AS duplicate_kind FROM decided d"),
        "read back": lambda: sum(b.num_rows for b in con.execute(plan.kind.manifest_sql(plan))
                                 .to_arrow_reader(MANIFEST_ROW_GROUP)),  # one batch at a time, as the step does
    }
    for part, run_part in parts.items():
        try:
            run_part()
        except duckdb.OutOfMemoryException:  # past manifest.memory_limit: the run would stop here
            out[part] = None
            break
        out[part] = _mem()
    return {"rows": _rows(run), "limit": cfg.manifest.memory_limit, "mib": out}


def _rows(run) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in Path(run.rows).glob("*.parquet"))


def replicate(src: Path, dst: Path, copies: int, memory_limit: str | None = None) -> Path:
    """``dst``: ``src``'s rows/ and scored/ parts ``copies`` times, sample_ids prefixed with
    the copy number (order kept), and its config with dedupe off (and ``memory_limit`` as
    manifest.memory_limit when given)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import yaml

    for sub in ("rows", "scored"):
        (dst / sub).mkdir(parents=True)
        for part in sorted((src / sub).glob("*.parquet")):
            table = pq.read_table(part)
            ids = table.column("sample_id")
            for copy in range(copies):
                renamed = pc.binary_join_element_wise(pa.scalar(f"{copy:03d}"), ids, "")
                pq.write_table(table.set_column(table.column_names.index("sample_id"), "sample_id", renamed),
                               dst / sub / f"{copy:03d}-{part.name}")
    cfg = yaml.safe_load((src / "config.yaml").read_text())
    cfg["output"]["path"] = str(dst)
    cfg["dedupe"]["enabled"] = False
    if memory_limit:
        cfg.setdefault("manifest", {})["memory_limit"] = memory_limit
    (dst / "config.yaml").write_text(yaml.safe_dump(cfg))
    return dst


def main() -> None:
    if sys.argv[1:2] == ["_measure"]:  # _measure RUN --result FILE (bench/_common.run_sub)
        Path(sys.argv[4]).write_text(json.dumps(measure(sys.argv[2])))
        return
    roots, copies, limit = sys.argv[1:], [], None
    if roots[:1] == ["--memory-limit"]:
        limit, roots = roots[1], roots[2:]
    if roots[:1] == ["--replicate"]:
        import shutil
        import tempfile

        copies, src = [int(c) for c in roots[1].split(",")], Path(roots[2])
        work = Path(tempfile.mkdtemp(prefix="manifest-memory-"))
        roots = [str(replicate(src, work / f"x{c}", c, limit)) for c in copies]
    try:
        results = [run_sub(__file__, "_measure", root) for root in roots]
    finally:
        if copies:
            shutil.rmtree(work, ignore_errors=True)
    header = "| after | " + " | ".join(f"{r['rows']:,} rows ({r['limit']}): RSS / peak MiB" for r in results) + " |"
    print(header)
    print("|---|" + "---|" * len(results))
    for part in max((r["mib"] for r in results), key=len):
        cells = [r["mib"].get(part, "not run") for r in results]
        print(f"| {part} | " + " | ".join(c if isinstance(c, str) else "out of memory" if c is None
                                          else "{:,} / {:,}".format(*c) for c in cells) + " |")


if __name__ == "__main__":
    main()
