"""Aesthetic stage: LAION's improved aesthetic predictor over the stored CLIP image embeddings.

The predictor (C. Schuhmann, github.com/christophschuhmann/improved-aesthetic-predictor, the
model behind LAION-Aesthetics; NeMo Curator and Data-Juicer ship the same head) is an MLP
over the L2-normalised CLIP image embedding. Its state dict
(``sac+logos+ava1-l14-linearMSE.pth``) is an ``nn.Sequential`` under ``layers``: ``layers.0``
Linear(768, 1024), dropout, ``layers.2`` Linear(1024, 128), dropout, ``layers.4``
Linear(128, 64), dropout, ``layers.6`` Linear(64, 16), ``layers.7`` Linear(16, 1), no
activations between them (the "linear" MSE variant); its output is a score on AVA's 1..10
scale. LAION-Aesthetics V2 kept images scoring >= 5, 6 or 6.5.

No image is decoded and no second model pass is made: the head reads the
``clip_image_embedding`` the CLIP stage writes, so it runs after it, as an actor pool that
loads the head once (with numpy: five matrix products need no torch). ``aesthetic_score``
goes to the manifest and the report; ``aesthetic.min_score`` filters images below it
(``aesthetic_score_below:<t>``, a rule over the stored score: a refilter changes it without a
model); ``dedupe.keep: aesthetic`` keeps the most aesthetic copy of a duplicate group.

``aesthetic.model``: a ``.pth``/``.pt``/``.bin`` (torch) or ``.safetensors`` file holding that
state dict, a directory holding one, or ``curate:tiny-aesthetic`` (trained by
scripts/train_tiny_models.py for the shipped tiny CLIP). The head must have been trained on
the embeddings of the run's CLIP model (LAION's: ViT-L/14); a mismatch stops the run at start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.core.config import AestheticConfig, ConfigError
from curate.models.references import SHIPPED_PREFIX, ModelReferenceError, shipped_model_path
from curate.schemas import reasons as R
from curate.schemas.reasons import fmt_threshold
from curate.stages.base import BatchStage, Rule, Score

WEIGHT_FILES = ("model.safetensors", "aesthetic.safetensors", "model.pth")
_LAYER = re.compile(r"^layers\.(\d+)\.(weight|bias)$")


@dataclass(frozen=True)
class AestheticHead:
    """The head's linear layers in order: ``weights[k]`` is (out, in), ``biases[k]`` (out,)."""

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]

    @property
    def input_dim(self) -> int:
        return int(self.weights[0].shape[1])

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        """Scores (N,) float32 for image embeddings (N, input_dim); rows are L2-normalised
        first, as the predictor's own inference does. ValueError on a dimension mismatch."""
        x = np.asarray(embeddings, np.float64)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"the aesthetic head takes embeddings of dimension {self.input_dim}, got shape {x.shape}")
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        for weight, bias in zip(self.weights, self.biases):
            x = x @ weight.T.astype(np.float64) + bias.astype(np.float64)
        return x[:, 0].astype(np.float32)


def resolve(reference: str) -> Path:
    """The weights file a reference names; ModelReferenceError says what is wrong."""
    if reference.startswith(SHIPPED_PREFIX):
        directory = shipped_model_path(reference[len(SHIPPED_PREFIX):])
        return next((directory / f for f in WEIGHT_FILES if (directory / f).is_file()), directory / WEIGHT_FILES[0])
    path = Path(reference).expanduser()
    if path.is_dir():
        found = [path / f for f in WEIGHT_FILES if (path / f).is_file()]
        if not found:
            raise ModelReferenceError(f"aesthetic.model {reference!r}: no {' or '.join(WEIGHT_FILES)} in that directory")
        return found[0].resolve()
    if not path.is_file():
        raise ModelReferenceError(
            f"aesthetic.model {reference!r}: no such file. Download the predictor's weights (e.g. "
            "sac+logos+ava1-l14-linearMSE.pth from github.com/christophschuhmann/improved-aesthetic-predictor) "
            "and give their absolute path"
        )
    return path.resolve()


