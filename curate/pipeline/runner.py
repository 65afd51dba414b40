"""Orchestration of ``curate run``: each step is resumable, the manifest is rebuilt at the end.

prepare -> download -> score (the plan's batch stages) -> decide + dedupe + manifest -> output.
A step that finished leaves a marker (``RUN/_done/<step>``); the score step resumes
from the sample_ids it has committed. Re-running the same command on the same RUN picks
up where a killed run stopped and produces the same manifest and output.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.text import Text

from curate.core import lifeline, runlock, storage
from curate.core.config import ConfigError, CurateConfig, config_changes
from curate.core.inputs import InputFile
from curate.core.progress import (
    Progress, StageRows, downloaded_rows, parquet_rows, prepared_rows, scored_rows, stage_counts_dir,
)
from curate.core.ray_session import check_run_directory, start_ray
from curate.core.rundir import RunDir
from curate.core.terminal import quiet_ray_data
from curate.core.textsafe import literal
from curate.flow.decision import missing_scored_columns, open_run_views
from curate.flow.plan import Plan, make_plan
from curate.pipeline.decide import decide_run
from curate.pipeline.fresh import remove_run
from curate.pipeline.interrupt import resume_status, stops_cleanly_on_signals, take_signals
from curate.pipeline.hints import run_hint
from curate.pipeline.output import write_output
from curate.pipeline.prepare import SCRATCH as PREPARE_SCRATCH
from curate.pipeline.prepare import prepare
from curate.pipeline.passes import load_prepared, recorded_passes
from curate.pipeline.pools import assign_pools
from curate.pipeline.resume_check import verify_run
from curate.pipeline.run_inputs import input_changes, input_state, list_run_inputs, validate_new_inputs
from curate.pipeline.score import run_score
from curate.pipeline.summary import compute_summary, print_summary, retry_outcomes, save_summary
from curate.download.download import committed_shards, run_download
from curate.report.judges import describe_threshold
from curate.stages.base import BatchStage
from curate.stages.registry import STAGES


@dataclass
class RunResult:
    run: RunDir
    summary: dict
    index: dict
    timings: dict = field(default_factory=dict)


# Keys that set resources, not results: a run may resume with other values (more memory
# after the manifest step ran out of it, another Ray cluster, other actor pools: captions are
# drawn per sample, so batches and actors do not change them).
# Each model stage declares its own (BatchStage.resource_keys): a new one is covered by its class.
RESOURCE_KEYS = ("manifest.memory_limit", "ray.", "storage.shared_filesystem", "download.write_retry_pause") + tuple(
    key for stage in STAGES if issubclass(stage, BatchStage) for key in stage.resource_keys())


def _check_layout(run: RunDir) -> None:
    """ConfigError for a run directory this version cannot read: one prepared before runs
    were cut into input parts and partitions (its prepare marker lists no parts)."""
    if storage.exists(run.marker("prepare")) and "parts" not in json.loads(storage.read_text(run.marker("prepare"))):
        raise ConfigError(f"{run.root} was prepared by an earlier curate, before runs were cut into partitions: "
                          "this version cannot resume or refilter it; run it again with another --out")


def _input_files(n: int) -> str:
    return f"{n} input file" + ("s" if n != 1 else "")


def _check_resumable(cfg: CurateConfig, run: RunDir, state: dict, extend: bool = False) -> None:
    """A RUN may only be resumed with the same config and input it was started with; with
    ``extend``, its input files (same sizes) plus new ones, and input.path may change."""
    # output.path is where the run is found, not a setting of it: a moved or copied run resumes there.
    ignore = RESOURCE_KEYS + ("output.path",) + (("input.path",) if extend else ())
    changes = config_changes(storage.read_text(run.config), cfg, ignore=ignore) if storage.exists(run.config) else []
    if changes:
        shown = "; ".join(changes[:5]) + (f"; and {len(changes) - 5} more" if len(changes) > 5 else "")
        raise ConfigChanged(
            f"{run.root} was started with another config ({shown}; see {run.config}); "
            "use a new --out, `curate refilter` to change thresholds of a finished run, or start it afresh with --fresh "
            "(removes the run)"
        )
    _check_layout(run)
    if not storage.exists(run.state):
        if storage.exists(run.config):  # written after state.json: the state was removed since
            raise ConfigError(f"{run.state} is missing: without it a resume can't tell whether the input files "
                              "changed since the run started; restore it, or use a new --out")
        return
    changed = input_changes(json.loads(storage.read_text(run.state)), state, ignore_path=extend)
    added = [c for c in changed if c.endswith(": added")]
    other = [c for c in changed if c not in added]
    if other:
        shown = "; ".join(other[:5]) + (f"; and {len(other) - 5} more" if len(other) > 5 else "")
        raise ConfigChanged(f"{run.root} was started from other input files ({shown}); "
                            "a run's input files can't change: use a new --out, or start it afresh with --fresh "
                            "(removes the run)")
    if added and not extend:
        raise ConfigError(f"{run.root}: {_input_files(len(added))} new since it started ({added[0]}): "
                          "add them with `curate run ... --extend`, or use a new --out")


def _step(run: RunDir, name: str, fn, timings: dict, console: Console):
    if storage.exists(run.marker(name)):
        console.print(f"[dim]{name}: already done, skipped[/dim]")
        return
    started = time.perf_counter()
    result = fn()
    storage.write_text(run.marker(name), json.dumps(result or {}))
    timings[name] = round(time.perf_counter() - started, 2)


class ConfigChanged(ConfigError):
    """The run directory holds a run started with another config or input: resuming it is
    refused, and ``--fresh`` starts it again (the CLI prints the exact command)."""


class RunStopped(RuntimeError):
    """The environment failed under a step (disk full, bucket write error, ...)."""


def _root_os_error(error: BaseException) -> OSError | None:
    """The deepest OSError under ``error``, following Ray's ``cause`` and Python's chains."""
    found, seen = None, set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError):
            found = error
        ray_cause = getattr(error, "cause", None)  # a Ray task error, also an instance of its cause's class
        if isinstance(error, storage.WriteError) and ray_cause is None:
            break  # it names the file and its own cause already
        suppressed = getattr(error, "__suppress_context__", False)
        error = ray_cause or error.__cause__ or (None if suppressed else error.__context__)
    return found


def _advice(cause: OSError) -> str:
    """What to fix, said only when the error says it: a disk is full only on ENOSPC."""
    if cause.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free disk space, then "
    if isinstance(cause, storage.WriteError):
        return "check that the run directory can be written (permissions, the bucket), then "
    return ""


def _stops_cleanly(fn):
    """An environment error ends the run with one clear message instead of a Ray traceback;
    every write is atomic and every commit recorded, so what was committed stays valid (a
    resume checks it) and a re-run resumes."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError:
            raise  # the user's mistakes (config, input, model reference) have their own messages
        except Exception as error:
            cause = _root_os_error(error)
            if cause is None:
                raise
            what = str(cause) if isinstance(cause, storage.WriteError) else f"{cause.__class__.__name__}: {cause}"
            raise RunStopped(
                f"the run stopped: {what.rstrip('.')}. Work committed so far is kept; "
                f"{_advice(cause)}run the same command again to resume."
            ) from error

    return wrapper


