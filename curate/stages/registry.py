"""The model stages enabled by a config, in pipeline order."""

from __future__ import annotations

from curate.pipeline.config import CurateConfig


def model_stages(cfg: CurateConfig) -> list:
    """Stages with ``check()``, ``apply(ds, image_col)``, ``filter_sql()``, ``scored_schema``
    and ``manifest_columns``; a stage is on when its model is configured."""
    from curate.stages.clip_score import ClipStage

    stages = []
    if cfg.clip.model:
        stages.append(ClipStage(cfg.clip))
    return stages