def load(path: Path) -> AestheticHead:
    """Read a state dict in the predictor's layout; ModelReferenceError when it isn't one."""
    state = _read_state(path)
    layers: dict[int, dict[str, np.ndarray]] = {}
    for key, value in state.items():
        match = _LAYER.match(key)
        if match is None:
            raise ModelReferenceError(f"aesthetic.model {path}: unexpected key {key!r} (expected layers.N.weight/bias)")
        layers.setdefault(int(match.group(1)), {})[match.group(2)] = np.asarray(value, np.float32)
    if not layers or any(set(parts) != {"weight", "bias"} for parts in layers.values()):
        raise ModelReferenceError(f"aesthetic.model {path}: every linear layer needs a weight and a bias")
    ordered = [layers[i] for i in sorted(layers)]
    for before, after in zip(ordered, ordered[1:]):
        if before["weight"].shape[0] != after["weight"].shape[1]:
            raise ModelReferenceError(f"aesthetic.model {path}: layer shapes don't chain "
                                      f"({before['weight'].shape} then {after['weight'].shape})")
    if ordered[-1]["weight"].shape[0] != 1:
        raise ModelReferenceError(f"aesthetic.model {path}: the last layer must output one score")
    return AestheticHead(tuple(p["weight"] for p in ordered), tuple(p["bias"] for p in ordered))


def _read_state(path: Path) -> dict:
    try:
        if path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            return load_file(str(path))
        import torch  # the predictor's own format; weights only, never pickled code

        state = torch.load(str(path), map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in state.items()}
    except ModelReferenceError:
        raise
    except Exception as error:  # noqa: BLE001 - any unreadable file: one clear message
        raise ModelReferenceError(f"aesthetic.model {path}: cannot read it as a state dict: {error}") from None


class AestheticStage(BatchStage):
    """An MLP over the L2-normalised CLIP image embedding (Schuhmann, improved-aesthetic-predictor)."""

    key = "aesthetic"
    label = "aesthetic predictor"
    switch = "aesthetic.model"
    reads = ("clip_image_embedding",)
    writes = pa.schema([("aesthetic_score", pa.float32())])
    manifest = ("aesthetic_score",)
    thresholds = ("aesthetic.min_score", "aesthetic.keep_fraction")
    keep_fractions = {"aesthetic.keep_fraction": "aesthetic.min_score"}
    scores = {"aesthetic_score": Score("aesthetic score", "aesthetic.min_score", R.AESTHETIC_SCORE_BELOW)}  # LAION's 1-10 scale, unbounded
    uses_model = True
    relative_cost = 0.05  # five small matrix products on stored embeddings

    @property
    def compute(self) -> AestheticConfig:
        return self.cfg.aesthetic

    def configured(self) -> bool:
        return self.cfg.aesthetic.model is not None

    def check(self) -> None:
        """The head loads, and takes embeddings of the CLIP model's dimension."""
        from curate.models import clip

        head = load(resolve(self.cfg.aesthetic.model))
        if self.cfg.clip.model is None:
            return  # the plan says: the clip stage writes clip_image_embedding
        dim = clip.embedding_dim(clip.resolve(self.cfg.clip.model, self.cfg.clip.pretrained))
        if dim is not None and dim != head.input_dim:
            raise ConfigError(f"aesthetic.model takes {head.input_dim}-d CLIP embeddings, but clip.model "
                              f"{self.cfg.clip.model!r} gives {dim}-d ones: use a head trained for that CLIP model")

    def rules(self) -> list[Rule]:
        t = self.cfg.aesthetic.min_score
        if t is None:
            return []
        return [Rule.fixed(f"aesthetic_score IS NULL OR aesthetic_score < {t!r}", R.AESTHETIC_SCORE_BELOW,
                           fmt_threshold(t))]

    def keep_scores(self) -> dict[str, str]:
        return {"aesthetic": "aesthetic_score"}

    def setup(self) -> None:
        self.head = load(resolve(self.cfg.aesthetic.model))

    def __call__(self, batch: pa.Table) -> pa.Table:
        scores: list[float | None] = [None] * batch.num_rows
        embeddings = batch.column("clip_image_embedding").to_pylist()
        rows = [i for i in self.todo(batch) if embeddings[i] is not None]
        if rows:
            predicted = self.head.predict(np.array([embeddings[i] for i in rows], np.float32))
            for i, score in zip(rows, predicted.tolist()):
                scores[i] = score
        return self.append(batch, {"aesthetic_score": scores})