def _numbered_like_run(files: list[InputFile], run: RunDir) -> list[InputFile]:
    """The input files numbered as the run numbered them (a file's number is the first part
    of its rows' sample_ids, so it never changes); files the run has not seen come after, in
    name order. A new run numbers them in name order."""
    if not storage.exists(run.state):
        return files
    known = [uri for uri, _ in json.loads(storage.read_text(run.state))["files"]]
    listed = {f.uri: f for f in files}
    ordered = [listed[uri] for uri in known if uri in listed] + [f for f in files if f.uri not in set(known)]
    return [InputFile(i, f.uri, f.size) for i, f in enumerate(ordered)]


def _start_extending(run: RunDir, added: list[str]) -> None:
    """--extend on a run with new input files: its prepare and download steps run again (the
    parts and shards they committed are kept and skipped), then the rest as usual. Until the
    run finishes, RUN/_extending.json says so (`curate retry` and `curate refilter` refuse
    a run whose manifest does not have the new rows yet)."""
    storage.write_text(run.extending, json.dumps({"added": added}))
    for step in ("prepare", "download"):
        storage.remove_tree(run.marker(step))


def check_no_open_extend(run: RunDir, command: str) -> None:
    """ConfigError when an --extend of ``run`` was interrupted: its manifest lacks the new rows."""
    if storage.exists(run.extending):
        added = json.loads(storage.read_text(run.extending)).get("added", [])
        raise ConfigError(f"an --extend of {run.root} was interrupted ({_input_files(len(added))} being added); "
                          f"finish it first with `curate run ... --extend`, then {command}")


