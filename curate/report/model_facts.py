"""The models a run used, for the report's summary line: one fact per model stage whose model is set."""

from __future__ import annotations

from curate.report import html
from curate.stages.registry import STAGES


def model_facts(config: dict, kind: str = "pairs") -> list[str]:
    """``CLIP <b>reference</b>`` for each model stage built for ``kind`` whose model the run's
    config (its config.yaml as a dict) sets, in stage-list order; labels are the stages' own."""
    facts = []
    for stage in STAGES:
        section = config.get(stage.section or stage.key) or {}
        if getattr(stage, "uses_model", False) and kind in stage.kinds and isinstance(section, dict) and section.get("model"):
            facts.append(f"{html.esc(stage.label or stage.key)} <b>{html.esc(str(section['model']))}</b>")
    return facts
