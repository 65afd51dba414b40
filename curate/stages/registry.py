"""The model stages enabled by a config, in pipeline order."""

from __future__ import annotations

from curate.pipeline.config import CurateConfig


def model_stages(cfg: CurateConfig) -> list:
    """Stages with an ``apply(ds, image_col) -> ds`` method; empty until a model is configured."""
    return []