def _print_left_out(left_out: dict[str, list[str]], run: RunDir, console: Console) -> None:
    """Name every input file the run leaves out because it lies in a run directory."""
    for root, uris in sorted(left_out.items()):
        if root == run.root:
            console.print(literal(f"input: {len(uris)} file(s) under this run's directory {root} left out"),
                          soft_wrap=True)
            continue
        for uri in uris:
            console.print(literal(f"input: {uri} left out: it belongs to the curate run {root}"), soft_wrap=True)


def _check_no_open_retry(run: RunDir) -> None:
    recorded = recorded_passes(run)
    if recorded and not recorded[-1]["finished"]:
        raise ConfigError(f"retry {recorded[-1]['pass']} of {run.root} was interrupted; finish it first with "
                          f"`curate retry {run.root}`")


@_stops_cleanly
def run_pipeline(cfg: CurateConfig, console: Console | None = None, extend: bool = False,
                 fresh: bool = False) -> RunResult:
    """Run the pipeline of ``cfg``, or resume it, in its run directory, which it holds for
    the whole run: a second run on the same directory is refused (runlock.RunInUse).
    ``extend``: grow a run with input files it has not seen (curate run --extend): their rows
    get the next file numbers, only they are prepared, downloaded and scored, and the whole
    run is decided again (dedupe across old and new), so the result equals one run over all
    the files. ``fresh``: an earlier run in the directory is removed first (curate.pipeline.fresh:
    only a curate run, only its entries). ConfigError for a config or input that does not match
    the run directory."""
    os.environ.update(cfg.storage.environment())  # before the first bucket access
    if fresh and extend:
        raise ConfigError("--fresh and --extend: --extend grows an existing run, --fresh removes it; choose one")
    console = console or Console()
    with runlock.hold(cfg.output.path), stops_cleanly_on_signals(console):
        if fresh and (removed := remove_run(cfg.output.path)):
            console.print(literal(f"fresh: removed the earlier run in {cfg.output.path} ({', '.join(removed)})",
                                  "yellow"), soft_wrap=True)
        return _run_pipeline(cfg, console, extend)


