"""Documents runs: the rules that keep or drop a whole document, as data.

A document rule is a :class:`~curate.stages.base.Rule` with ``scope="document"``: SQL over
one row of facts per document, taken after its images are placed (curate.flow.interleave),
evaluated by DuckDB, first match wins, like every other rule of the decision. The facts
(:data:`FACTS`):

- ``doc_error``: why the row is not a document (``malformed_document:<what>``), else NULL;
- ``n_texts``, ``n_words``: the document's own text items and their words (synthetic
  captions not counted: they are not the page's text);
- ``n_images_in``: images in the input;
- ``n_images_valid``: images that downloaded and passed the image rules, before matching,
  dedupe and placement (what OBELICS counts: the images left after its image filters);
- ``n_images_kept``: images in the curated document;
- ``n_synthetic_texts``: synthetic captions written next to kept images.

The rules and their keys (all ``interleaved.*``; off when unset, OBELICS's values in brackets,
from huggingface/OBELICS ``config_filter_web_documents.yaml``, Laurençon et al. 2023):
``min_words`` [10] and ``max_words`` [2000] over ``n_words``; ``max_document_images`` [30]
over ``n_images_valid``; ``min_images`` [1] over ``n_images_kept``; and the image-to-text
ratio, kept images per word (``n_images_kept / max(n_words, 1)``, as NeMo Curator's
``InterleavedImageToTextRatioFilterStage`` defines it), bounded by ``min_image_text_ratio``
and ``max_image_text_ratio``.
"""

from __future__ import annotations

import pyarrow as pa

from curate.core.config import InterleavedConfig
from curate.schemas import reasons as R
from curate.schemas.reasons import fmt_threshold
from curate.stages.base import Rule

FACTS = pa.schema([
    ("sample_id", pa.string()),
    ("doc_error", pa.string()),
    ("n_texts", pa.int32()),
    ("n_words", pa.int32()),
    ("n_images_in", pa.int32()),
    ("n_images_valid", pa.int32()),
    ("n_images_kept", pa.int32()),
    ("n_synthetic_texts", pa.int32()),
])
# Kept images per word; a document without words counts as one word (NeMo Curator does the same).
IMAGE_TEXT_RATIO = "n_images_kept::DOUBLE / greatest(n_words, 1)"


def _rule(when: str, code: R.Code, detail: object) -> Rule:
    return Rule.fixed(when, code, detail, scope="document")


def document_rules(cfg: InterleavedConfig) -> list[Rule]:
    """The document rules ``cfg`` turns on, in the order they apply (first match wins)."""
    rules = [Rule("doc_error IS NOT NULL", "doc_error", (R.MALFORMED_DOCUMENT,), scope="document")]
    if cfg.min_words > 0:
        rules.append(_rule(f"n_words < {cfg.min_words}", R.TOO_FEW_WORDS, cfg.min_words))
    if cfg.max_words is not None:
        rules.append(_rule(f"n_words > {cfg.max_words}", R.TOO_MANY_WORDS, cfg.max_words))
    if cfg.max_document_images is not None:
        rules.append(_rule(f"n_images_valid > {cfg.max_document_images}", R.TOO_MANY_IMAGES,
                           cfg.max_document_images))
    if cfg.min_images > 0:
        rules.append(_rule(f"n_images_kept < {cfg.min_images}", R.TOO_FEW_IMAGES, cfg.min_images))
    if cfg.min_image_text_ratio is not None:
        rules.append(_rule(f"{IMAGE_TEXT_RATIO} < {cfg.min_image_text_ratio!r}", R.IMAGE_TEXT_RATIO_BELOW,
                           fmt_threshold(cfg.min_image_text_ratio)))
    if cfg.max_image_text_ratio is not None:
        rules.append(_rule(f"{IMAGE_TEXT_RATIO} > {cfg.max_image_text_ratio!r}", R.IMAGE_TEXT_RATIO_ABOVE,
                           fmt_threshold(cfg.max_image_text_ratio)))
    return rules


def evaluate(facts: list[dict], rules: list[Rule], con=None) -> list[str | None]:
    """The reason each document's facts get from ``rules`` (None: kept), in order. ``con``: a
    DuckDB connection to use (the manifest step's); a private in-memory one when None."""
    import duckdb

    from curate.flow.decision import case_sql

    if not facts:
        return []
    own = con is None
    con = duckdb.connect() if own else con
    table = pa.Table.from_pylist(facts, schema=FACTS).append_column("_order", pa.array(range(len(facts)), pa.int64()))
    con.register("document_facts", table)
    try:
        reason = case_sql(rules)[1]
        rows = con.execute(f"SELECT {reason} FROM document_facts ORDER BY _order").fetchall()
    finally:
        con.unregister("document_facts")
        if own:
            con.close()
    return [r[0] for r in rows]
