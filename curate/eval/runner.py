"""``curate eval RUN``: selections -> shards -> one Ray task per (selection, seed) -> results.

The driver checks everything before anything trains (a finished run, known selections,
training options, readable evaluation sets), makes each selection from stored columns
(curate.eval.selections), has each written as shards by a Ray task, runs the jobs that are
not finished yet as Ray tasks with the job's resources (``num_cpus``, ``num_gpus``), then
writes RUN/eval/results.parquet and, when the run has a report, its evaluation section.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from rich.console import Console

from curate.core import storage
from curate.core.rundir import RunDir
from curate.eval import jobs, results, selections
from curate.eval.evalsets import EvalSetError, read_classification, read_retrieval, write_synthetic_sets
from curate.eval.selections import SelectionError
from curate.eval.train import TrainConfig, TrainConfigError, resolve_model

EVAL = "eval"


class EvalError(ValueError):
    """Anything `curate eval` refuses before training: one line for the user."""


@dataclass
class EvalResult:
    """What ``curate eval`` produced: RUN/eval/ (``root``), results.parquet (``results``),
    the summary over seeds (curate.eval.results.summarise) and which jobs ran now or were
    reused from an earlier call (``trained``, ``reused``: ``selection/seed`` names)."""

    root: str
    results: str
    summary: dict
    trained: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)


def eval_root(run: RunDir) -> str:
    return storage.join(run.root, EVAL)


def load_sets(zeroshot: list[str], retrieval: list[str], synthetic: bool, synthetic_seed: int = 0) -> list:
    """The evaluation sets, read into memory; EvalError if none is named or one is unreadable."""
    zeroshot, retrieval = list(zeroshot), list(retrieval)
    if synthetic:
        folder = Path(tempfile.mkdtemp(prefix="curate-eval-sets-"))
        paths = write_synthetic_sets(folder, synthetic_seed)
        zeroshot += [str(paths["shapes"]), str(paths["colours"])]
        retrieval.append(str(paths["scenes"]))
    if not zeroshot and not retrieval:
        raise EvalError("no evaluation set: name one with --zeroshot FOLDER or --retrieval PARQUET_OR_TARS "
                        "(or --synthetic for the demo world)")
    try:
        sets = [read_classification(p) for p in zeroshot] + [read_retrieval(p) for p in retrieval]
    except EvalSetError as error:
        raise EvalError(str(error)) from None
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise EvalError(f"two evaluation sets have the same name ({', '.join(names)}): rename a folder or file")
    return sets


def evaluate_run(run_root: str, selection_names: list[str] | None = None, seeds: list[int] | None = None,
                 train: TrainConfig | None = None, zeroshot: list[str] = (), retrieval: list[str] = (),
                 synthetic: bool = False, address: str | None = None, console: Console | None = None) -> EvalResult:
    """Train and evaluate each selection of a finished run with each seed (module docstring).
    EvalError for anything refused before training."""
    import ray

    from curate.core.config import validate
    from curate.core.ray_session import start_ray
    from curate.eval.shards import write_selection

    console = console or Console()
    run = RunDir(run_root.rstrip("/"))
    train = train or TrainConfig()
    seeds = list(seeds if seeds is not None else [0, 1])
    try:
        selections.check_finished(run)
        chosen = selections.parse(list(selection_names or selections.DEFAULT))
        train.check()
    except (SelectionError, TrainConfigError) as error:
        raise EvalError(str(error)) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise EvalError("seeds must be one or more distinct integers")
    sets = load_sets(list(zeroshot), list(retrieval), synthetic)
    cfg = validate(yaml.safe_load(storage.read_text(run.config)))
    start_ray(address or cfg.ray.address, cfg.ray.num_cpus, cfg.storage.environment())
    root = eval_root(run)
    image_col = cfg.download.encode_format
    written = {}
    for selection in chosen:
        try:
            table = selections.make_selection(run, selection)
        except SelectionError as error:
            raise EvalError(str(error)) from None
        if table.num_rows == 0:
            raise EvalError(f"selection {selection.name} has no samples in this run: nothing to train on")
        written[selection.name] = ray.remote(num_cpus=0.5)(write_selection).remote(
            run.root, table, storage.join(root, selection.folder), image_col)
        console.print(f"selection {selection.name}: {table.num_rows:,} samples")
    shard_info = {name: ray.get(ref) for name, ref in written.items()}
    set_names = [f"{s.name}:{s.task}:{len(s.images)}" for s in sets]
    sets_ref = ray.put(sets)
    model = resolve_model(train.model)  # here: a JSON config's path may not exist on a worker node
    task = ray.remote(num_cpus=train.cpus, num_gpus=train.gpus, max_retries=0)(jobs.run_job)
    pending, done, trained, reused = {}, [], [], []
    for selection in chosen:
        info = shard_info[selection.name]
        for seed in seeds:
            folder = jobs.job_folder(root, selection.folder, seed)
            key = jobs.job_key(train, info["digest"], seed, set_names)
            previous = jobs.finished(folder, key)
            if previous:
                done.append(previous)
                reused.append(f"{selection.name}/{seed}")
            else:
                pending[f"{selection.name}/{seed}"] = task.remote(
                    folder, selection.name, info, train, seed, sets_ref, key, model)
    if reused:
        console.print(f"finished jobs reused: {', '.join(reused)}")
    console.print(f"training {len(pending)} job(s): {train.samples_seen:,} samples seen each, batch {train.batch_size}, "
                  f"model {train.model}")
    for name, ref in pending.items():
        result = ray.get(ref)
        done.append(result)
        trained.append(name)
        console.print(f"job {name}: {result['steps']} steps in {result['train_seconds']:.0f} s")
    table = results.rows(sorted(done, key=lambda j: ([s.name for s in chosen].index(j["selection"]), j["seed"])))
    uri = results.write(root, table)
    summary = results.summarise(table)
    storage.write_text(storage.join(root, "summary.json"), json.dumps(summary, indent=2, default=str))
    results.print_table(summary, console)
    if storage.exists(storage.join(run.report, "index.html")):
        from curate.report.build import write_report

        console.print(f"report: {write_report(run.root)}")
    console.print(f"results: {uri}  (curate query {run.root} \"SELECT * FROM eval_results\")")
    return EvalResult(root, uri, summary, trained, reused)