def _run_pipeline(cfg: CurateConfig, console: Console | None, extend: bool) -> RunResult:
    console = console or Console()
    started = time.perf_counter()
    run = RunDir(cfg.output.path)
    if extend and not storage.exists(run.config):
        raise ConfigError(f"--extend grows an existing run, and {run.root} has none; leave --extend out to start it")
    # input errors stop here, before anything is written
    left_out: dict[str, list[str]] = {}
    files = _numbered_like_run(list_run_inputs(cfg.input, run.root, left_out), run)
    _print_left_out(left_out, run, console)
    state = input_state(files, cfg)
    _check_resumable(cfg, run, state, extend)
    _check_no_open_retry(run)
    before = json.loads(storage.read_text(run.state)) if storage.exists(run.state) else None
    added = [f for f in files if before is not None and f.uri not in {u for u, _ in before.get("files", [])}]
    if extend and added:
        validate_new_inputs(added, cfg)  # an unreadable new file stops here, before the run is touched
    plan = make_plan(cfg)
    plan.check()  # a bad model reference or stage config stops here, before anything is written
    fresh = not storage.exists(run.config)
    with _nothing_left_unless_started(run, fresh):
        lifeline.start_watchdog()  # Ray's and img2dataset's helpers end with this process
        start_ray(cfg.ray.address, cfg.ray.num_cpus, cfg.storage.environment())
        take_signals()  # Ray's own SIGTERM handler would abort the driver
        quiet_ray_data()  # one progress display: curate's bars on a terminal, a line per step in a log
        check_run_directory(run.root, cfg.storage.shared_filesystem)  # before anything is written
        pools = size_model_pools(plan, console)
        for damaged in verify_run(run):  # committed work is checked, not trusted (as Ray tasks)
            console.print(literal(f"resume: {damaged}; done again", "yellow"), soft_wrap=True)  # one line per file, for grep
        if not fresh and (status := resume_status(run)):
            console.print(literal(status), soft_wrap=True)
        if extend and before != state:
            console.print(f"extend: {_input_files(len(state['files']) - len(before['files']))} new")
            _start_extending(run, [f.uri for f in added])  # before the new state: a run killed in between asks for --extend again
        storage.makedirs(run.root)
        # state.json first: a config.yaml without it is a removed state, refused (_check_resumable)
        storage.write_text(run.state, json.dumps(state))
        storage.write_text(run.config, cfg.to_yaml())

        timings: dict = {}
        progress = Progress(run, console)
        console.rule("[bold]prepare")
        with progress.step("prepare", count=prepared_rows(run)):
            _step(run, "prepare", lambda: prepare(plan, run, files), timings, console)
    console.rule("[bold]download (img2dataset)")
    carried = [c for c in plan.kind.download_columns if c not in ("url", "caption")]
    to_fetch = lambda: (lambda p: p["rows"] - p["blocked"] - p.get("merged", 0))(  # noqa: E731
        json.loads(storage.read_text(run.marker("prepare"))))
    with progress.step("download", total=to_fetch, count=downloaded_rows(run)):
        _step(run, "download", lambda: run_download(run.download_list, run.downloaded, cfg.download, carried),
              timings, console)
    console.rule("[bold]score")
    t = time.perf_counter()
    shards = committed_shards(run.downloaded)
    # Per model stage: rows committed by earlier attempts + what its actors count now. An
    # earlier attempt's counter files go: the rows it didn't commit run through every stage again.
    storage.remove_tree(run.progress_counts)
    committed = scored_rows(run)
    before = committed()
    stages = {f"score/{s.key}": StageRows(stage_counts_dir(run, s.key), before) for s in plan.batch if s.uses_model}
    with progress.step("score", total=lambda: sum(map(parquet_rows, shards)), count=committed, parts=stages):
        run_score(plan, run, shards)
    timings["score"] = round(time.perf_counter() - t, 2)
    result = finish(plan, run, console, started, timings, progress, pools)
    storage.remove_tree(run.extending)  # the manifest has every row of the new files now
    return result


# What a run writes before its first step is committed: removed again when it stops there.
def _start_entries(run: RunDir) -> list[str]:
    return [run.config, run.state, run.rows, run.documents, run.download_list, run.progress_counts,
            storage.join(run.root, "_done"), storage.join(run.root, "progress.json"), storage.join(run.root, "_commits"),
            storage.join(run.root, PREPARE_SCRATCH)]


@contextlib.contextmanager
def _nothing_left_unless_started(run: RunDir, fresh: bool):
    """A new run that stops before its input is prepared (a malformed or undecodable input
    file, a model pool that can't fit, Ray failing to start, Ctrl-C) leaves nothing
    behind, so the corrected command starts afresh instead of being refused as a resume
    of another run. Only what curate writes goes: an --out folder that existed keeps the
    rest of its files."""
    root_existed = storage.exists(run.root)
    try:
        yield
    except BaseException:
        if fresh:
            for entry in [run.root] if not root_existed else _start_entries(run):
                with contextlib.suppress(OSError):  # the original error is the one to report
                    storage.remove_tree(entry)
        raise


