"""The stage list: the one place that knows every stage.

Order matters only where the declarations leave it open: a stage runs after the stages
that write what it reads (``reads``/``optional_reads``, checked by curate.flow.plan), and
otherwise in this order, which is also the order of their rules.
"""

from __future__ import annotations

from curate.stages.aesthetic import AestheticStage
from curate.stages.blip_caption import CaptionStage
from curate.stages.blip_itm import ItmStage
from curate.stages.caption_rules import CaptionRulesStage
from curate.stages.clip_score import ClipStage
from curate.stages.dedupe_stage import DedupeStage
from curate.stages.inspect import InspectStage
from curate.stages.phash import PhashStage

STAGES = (
    InspectStage,
    PhashStage,
    CaptionStage,
    CaptionRulesStage,
    ClipStage,
    ItmStage,
    AestheticStage,
    DedupeStage,
)
