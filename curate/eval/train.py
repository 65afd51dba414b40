"""Training one CLIP on one selection with open_clip's own training code, DataComp's rule.

DataComp fixes the number of samples seen, whatever the size of the subset: open_clip_train
runs with ``--dataset-resampled`` (shards drawn with replacement) and ``--train-num-samples``
= samples seen / epochs, as DataComp's ``train.py`` calls it (its "checkpoints" are
open_clip's epochs). A selection of N samples is then seen samples_seen / N times on average.
open_clip rounds an epoch up to whole batches, so the samples actually seen are
``steps x batch size``, recorded with the result.

The trainer runs as a subprocess (curate.eval.open_clip_entry: open_clip_train.main with
curate's model configs registered), with its own log (``train/out.log``) and its
checkpoint under ``train/checkpoints/``; torch's threads are the job's CPUs.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

TINY = "curate-tiny-clip"


class TrainConfigError(ValueError):
    """A training option that cannot work (unknown architecture, a budget under one batch)."""


@dataclass(frozen=True)
class TrainConfig:
    """What every (selection, seed) job trains with: the same for every selection.

    ``model``: an open_clip architecture name (``ViT-B-32``), a JSON model config (its
    file stem becomes the name), or ``curate-tiny-clip`` (the architecture of the shipped
    tiny CLIP, 3.8 M parameters, 64 px: trains on a CPU); ``samples_seen``: DataComp's
    budget; ``epochs``: open_clip epochs the budget is cut into (DataComp: checkpoints);
    ``lr``, ``warmup`` (steps), ``wd``: AdamW, cosine schedule; ``device``: ``cpu`` or
    ``cuda`` (open_clip falls back to the CPU when no GPU is there); ``precision``: open_clip's
    (``amp`` on a GPU, ``fp32`` on the CPU); ``cpus``/``gpus``: each job's Ray resources."""

    model: str = TINY
    samples_seen: int = 2048
    batch_size: int = 64
    epochs: int = 1
    lr: float = 1e-3
    warmup: int = 10
    wd: float = 0.1
    device: str = "cpu"
    precision: str = "fp32"
    cpus: float = 1.0
    gpus: float = 0.0

    def check(self) -> None:
        if self.samples_seen < self.batch_size:
            raise TrainConfigError(f"samples seen ({self.samples_seen}) must be at least one batch ({self.batch_size})")
        if self.epochs < 1 or self.batch_size < 1:
            raise TrainConfigError("epochs and batch size must be at least 1")
        resolve_model(self.model)

    @property
    def steps(self) -> int:
        """Optimizer steps: open_clip's ceil(samples per epoch / batch) per epoch."""
        return self.epochs * math.ceil(self.samples_seen / self.epochs / self.batch_size)

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_model(model: str) -> tuple[str, dict | None]:
    """(open_clip model name, its config to register or None when open_clip ships it)."""
    if model == TINY:
        data = json.loads(resources.files("curate.assets").joinpath("models/tiny-clip/open_clip_config.json").read_text())
        return TINY, data["model_cfg"]
    if model.endswith(".json"):
        path = Path(model)
        if not path.is_file():
            raise TrainConfigError(f"model config {model} does not exist")
        data = json.loads(path.read_text())
        return path.stem, data.get("model_cfg", data)
    import open_clip

    if model not in open_clip.list_models():
        raise TrainConfigError(f"unknown architecture {model!r}: use {TINY}, a JSON model config or one of open_clip's "
                               "(open_clip.list_models())")
    return model, None


def open_clip_args(cfg: TrainConfig, name: str, shards: list[str], logs: str, seed: int) -> list[str]:
    """open_clip_train's command line for one job (``--name`` under ``--logs``)."""
    return [
        "--train-data", "::".join(shards), "--dataset-type", "webdataset", "--dataset-resampled",
        "--train-num-samples", str(math.ceil(cfg.samples_seen / cfg.epochs)),
        "--epochs", str(cfg.epochs), "--batch-size", str(cfg.batch_size), "--workers", "0",
        "--lr", str(cfg.lr), "--warmup", str(cfg.warmup), "--wd", str(cfg.wd),
        "--model", name, "--seed", str(seed), "--logs", logs, "--name", "train",
        "--save-frequency", str(cfg.epochs), "--zeroshot-frequency", "0", "--val-frequency", "0",
        "--report-to", "", "--device", cfg.device, "--precision", cfg.precision, "--log-every-n-steps", "10",
    ]


_LOSS = re.compile(r"Contrastive_loss: \S+ \((\S+)\)")


def train(cfg: TrainConfig, shards: list[str], workdir: Path, seed: int,
          model: tuple[str, dict | None] | None = None) -> dict:
    """Train one model; returns ``checkpoint`` (a local path), ``steps``, ``samples_seen``
    (steps x batch), ``seconds`` and ``train_loss`` (open_clip's running mean of the last epoch).
    ``shards``: local tar paths; ``model``: resolve_model's (name, config), resolved on the
    driver (a JSON config path there may not exist on a worker node); None: resolved here.
    A previous unfinished attempt in ``workdir`` is removed first. RuntimeError, with the
    log's tail, when open_clip fails."""
    name, config = model or resolve_model(cfg.model)
    logs = workdir / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    configs = workdir / "model_configs"
    configs.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (configs / f"{name}.json").write_text(json.dumps(config, indent=2))
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, int(cfg.cpus))), "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "curate.eval.open_clip_entry", str(configs), "--",
               *open_clip_args(cfg, name, shards, str(logs), seed)]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    log = logs / "train" / "out.log"
    text = log.read_text() if log.exists() else ""
    checkpoint = logs / "train" / "checkpoints" / f"epoch_{cfg.epochs}.pt"
    if done.returncode != 0 or not checkpoint.exists():
        tail = "\n".join((done.stderr or text).strip().splitlines()[-15:])
        raise RuntimeError(f"open_clip training failed (exit {done.returncode}):\n{tail}")
    losses = _LOSS.findall(text)
    return {"checkpoint": str(checkpoint), "model": name, "steps": cfg.steps,
            "samples_seen": cfg.steps * cfg.batch_size, "seconds": round(seconds, 2),
            "train_loss": float(losses[-1]) if losses else None, "command": command[3:]}