def size_model_pools(plan: Plan, console: Console) -> dict[str, dict]:
    """The model stages' actor pools for this Ray cluster (curate.pipeline.pools), checked
    to fit on local Ray (a cluster may autoscale), printed, and set on the stages."""
    import ray

    resources = ray.cluster_resources()
    pools = assign_pools(plan.batch, resources, check=not plan.cfg.ray.address)
    if pools:
        have = f"{resources.get('CPU', 0):g} CPUs" + (f", {resources['GPU']:g} GPUs" if resources.get("GPU") else "")
        console.print(f"[dim]model pools for {have}: " + "; ".join(f"{k} {p.describe()}" for k, p in pools.items())
                      + "[/dim]")
    return {k: p.as_dict() for k, p in pools.items()}


@contextlib.contextmanager
def _manifest_memory(cfg: CurateConfig):
    """DuckDB running out of manifest.memory_limit stops the run with what to raise, not a
    traceback; a resume with a larger limit starts again at the manifest step."""
    import duckdb

    try:
        yield
    except duckdb.OutOfMemoryException as error:
        detail = str(error).splitlines()[0]
        raise RunStopped(
            f"the run stopped: the manifest step needs more memory than manifest.memory_limit "
            f"({cfg.manifest.memory_limit}); DuckDB said: {detail}. Work committed so far is kept; run the same "
            "command again with a larger limit (e.g. --set manifest.memory_limit=4GB) to resume."
        ) from error


def finish(plan: Plan, run: RunDir, console: Console, started: float, timings: dict,
           progress: Progress | None = None, pools: dict | None = None) -> RunResult:
    """Manifest, output shards, summary and report from stored results (also used by
    refilter); ``pools``: the model pools the run scored with, for the summary."""
    cfg = plan.cfg
    progress = progress or Progress(run, console)
    console.rule("[bold]manifest")
    t = time.perf_counter()
    prepared = load_prepared(run)  # with the `curate retry` passes' shards
    with progress.step("manifest", total=prepared["rows"]), _manifest_memory(cfg):
        decided = decide_run(plan, run, prepared, progress)
    timings["manifest"] = round(time.perf_counter() - t, 2)
    console.rule("[bold]output")
    t = time.perf_counter()
    with progress.step("output", total=sum(decided.shard_counts.values())):
        index = write_output(plan, run, decided, on_shard=progress.advance)
    timings["output"] = round(time.perf_counter() - t, 2)
    summary = compute_summary(decided.counts, time.perf_counter() - started)
    summary["step_seconds"] = timings
    # Work done in Ray tasks, summed over them (the rest of a step's time is the driver's and waiting).
    summary["task_seconds"] = {"prepare": prepared.get("task_seconds"), **{f"manifest/{k}": v for k, v in
                                                                         decided.task_seconds.items()}}
    summary["partitions"] = decided.partitions
    if pools:
        summary["pools"] = pools
    if decided.thresholds:
        summary["thresholds"] = decided.thresholds
        for key, t in decided.thresholds.items():
            console.print(literal(describe_threshold(key, t)))
    if prepared["retries"]:
        summary["retries"] = retry_outcomes(decided.counts, prepared["retries"])
    summary.update(plan.kind.summary(decided.counts))
    hint = run_hint(summary, cfg, run.root)  # most rows ended for one reason: its cause and key
    if hint:
        summary["hint"] = hint
    save_summary(run, summary)
    print_summary(summary, run.root, console)
    if hint:
        console.print(Text.assemble(("hint:", "bold yellow"), " ", literal(hint)), soft_wrap=True)
    if cfg.report.enabled:
        write_run_report(run, progress, console)
    return RunResult(run, summary, index, timings)


def write_run_report(run: RunDir, progress: Progress, console: Console) -> None:
    """The HTML report; a failure here is reported, not raised: the run's data is complete."""
    from curate.report.build import write_report

    console.rule("[bold]report")
    try:
        with progress.step("report"):
            uri = write_report(run.root)
    except Exception as error:  # noqa: BLE001 - any report bug must not fail a finished run
        console.print(Text.assemble(("report failed:", "bold red"), " ",
                                    literal(f"{error}; retry with `curate report {run.root}`")))
        return
    console.print(literal(f"report: {uri}"))


