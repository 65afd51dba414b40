"""Candidate captions, as both kinds judge them: one row per caption with the stages' scores.

A pair's candidates are its original caption, its alternates (the captions of the other rows
with its URL, curate.pipeline.same_url) and its synthetic ones (curate.flow.pairs); a
document image's are its synthetic captions, when no text of its document describes it
(curate.flow.documents). Each stage says what it adds to a candidate in ``caption_columns``
(name -> its column for the original, the list column of its synthetic captions, the list
column of its alternates); the caption-scope rules read those names, so a new per-caption
score needs no change here.

A text model's stage also names its token columns (``token_columns``: each caption's length
in its tokenizer, the row's limit), so each candidate records which models cut it
(``truncated``). Documents runs record no token counts: theirs are NULL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from curate.flow import pair_record

if TYPE_CHECKING:
    from curate.flow.kind import Plan

# Scores every candidate has in the manifest's `captions` structs, NULL when a stage is off
# (the shard record's caption scores too: one list); and its length in each text model's
# tokenizer, NULL when that model is off.
STRUCT_SCORES = pair_record.CAPTION_SCORES
STRUCT_TOKENS = pair_record.CAPTION_TOKENS
# The candidate lists of a row: source -> (its texts' list column, its place in a
# caption_columns triple). The original (place 0) is the row's own caption.
LISTS = {"synthetic": ("synthetic_captions", 1), "alternate": ("alternate_caption_texts", 2)}


def candidate_columns(plan: Plan) -> dict[str, tuple[str | None, str | None, str | None]]:
    """Candidate column name -> (its column for the original caption, the list column of the
    synthetic captions, that of the alternates; each or None), from every enabled batch stage."""
    out: dict[str, tuple[str | None, str | None, str | None]] = {}
    for stage in plan.batch:
        out.update(stage.caption_columns)
    return out


def candidate_scores(plan: Plan) -> dict[str, tuple[str, str, str]]:
    """Candidate column name -> (SQL for the original caption, for synthetic caption ``i``,
    for alternate ``i``); every STRUCT_SCORES and STRUCT_TOKENS name is there (NULL when off)."""
    scores = {name: ("NULL::FLOAT",) * 3 for name in STRUCT_SCORES}
    scores.update({name: ("NULL::INTEGER",) * 3 for name in STRUCT_TOKENS})
    for name, (original, synthetic, alternate) in candidate_columns(plan).items():
        scores[name] = (original or "NULL", f"{synthetic}[i]" if synthetic else "NULL",
                        f"{alternate}[i]" if alternate else "NULL")
    return scores


def text_models(plan: Plan) -> list[tuple[str, str, str]]:
    """(stage key, its caption column of token counts, its row column of the token limit) of
    each enabled text model, in run order."""
    return [(stage.key, *stage.token_columns) for stage in plan.batch if stage.token_columns]


def token_limits(plan: Plan) -> list[str]:
    """The row columns of the text models' token limits, which every candidate row carries
    (a row's captions share its limits) for ``truncated_sql``."""
    return [limit for _, _, limit in text_models(plan)]


def candidate_select(plan: Plan, place: int) -> str:
    """The SELECT list of every candidate column for one source (``place`` in the
    caption_columns triples: 0 original, 1 synthetic ``i``, 2 alternate ``i``), then the
    token limits."""
    return ", ".join([f"{spec[place]} AS {name}" for name, spec in candidate_scores(plan).items()]
                     + token_limits(plan))


def list_rows_sql(plan: Plan, base: str, source: str) -> str:
    """One row per caption of list ``source`` (``synthetic``, ``alternate``: :data:`LISTS`)
    of the rows of ``base`` (a relation with ``sample_id``, the list and the stages' columns
    for it): ``idx`` 1.. in list order, ``source``, ``text`` and every candidate column."""
    texts, place = LISTS[source]
    return f"""
                SELECT sample_id, i AS idx, '{source}' AS source, {texts}[i] AS text, {candidate_select(plan, place)}
                FROM (SELECT *, unnest(range(1, len({texts}) + 1)) AS i FROM {base} WHERE {texts} IS NOT NULL)"""


def synthetic_rows_sql(plan: Plan, base: str) -> str:
    """One row per synthetic caption of the rows of ``base``, ``idx`` 1.. in generation order
    (:func:`list_rows_sql`)."""
    return list_rows_sql(plan, base, "synthetic")


def truncated_sql(plan: Plan) -> str:
    """Which text models read only the first tokens of a candidate, and at how many tokens:
    ``clip:77`` or ``clip:77,itm:512`` (the stage key and its model's limit, in run order);
    NULL when every model read all of it, or no count was recorded."""
    parts = [f"CASE WHEN {count} > {limit} THEN '{key}:' || {limit} END" for key, count, limit in text_models(plan)]
    return f"nullif(concat_ws(',', {', '.join(parts)}), '')" if parts else "NULL::VARCHAR"


def caption_struct_sql(plan: Plan) -> str:
    """One candidate as the manifest's `captions` holds it (curate.schemas.columns.CAPTION_STRUCT)."""
    return ("struct_pack(text := text, source := source, clip_score := clip_score::FLOAT, "
            "itm_prob := itm_prob::FLOAT, itm_cosine := itm_cosine::FLOAT, clip_tokens := clip_tokens::INTEGER, "
            f"itm_tokens := itm_tokens::INTEGER, truncated := {truncated_sql(plan)}, kept := kept, reason := reason)")


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
