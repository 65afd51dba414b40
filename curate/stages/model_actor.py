"""What every model stage shares: device and precision choice, and Ray actor-pool wiring."""

from __future__ import annotations

import io

import pyarrow as pa
from PIL import Image

from curate.core.config import ModelComputeConfig
from curate.core.progress import RowCounter


def choose_device(precision: str) -> tuple[str, str]:
    """(device, precision) inside an actor: fp16 on a GPU when 'auto', fp32 on the CPU."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if precision == "auto":
        precision = "fp16" if device == "cuda" else "fp32"
    return device, precision


def set_threads(cfg: ModelComputeConfig) -> None:
    import torch

    torch.set_num_threads(cfg.threads or max(1, int(cfg.num_cpus)))


def decode_rgb(data: bytes) -> Image.Image | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except Exception:  # noqa: BLE001 - an undecodable image is scored as missing, never fatal
        return None


# Models read at most a few hundred tokens; a multi-MB caption must not cost a multi-MB
# tokenization. Cut long before any model's context ends.
MAX_TEXT_CHARS = 2000


def model_text(text: str | None) -> str:
    return (text or "").strip()[:MAX_TEXT_CHARS]


def usable_images(batch, image_col: str, include_rejected: bool = False) -> list[tuple[int, Image.Image]]:
    """(row index, RGB image) for the rows a model stage should see: downloaded, decodable,
    and (unless ``include_rejected``) not rejected by an image rule."""
    rows = batch.select([image_col, "download_reason", "image_reject"]).to_pylist()
    out = []
    for i, row in enumerate(rows):
        if row["download_reason"] is not None or not row[image_col]:
            continue
        if row["image_reject"] is not None and not include_rejected:
            continue
        image = decode_rgb(row[image_col])
        if image is not None:
            out.append((i, image))
    return out


def candidate_texts(batch, rows: list[int]) -> list[list[str]]:
    """For each of ``rows``: its original caption, then the captioner's captions (none where
    the captioner didn't run or is off). CLIP and ITM score exactly these, in this order."""
    captions = batch.column("caption").to_pylist()
    synthetic = (batch.column("synthetic_captions").to_pylist() if "synthetic_captions" in batch.column_names
                 else [None] * batch.num_rows)
    return [[model_text(captions[i])] + (synthetic[i] or []) for i in rows]


ACTOR_TASK_RETRIES = 3


def actor_pool_args(cfg: ModelComputeConfig) -> dict:
    """map_batches arguments for a model stage: a fixed pool, GPUs when the cluster has them."""
    import ray
    import ray.data

    num_gpus = cfg.num_gpus
    if num_gpus is None:
        num_gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
    return {
        "compute": ray.data.ActorPoolStrategy(size=cfg.actors),
        "batch_size": cfg.batch_size,
        "batch_format": "pyarrow",
        "num_cpus": cfg.num_cpus,
        "num_gpus": num_gpus,
        # A killed actor (OOM, node loss, SIGKILL) is restarted and its batch re-run; the
        # writer commits by sample_id, so a re-run batch never counts twice. Bounded task
        # retries: a batch that kills its actor every time stops the run instead of looping.
        "max_restarts": -1,
        "max_task_retries": ACTOR_TASK_RETRIES,
    }


def counted(actor: type) -> type:
    """``actor`` that also counts the rows it finishes into ``counts_dir`` (progress per stage,
    curate.core.progress.RowCounter). A subclass, named like ``actor`` so that Ray Data's
    own logs still name the pool after its model."""

    class Counted(actor):
        def __init__(self, counts_dir: str, **kwargs):
            super().__init__(**kwargs)
            self._counter = RowCounter(counts_dir)

        def __call__(self, batch: pa.Table) -> pa.Table:
            out = super().__call__(batch)
            self._counter.add(batch.num_rows)
            return out

        def __del__(self):
            # Ray Data calls this when it shuts the pool down gracefully: write the rows
            # counted since the last flush. Best effort: progress must never fail a run.
            try:
                self._counter.flush()
            except Exception:  # noqa: BLE001
                pass

    Counted.__name__ = actor.__name__
    return Counted


class ModelStage:
    """A model stage of the process step: the config section ``key``, the ``actor`` class Ray
    Data runs in a pool (one model load per actor), the columns it adds to RUN/scored/
    (``scored_schema``) and those that reach the manifest (``manifest_columns``).
    Subclasses add ``check()``, which fails at start when the model reference is bad."""

    key: str
    actor: type
    scored_schema: pa.Schema
    manifest_columns: list[str] = []

    def __init__(self, cfg: ModelComputeConfig):
        self.cfg = cfg

    def apply(self, ds, image_col: str, counts_dir: str):
        """Run the stage on ``ds``; its actors count finished rows into ``counts_dir``."""
        return ds.map_batches(
            counted(self.actor), fn_constructor_kwargs={"counts_dir": counts_dir, "cfg": self.cfg, "image_col": image_col},
            **actor_pool_args(self.cfg),
        )