def refilter(run_root: str, overrides: list[str], console: Console | None = None) -> RunResult:
    """Re-decide a finished run at new thresholds from its stored scores; no model runs.

    Only the keys the plan's stages and kind declare as thresholds may change
    (Plan.refilter_keys); a change that needs a stage this run did not score is refused."""
    import yaml

    from curate.core.config import apply_overrides, parse_override, validate

    console = console or Console()
    run = RunDir(run_root.rstrip("/"))
    if not storage.exists(run.config) or not storage.list_files(run.manifest, ".parquet"):
        raise ConfigError(f"{run_root} is not a finished curate run (no config.yaml or manifest/)")
    _check_layout(run)
    check_no_open_extend(run, "refilter it")
    stored = validate(yaml.safe_load(storage.read_text(run.config)))
    stored_plan = make_plan(stored)
    allowed = stored_plan.refilter_keys()
    for text in overrides:
        key = ".".join(parse_override(text)[0])
        _refuse_a_stage_that_did_not_run(stored_plan, run, key)
        if not key.startswith(allowed):
            raise ConfigError(
                f"--set {key}: refilter can change only {', '.join(key_patterns(allowed))}; other keys need `curate run`"
            )
    cfg = validate(apply_overrides(stored.model_dump(mode="json"), overrides))
    _check_no_open_retry(run)
    plan = make_plan(cfg)
    plan.check(models=False)
    with runlock.hold(run.root):
        _check_scored(plan, run)
        lifeline.start_watchdog()
        start_ray(cfg.ray.address, cfg.ray.num_cpus, cfg.storage.environment())
        check_run_directory(run.root, cfg.storage.shared_filesystem)
        before = json.loads(storage.read_text(run.summary)) if storage.exists(run.summary) else {}
        result = finish(plan, run, console, time.perf_counter(), {})
        storage.write_text(run.config, cfg.to_yaml())
    console.print(refilter_change(before, result.summary))
    return result


def _refuse_a_stage_that_did_not_run(plan: Plan, run: RunDir, key: str) -> None:
    """ConfigError, in one line, when ``key`` belongs to a stage the run did not enable (its
    switch, or one of its thresholds): its columns were never computed, and a refilter runs
    no model to compute them."""
    enabled = {stage.key for stage in plan.stages}
    for stage in plan.every:
        if stage.key in enabled:
            continue
        if key == stage.switch or any(key == t or key.startswith(t + ".") for t in stage.thresholds):
            columns = ", ".join(stage.manifest or stage.writes.names)
            why = f"{stage.switch} was not set" if stage.switch and not stage.configured() else "it was off for this run"
            raise ConfigError(f"--set {key}: the {stage.key} stage did not run in {run.root} ({why}): its columns "
                              f"({columns}) were never computed and refilter runs no model (refilter can change only "
                              f"{', '.join(key_patterns(plan.refilter_keys()))}); use `curate run` with a new --out")


def key_patterns(prefixes) -> list[str]:
    """Config key prefixes as a user reads them: a whole section ``dedupe.`` as ``dedupe.*``."""
    return [f"{p}*" if p.endswith(".") else p for p in prefixes]


def refilter_change(before: dict, after: dict) -> str:
    """``refilter: kept 120 -> 97 of 298 rows (filtered 100 -> 123, ...)``: the run's statuses
    before and after a refilter, from its summaries."""
    old, new = before.get("statuses", {}), after.get("statuses", {})
    changed = [f"{s} {old.get(s, 0)} -> {new.get(s, 0)}" for s in dict.fromkeys([*old, *new])
               if s != "kept" and old.get(s, 0) != new.get(s, 0)]
    line = f"refilter: kept {before.get('kept', '?')} -> {after['kept']} of {after['rows_in']} rows"
    return line + (f" ({', '.join(changed)})" if changed else "")


def _check_scored(plan: Plan, run: RunDir) -> None:
    """A refilter decides from stored columns: every enabled stage must have written its own."""
    con = open_run_views(run, plan)
    try:
        missing = missing_scored_columns(con, plan)
    finally:
        con.close()
    if missing:
        raise ConfigError(
            f"{run.root} has no stored {', '.join(sorted(set(missing)))}: a stage these settings need did not run "
            "(or the run was scored by an older curate); use `curate run` with a new --out"
        )
