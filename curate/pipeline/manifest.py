"""Step 4: decide every row from stored results and write the manifest (curate.flow.decision).

The manifest has one row per input row (a documents run: per input document, plus one per
image in RUN/manifest_images/). No model runs, so ``curate refilter`` re-decides a finished
run at new thresholds by running this step again.
"""

from __future__ import annotations

import pyarrow as pa

from curate.core.progress import Progress
from curate.core.rundir import RunDir
from curate.flow.decision import decide
from curate.flow.plan import Plan


def build_manifest(plan: Plan, run: RunDir, progress: Progress | None = None) -> int:
    """Decide every row, write RUN/manifest/ (and what each global stage keeps); returns rows."""
    con = decide(run, plan, progress)
    try:
        total = plan.kind.write_manifest(con, run, plan)
        for stage in plan.globals:
            stage.finish(con, run)
    finally:
        con.close()
    return total


def preview(plan: Plan, run: RunDir) -> dict[str, pa.Table]:
    """The manifest tables ``plan`` would give for a scored run, in memory; nothing is written
    (``manifest``; a documents run also ``manifest_images``)."""
    con = decide(run, plan)
    try:
        return plan.kind.preview(con, run, plan)
    finally:
        con.close()
