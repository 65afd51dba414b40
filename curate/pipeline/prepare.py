"""Step 1: read every input row, give it a sample_id, block what must not be fetched.

One Ray task per input part (an input file, or a run of row groups of a large Parquet file:
curate.core.inputs.plan_input_parts). Each task reads its part through the run's kind,
checks every URL, and writes ``RUN/rows/part-FFFFF-SSSS.parquet`` (every image row, with
``blocked_reason``) and its rows to download as ``RUN/download_list/part-FFFFF-SSSS-KKKKK``
parts of at most ``download.shard_size`` rows (one part becomes one download shard, the unit
of download resume); a documents run also writes ``RUN/documents/``. A task commits its part
with a marker (``RUN/_done/prepare-parts/<part>.json``, its counts), so a resumed run redoes
only the parts that have none. The driver holds the list of parts and their counts: nothing
that grows with the rows.
"""

from __future__ import annotations

import json
import time

import pyarrow as pa
import pyarrow.compute as pc

from curate.core import commits, storage
from curate.core.config import DownloadConfig
from curate.core.inputs import InputError, InputFile, InputPart, plan_input_parts
from curate.core.rundir import RunDir
from curate.flow.kind import Kind
from curate.flow.plan import Plan
from curate.schemas import reasons as R
from curate.schemas.columns import BLOCKED_REASON
from curate.stages.browser_url import browser_url
from curate.stages.precheck import check_url

TASK_CPUS = 0.5


def _with_precheck(rows: pa.Table, download: DownloadConfig) -> tuple[pa.Table, pa.Array]:
    """(rows with ``blocked_reason``, the URL to fetch for each row). The check judges the
    URL as a browser would request it (curate.stages.browser_url); rows keep the input's."""
    allow, networks = download.allow_private_hosts, tuple(download.allowed_networks)
    fetch = [browser_url(u) for u in rows.column("url").to_pylist()]
    reasons = [R.URL_INVALID() if f is None and u else check_url(f, allow, networks)
               for u, f in zip(rows.column("url").to_pylist(), fetch)]
    return rows.append_column(BLOCKED_REASON, pa.array(reasons, pa.string())), pa.array(fetch, pa.string())


def part_marker(run: RunDir, part: InputPart) -> str:
    return storage.join(run.root, "_done", "prepare-parts", f"{part.name}.json")


def prepare_part(kind: Kind, run: RunDir, part: InputPart) -> dict:
    """One input part -> its rows/ file and download-list parts; returns its counts (Ray task).

    ``{"part", "rows", "blocked", "download_parts": [names]}``; a part committed by an
    earlier attempt is not read again."""
    marker = part_marker(run, part)
    if storage.exists(marker):
        return json.loads(storage.read_text(marker))
    started = time.perf_counter()
    cfg = kind.cfg.download
    rows, fetch_urls = _with_precheck(kind.read(part, run), cfg)
    commits.write_parquet(storage.join(run.rows, f"part-{part.name}.parquet"), rows)  # + its commit record
    fetched = rows.set_column(rows.schema.get_field_index("url"), "url", fetch_urls)
    to_fetch = fetched.filter(pc.is_null(rows.column("blocked_reason"))).select(list(kind.download_columns))
    names = []
    for k, start in enumerate(range(0, to_fetch.num_rows, cfg.shard_size)):
        name = f"part-{part.name}-{k:05d}.parquet"
        commits.write_parquet(storage.join(run.download_list, name), to_fetch.slice(start, cfg.shard_size))
        names.append(name)
    counts = {"part": part.name, "rows": rows.num_rows, "blocked": rows.num_rows - to_fetch.num_rows,
              "download_parts": names, "seconds": round(time.perf_counter() - started, 3)}
    storage.write_text(marker, json.dumps(counts))
    return counts


def prepare(plan: Plan, run: RunDir, files: list[InputFile]) -> dict:
    """Prepare every input part as a Ray task; returns the run's counts. A part that can't be
    read stops the run with its InputError (the parts' own messages name file and row)."""
    import ray

    # Parts of about a partition of the manifest step (a partition is whole parts).
    parts = plan_input_parts(files, plan.cfg.input, plan.cfg.manifest.partition_rows)
    task = ray.remote(num_cpus=TASK_CPUS, max_retries=2, retry_exceptions=[OSError])(prepare_part)
    futures = [task.remote(plan.kind, run, part) for part in parts]
    try:
        results = ray.get(futures)
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, InputError):
            raise error.cause from None  # the input's own message, not a remote traceback
        raise
    return {
        "rows": sum(r["rows"] for r in results),
        "blocked": sum(r["blocked"] for r in results),
        "task_seconds": round(sum(r.get("seconds", 0.0) for r in results), 3),  # benchmarks: work done in tasks
        "parts": [{"part": r["part"], "rows": r["rows"], "download_parts": r["download_parts"]} for r in results],
    }
