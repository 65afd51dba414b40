"""Where the driver's memory goes in the manifest step, sub-step by sub-step.

    .venv/bin/python bench/manifest_memory.py RUN [RUN ...]

RUN is a scored run directory (for example one that ``bench/memory.py --workdir DIR`` or a
``curate run`` left behind). For each RUN, in a fresh process, it runs the manifest step's
parts in order (curate.pipeline.manifest: open the views, the caption decision, the
``decided`` table, dedupe, ``manifest_final``, reading it back in row groups) and prints
the driver's RSS and peak RSS (VmHWM) after each, so a growth can be pinned on its part.
Two runs of 10x different size side by side give the ratio per part.
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
    import ray
    import yaml

    from curate.pipeline import manifest as m
    from curate.pipeline.config import validate
    from curate.pipeline.rundir import RunDir
    from curate.stages.capfilt import decide_all
    from curate.stages.dedupe_stage import find_duplicates

    run = RunDir(run_root)
    cfg = validate(yaml.safe_load(Path(run.config).read_text()))
    ray.init(num_cpus=2, include_dashboard=False, logging_level="error")
    out = {"start": _mem()}
    con = m.open_run_views(run, cfg)
    out["views"] = _mem()
    decide_all(con, cfg)
    out["caption decision"] = _mem()
    con.execute(f"CREATE OR REPLACE TABLE decided AS {m.decided_sql(cfg)}")
    out["decided table"] = _mem()
    con.register("duplicates", find_duplicates(con, cfg, run))
    out["dedupe"] = _mem()
    con.execute(f"CREATE OR REPLACE TABLE manifest_final AS {m.final_sql(cfg)}")
    out["manifest_final table"] = _mem()
    rows = sum(b.num_rows for b in con.execute("SELECT * FROM manifest_final ORDER BY sample_id")
               .to_arrow_reader(m.MANIFEST_ROW_GROUP))
    out["read back"] = _mem()
    return {"rows": rows, "mib": out}


def main() -> None:
    if sys.argv[1:2] == ["_measure"]:  # _measure RUN --result FILE (bench/_common.run_sub)
        Path(sys.argv[4]).write_text(json.dumps(measure(sys.argv[2])))
        return
    results = [run_sub(__file__, "_measure", root) for root in sys.argv[1:]]
    header = "| after | " + " | ".join(f"{r['rows']:,} rows: RSS / peak MiB" for r in results) + " |"
    print(header)
    print("|---|" + "---|" * len(results))
    for part in results[0]["mib"]:
        print(f"| {part} | " + " | ".join("{:,} / {:,}".format(*r["mib"][part]) for r in results) + " |")


if __name__ == "__main__":
    main()
