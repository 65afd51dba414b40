"""Candidate captions, as both kinds judge them: one row per caption with the stages' scores.

A pair's candidates are its original caption and its synthetic ones (curate.flow.pairs); a
document image's are its synthetic captions, when no text of its document describes it
(curate.flow.documents). Each stage says what it adds to a candidate in ``caption_columns``
(name -> its column for the original, the list column of its synthetic captions); the
caption-scope rules read those names, so a new per-caption score needs no change here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from curate.flow import pair_record

if TYPE_CHECKING:
    from curate.flow.plan import Plan

# Scores every candidate has in the manifest's `captions` structs, NULL when a stage is off
# (the shard record's caption scores too: one list).
STRUCT_SCORES = pair_record.CAPTION_SCORES
# One candidate as the manifest's `captions` holds it (curate.schemas.columns.CAPTION_STRUCT).
CAPTION_STRUCT_SQL = ("struct_pack(text := text, source := source, clip_score := clip_score::FLOAT, "
                      "itm_prob := itm_prob::FLOAT, itm_cosine := itm_cosine::FLOAT, kept := kept, reason := reason)")


def candidate_columns(plan: Plan) -> dict[str, tuple[str, str | None]]:
    """Candidate column name -> (its column for the original caption, the list column of the
    synthetic captions or None), from every enabled batch stage."""
    out: dict[str, tuple[str, str | None]] = {}
    for stage in plan.batch:
        out.update(stage.caption_columns)
    return out


def candidate_scores(plan: Plan) -> dict[str, tuple[str, str]]:
    """Candidate column name -> (SQL for the original caption, SQL for synthetic caption ``i``)."""
    scores = {name: ("NULL::FLOAT", "NULL::FLOAT") for name in STRUCT_SCORES}
    for name, (original, synthetic) in candidate_columns(plan).items():
        scores[name] = (original or "NULL", f"{synthetic}[i]" if synthetic else "NULL")
    return scores


def synthetic_rows_sql(plan: Plan, base: str) -> str:
    """One row per synthetic caption of the rows of ``base`` (a relation with ``sample_id``,
    ``synthetic_captions`` and the stages' synthetic columns): ``idx`` 1.. in generation
    order, ``source`` = 'synthetic', ``text`` and every candidate column."""
    per = ", ".join(f"{s} AS {name}" for name, (_, s) in candidate_scores(plan).items())
    return f"""
                SELECT sample_id, i AS idx, 'synthetic' AS source, synthetic_captions[i] AS text, {per}
                FROM (SELECT *, unnest(range(1, len(synthetic_captions) + 1)) AS i FROM {base}
                      WHERE synthetic_captions IS NOT NULL)"""


# The judges of a caption, in the order they break ties: BLIP ITM's P(match), CLIP's cosine.
JUDGES = ("itm_prob", "clip_score")


def rank_column(plan: Plan) -> str:
    """What "best" means among captions: ITM's P(match) when it ran, else the CLIP score."""
    for column in JUDGES:
        if column in plan.written:
            return column
    return "NULL::FLOAT"


def judged_rank_sql(plan: Plan) -> str:
    """SQL over one image's candidates: how the judges rank a caption together, higher is
    better (a window per sample_id). With both ITM and CLIP: the sum of its ranks by each
    (a Borda count: scale-free, so neither score's range outweighs the other; a caption
    the two judges disagree on loses to one both rank well); with one judge: its score.
    Captions several judges agree on is how LAION-COCO chose among BLIP's samples (there:
    two CLIP models)."""
    judges = [j for j in JUDGES if j in plan.written]
    if len(judges) < 2:
        return rank_column(plan)
    return " + ".join(f"rank() OVER (PARTITION BY sample_id ORDER BY {j} ASC NULLS FIRST)" for j in judges)
