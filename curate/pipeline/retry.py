"""``curate retry RUN``: download again only the rows whose download failed for given reasons.

img2dataset and DataComp downloads end at 91-94% success and have no way to fetch again only
what failed (img2dataset #242, DataComp #3). A retry pass (curate.pipeline.passes):

1. select: a Ray task per manifest partition lists the rows whose latest download failed
   with one of ``reasons`` (default ``TRANSIENT_REASONS``: timeouts, connection errors,
   HTTP 429 and 5xx, ``shard_timeout``) into ``RUN/retry/KK/download_list/``, per input part,
   each row with its next ``attempt``;
2. download them with img2dataset into ``RUN/downloaded/retry-KK/`` (new shards: those
   already written are never rewritten);
3. score them (every enabled stage) into ``RUN/scored/retry-KK/``;
4. decide the whole run again (dedupe included: a recovered image may duplicate another)
   and write the manifest, the output shards whose content changed, the summary and report.

The manifest keeps one row per input row; a row's latest download decides it, and its
``attempts`` counts its downloads. The summary (and report) lists what each pass recovered.
Each step is committed (``RUN/_done/retry-KK-select``, ``-download``, scored parts, and
``retry-KK`` at the end), so a killed retry resumes with the same command.
"""

from __future__ import annotations

import json
import os
import time

import yaml
from rich.console import Console

from curate.core import lifeline, runlock, storage
from curate.core.config import ConfigError, apply_overrides, parse_override, validate
from curate.core.progress import CommittedRows, Progress, parquet_rows, stats_rows
from curate.core.ray_session import check_run_directory, start_ray
from curate.core.rundir import RunDir
from curate.core.terminal import quiet_ray_data
from curate.flow.decision import open_views
from curate.flow.plan import Plan, make_plan
from curate.pipeline import passes
from curate.pipeline.decide import TASK_CPUS, Partition, plan_partitions
from curate.pipeline.runner import RunResult, _stops_cleanly, check_no_open_extend, finish, size_model_pools
from curate.pipeline.score import run_score
from curate.download.download import committed_shards, run_download
from curate.download.download_errors import TRANSIENT_REASONS, ReasonSet


# Keys a retry may set for itself (--set): how rows are fetched, never what is decided. The
# run's config.yaml is unchanged (a slower, politer retry of a rate-limited host, say).
RETRY_KEYS = ("download.timeout", "download.retries", "download.threads", "download.processes",
              "download.shard_timeout", "download.max_fetch_seconds", "download.max_per_host",
              "download.per_host_rps", "download.max_retry_after", "ray.")


def finished_run_config(run: RunDir, overrides: list[str] = ()):
    """The config a finished run was made with, with ``overrides`` (``key=value`` of
    RETRY_KEYS) applied; ConfigError if RUN is not a finished run or a key is not allowed."""
    check_no_open_extend(run, "retry it")  # an extend killed in its download: say so, not "not finished"
    if not storage.exists(run.config) or not storage.list_files(run.manifest, ".parquet") \
            or not storage.exists(run.marker("download")):
        raise ConfigError(f"{run.root} is not a finished curate run (no config.yaml, manifest/ or finished "
                          "download); run `curate run` on it first")
    stored = yaml.safe_load(storage.read_text(run.config))
    for text in overrides:
        key = ".".join(parse_override(text)[0])
        if not key.startswith(RETRY_KEYS):
            allowed = ", ".join(k + "*" if k.endswith(".") else k for k in RETRY_KEYS)  # a section as ray.*
            raise ConfigError(f"--set {key}: a retry can set only {allowed} (how rows are fetched); "
                              "other keys need `curate run` or `curate refilter`")
    return validate(apply_overrides(stored, list(overrides)))


def _pass_to_run(run: RunDir, reasons: list[str] | None) -> tuple[int, ReasonSet]:
    """The pass this command runs: the last one if it was interrupted (it resumes with its own
    reasons), else a new one with ``reasons`` (default: the transient ones)."""
    recorded = passes.recorded_passes(run)
    if recorded and not recorded[-1]["finished"]:
        open_pass = recorded[-1]
        if reasons and ReasonSet(reasons).names != tuple(open_pass["reasons"]):
            raise ConfigError(
                f"retry {open_pass['pass']} of {run.root} was interrupted; it resumes with its own reasons "
                f"({', '.join(open_pass['reasons'])}): run `curate retry` without --reasons, then retry again")
        return open_pass["pass"], ReasonSet(open_pass["reasons"])
    try:
        return len(recorded) + 1, ReasonSet(reasons or TRANSIENT_REASONS)
    except ValueError as error:
        raise ConfigError(f"--reasons: {error}") from None


