"""One (selection, seed) job: train, evaluate, record; a Ray task with its own resources.

A job's folder is RUN/eval/<selection>/<seed>/: ``config.json`` (what it trains with and
the open_clip command), ``metrics.json`` (written last: the job is done) and the
checkpoint. A job runs where Ray places it: it trains in a local working folder (the job
folder itself when the run is on a local disk; a temporary folder, its shards copied in,
when the run is in a bucket, and then the checkpoint is uploaded as ``checkpoint.pt``).

Resumable: a job whose ``metrics.json`` holds the same key (the training config, the
selection's digest, the seed and the evaluation sets) is not redone; any other is trained
again from the start (an interrupted job leaves no metrics.json).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from curate.core import storage
from curate.eval.train import TrainConfig, train


def job_folder(eval_root: str, selection_folder: str, seed: int) -> str:
    return storage.join(eval_root, selection_folder, str(seed))


def job_key(cfg: TrainConfig, selection_digest: str, seed: int, set_names: list[str]) -> str:
    """What a finished job must match to be reused."""
    text = json.dumps({"train": cfg.to_dict(), "selection": selection_digest, "seed": seed, "sets": set_names},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def finished(folder: str, key: str) -> dict | None:
    """The job's metrics.json if it finished with ``key``, else None."""
    uri = storage.join(folder, "metrics.json")
    if not storage.exists(uri):
        return None
    metrics = json.loads(storage.read_text(uri))
    return metrics if metrics.get("key") == key else None


def run_job(folder: str, selection: str, shard_info: dict, cfg: TrainConfig, seed: int, sets: list, key: str,
            model: tuple[str, dict | None] | None = None) -> dict:
    """Train on the selection's shards (``shard_info``: curate.eval.shards.write_selection's
    record) with ``seed`` and ``model`` (curate.eval.train.resolve_model's, resolved on the
    driver), evaluate on ``sets`` and write metrics.json; returns its content."""
    import torch

    from curate.eval.metrics import evaluate

    torch.set_num_threads(max(1, int(cfg.cpus)))
    remote = storage.is_remote(folder)
    workdir = Path(tempfile.mkdtemp(prefix="curate-eval-")) if remote else Path(storage.fs_and_path(folder)[1])
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        shards = shard_info["shards"]
        if remote or any(storage.is_remote(s) for s in shards):
            local = workdir / "shards"
            local.mkdir(exist_ok=True)
            for uri in shards:
                fs, path = storage.fs_and_path(uri)
                fs.get(path, str(local / Path(path).name))
            shards = [str(local / Path(s).name) for s in shards]
        config = {"selection": selection, "seed": seed, "samples": shard_info["samples"], "train": cfg.to_dict(),
                  "evaluation_sets": [s.name for s in sets], "key": key}
        storage.write_text(storage.join(folder, "config.json"), json.dumps(config, indent=2))
        trained = train(cfg, shards, workdir, seed, model)
        device = "cuda" if cfg.device == "cuda" and torch.cuda.is_available() else "cpu"
        metrics = evaluate(trained["model"], trained["checkpoint"], sets, device, str(workdir / "model_configs"))
        checkpoint = trained["checkpoint"]
        if remote:
            checkpoint = storage.join(folder, "checkpoint.pt")
            fs, path = storage.fs_and_path(checkpoint)
            fs.put(trained["checkpoint"], path)
        config["command"] = trained.pop("command")
        storage.write_text(storage.join(folder, "config.json"), json.dumps(config, indent=2))
        samples = shard_info["samples"]
        result = {**config, "samples_seen": trained["samples_seen"], "steps": trained["steps"],
                  "times_seen": trained["samples_seen"] / samples if samples else None,
                  "train_seconds": trained["seconds"], "train_loss": trained["train_loss"], "checkpoint": checkpoint,
                  "metrics": metrics}
        result.pop("command")
        storage.write_text(storage.join(folder, "metrics.json"), json.dumps(result, indent=2))
        return result
    finally:
        if remote:
            shutil.rmtree(workdir, ignore_errors=True)
