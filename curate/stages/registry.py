"""The model stages enabled by a config, in pipeline order."""

from __future__ import annotations

from curate.core.config import CurateConfig


def model_stages(cfg: CurateConfig) -> list:
    """Stages with ``check()``, ``apply(ds, image_col)``, ``scored_schema`` and
    ``manifest_columns``; a stage is on when its model is configured.

    The captioner runs first so that CLIP and ITM score its captions with the original's.
    """
    from curate.stages.blip_caption import CaptionStage
    from curate.stages.blip_itm import ItmStage
    from curate.stages.clip_score import ClipStage

    stages = []
    if cfg.captioning:
        stages.append(CaptionStage(cfg.caption))
    if cfg.clip.model:
        stages.append(ClipStage(cfg.clip))
    if cfg.itm.model:
        stages.append(ItmStage(cfg.itm))
    return stages