def select_partition(plan: Plan, run: RunDir, partition: Partition, wanted: ReasonSet, out_dir: str) -> dict:
    """Ray task: list the rows of one partition whose latest download failed with one of
    ``wanted`` into ``out_dir``, per input part ``part-FFFFF-SSSS-KKKKK.parquet`` of at most
    download.shard_size rows, with the download list's columns and their next ``attempt``.
    Returns ``{"parts": [{"part", "download_parts"}], "rows"}``."""
    from curate.core import duck

    kind, size = plan.kind, plan.cfg.download.shard_size
    # The URL as it was fetched and what the kind's rows carried along (scored/, from the
    # download list: a pair's alternate captions); the rest as prepared (rows/). Only rows
    # that were fetched are in scored/: a row whose URL another row fetches is never retried.
    fetched = {"url", *kind.carried.names}
    columns = ", ".join(f"s.{c}" if c in fetched else f"r.{c}" for c in kind.download_columns)
    con = open_views(run.root, plan, partition.files(run))
    found, rows = [], 0
    try:
        for part in partition.parts:
            rows_uri = storage.join(run.rows, f"part-{part}.parquet")
            table = duck.fetch_table(con, f"""
                SELECT {columns}, (s.attempt + 1)::INTEGER AS attempt
                FROM read_parquet({duck.sql_string(rows_uri)}) r JOIN scored s USING (sample_id)
                WHERE r.blocked_reason IS NULL AND {wanted.sql('s.download_reason')} ORDER BY sample_id
            """)
            names = []
            for k, start in enumerate(range(0, table.num_rows, size)):
                name = f"part-{part}-{k:05d}.parquet"
                storage.write_parquet(storage.join(out_dir, name), table.slice(start, size))
                names.append(name)
            found.append({"part": part, "download_parts": names})
            rows += table.num_rows
    finally:
        con.close()
    return {"parts": found, "rows": rows}


def select(plan: Plan, run: RunDir, number: int, wanted: ReasonSet) -> dict:
    """Step 1 of a pass: its rows, listed by Ray tasks (one per partition); the pass's record."""
    import ray

    out_dir = passes.list_dir(run, number)
    storage.remove_tree(out_dir)  # an interrupted selection is done again whole
    partitions = plan_partitions(passes.load_prepared(run), plan.cfg.manifest.partition_rows)
    task = ray.remote(num_cpus=TASK_CPUS)(select_partition)
    results = ray.get([task.remote(plan, run, p, wanted, out_dir) for p in partitions])
    return {"pass": number, "reasons": list(wanted.names), "rows": sum(r["rows"] for r in results),
            "parts": [part for r in results for part in r["parts"] if part["download_parts"]]}


@_stops_cleanly
def retry(run_root: str, reasons: list[str] | None = None, console: Console | None = None,
          overrides: list[str] = ()) -> RunResult | None:
    """Run (or resume) a retry pass over a finished run; returns the re-decided run, or None
    when no row failed with ``reasons``. ``overrides``: ``key=value`` of RETRY_KEYS for this
    retry's fetching. Raises ConfigError for a RUN that is not a finished run, a reason that
    is not a download failure code, or a key a retry may not set; runlock.RunInUse while
    another curate holds the run directory."""
    console = console or Console()
    run = RunDir(run_root.rstrip("/"))
    cfg = finished_run_config(run, overrides)
    os.environ.update(cfg.storage.environment())  # before the first bucket access
    with runlock.hold(run.root):
        return _retry(run, cfg, reasons, console)


def _retry(run: RunDir, cfg, reasons: list[str] | None, console: Console) -> RunResult | None:
    started = time.perf_counter()
    number, wanted = _pass_to_run(run, reasons)
    plan = make_plan(cfg)
    plan.check()  # the models score the recovered images
    lifeline.start_watchdog()  # Ray's and img2dataset's helpers end with this process
    start_ray(cfg.ray.address, cfg.ray.num_cpus, cfg.storage.environment())
    quiet_ray_data()  # one progress display: curate's bars on a terminal, a line per step in a log
    check_run_directory(run.root, cfg.storage.shared_filesystem)
    pools = size_model_pools(plan, console)
    progress, timings = Progress(run, console), {}

    console.rule(f"[bold]retry {number}: select ({', '.join(wanted.names)})")
    select_marker = passes.marker(run, number, "select")
    if not storage.exists(select_marker):
        t = time.perf_counter()
        record = select(plan, run, number, wanted)
        if record["rows"] == 0:
            console.print(f"nothing to retry: no row of {run.root} failed to download with {', '.join(wanted.names)}")
            return None
        storage.write_text(select_marker, json.dumps(record))
        timings["retry_select"] = round(time.perf_counter() - t, 2)
    record = json.loads(storage.read_text(select_marker))
    console.print(f"retry {number}: {record['rows']} row{'s' if record['rows'] != 1 else ''} to download again")

    out_dir = passes.downloaded_dir(run, number)
    download_marker = passes.marker(run, number, "download")
    if not storage.exists(download_marker):
        t = time.perf_counter()
        carried = [c for c in plan.kind.download_columns if c not in ("url", "caption")] + ["attempt"]
        with progress.step("download", total=record["rows"], count=CommittedRows(out_dir, "_stats.json", stats_rows)):
            run_download(passes.list_dir(run, number), out_dir, cfg.download, carried)
        storage.write_text(download_marker, "{}")
        timings["retry_download"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    shards = committed_shards(out_dir)
    scored = CommittedRows(storage.join(run.scored, passes.pass_name(number)), ".parquet", parquet_rows, recursive=True)
    with progress.step("score", total=record["rows"], count=scored):
        run_score(plan, run, shards)
    timings["retry_score"] = round(time.perf_counter() - t, 2)

    result = finish(plan, run, console, started, timings, progress, pools)
    outcome = next(o for o in result.summary["retries"] if o["pass"] == number)
    storage.write_text(passes.marker(run, number), json.dumps(
        {"outcome": {k: outcome[k] for k in ("recovered", "statuses", "still_failed")}}))
    return result
