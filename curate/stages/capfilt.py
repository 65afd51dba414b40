"""The caption decision: BLIP's CapFilt over the stored scores, one image at a time.

For every downloaded image that passed the image rules, the candidates are its original
caption and its synthetic ones (when the captioner ran). A caption passes the filter when
it passes the caption rules (curate.stages.cheap_filters), ``clip.min_score`` (CLIP on)
and ``itm.min_prob`` (ITM on). ``capfilt.mode``:

- ``capfilt``: keep the original if it passes, plus the ``capfilt.max_synthetic`` best
  synthetic captions that pass; no caption passes -> the sample is filtered.
- ``filter_only``: only the original is a candidate (CLIP/ITM filtering alone).
- ``caption_only``: the best synthetic captions replace the original, without score
  thresholds (the caption rules still apply).

"Best" is by ITM probability when ITM is on, else by CLIP score. The training caption
(``caption_chosen``) is the original when it passes (``capfilt.prefer: original``, the
default) or the best kept caption (``prefer: best``; on a tie the original wins).

Runs in the manifest step from stored columns only, so ``curate refilter`` can re-decide
at new thresholds or another mode without a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from curate.core.config import CurateConfig
from curate.schemas.status import fmt_threshold, reason
from curate.stages.cheap_filters import caption_reject

CAPTION_STRUCT = pa.struct([
    ("text", pa.string()),
    ("source", pa.string()),  # original | synthetic
    ("clip_score", pa.float32()),
    ("itm_prob", pa.float32()),
    ("itm_cosine", pa.float32()),
    ("kept", pa.bool_()),
    ("reason", pa.string()),  # why it failed the filter; NULL when it passed
])
DECISION_SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("caption_reason", pa.string()),  # NULL: at least one caption kept
    ("caption_chosen", pa.string()),
    ("caption_source", pa.string()),
    ("original_caption_reason", pa.string()),
    ("captions", pa.list_(CAPTION_STRUCT)),
    ("chosen_clip_score", pa.float32()),
    ("chosen_itm_prob", pa.float32()),
])
# Stored columns the decision reads, with their types when a stage that writes them is off.
INPUT_COLUMNS = {
    "caption_reject": "VARCHAR",
    "clip_score": "FLOAT",
    "itm_prob": "FLOAT",
    "itm_cosine": "FLOAT",
    "synthetic_captions": "VARCHAR[]",
    "synthetic_clip_scores": "FLOAT[]",
    "synthetic_itm_probs": "FLOAT[]",
    "synthetic_itm_cosines": "FLOAT[]",
}


@dataclass
class Candidate:
    text: str
    source: str
    clip_score: float | None
    itm_prob: float | None
    itm_cosine: float | None
    reason: str | None = None
    kept: bool = False


class Decider:
    def __init__(self, cfg: CurateConfig):
        self.cfg = cfg
        self.mode = cfg.capfilt.mode
        self.min_score = cfg.clip.min_score if cfg.clip.model else None
        self.min_prob = cfg.itm.min_prob if cfg.itm.model else None
        # A captioner's mistakes are fluent and nearly right (one wrong word), the hardest
        # negatives an ITM model sees: a stricter bar for them is often worth it.
        synthetic = cfg.capfilt.synthetic_min_prob
        self.synthetic_min_prob = (synthetic if synthetic is not None else cfg.itm.min_prob) if cfg.itm.model else None
        self.rank_by = "itm_prob" if cfg.itm.model else "clip_score" if cfg.clip.model else None

    def score_reason(self, c: Candidate) -> str | None:
        if self.mode == "caption_only" and c.source == "synthetic":
            return None  # caption_only trusts the captioner: no score thresholds
        if self.min_score is not None and (c.clip_score is None or c.clip_score < self.min_score):
            return reason("clip_score_below", fmt_threshold(self.min_score))
        min_prob = self.synthetic_min_prob if c.source == "synthetic" else self.min_prob
        if min_prob is not None and (c.itm_prob is None or c.itm_prob < min_prob):
            return reason("itm_prob_below", fmt_threshold(min_prob))
        return None

    def _rank(self, c: Candidate) -> float:
        value = getattr(c, self.rank_by) if self.rank_by else None
        return float("-inf") if value is None else value

    def candidates(self, row: dict) -> list[Candidate]:
        original = Candidate(" ".join((row["caption"] or "").split()), "original",
                             row["clip_score"], row["itm_prob"], row["itm_cosine"])
        original.reason = row["caption_reject"] or self.score_reason(original)
        if self.mode == "caption_only":
            original.reason = "caption_only_mode"
        out = [original]
        if self.mode == "filter_only":
            return out
        texts = row["synthetic_captions"] or []
        for j, text in enumerate(texts):
            c = Candidate(text, "synthetic", _at(row["synthetic_clip_scores"], j),
                          _at(row["synthetic_itm_probs"], j), _at(row["synthetic_itm_cosines"], j))
            c.reason = caption_reject(text, False, self.cfg.filters) or self.score_reason(c)
            out.append(c)
        return out

    def decide(self, row: dict) -> dict:
        candidates = self.candidates(row)
        original = candidates[0]
        # Best first (stable: generation order among equals), so `captions` reads as a ranking.
        synthetic = sorted(candidates[1:], key=self._rank, reverse=True)
        candidates = [original] + synthetic
        original.kept = original.reason is None
        passing = [c for c in synthetic if c.reason is None]
        limit = max(1, self.cfg.capfilt.max_synthetic) if self.mode == "caption_only" else self.cfg.capfilt.max_synthetic
        for c in passing[:limit]:
            c.kept = True
        kept = [c for c in candidates if c.kept]
        chosen = self.choose(kept)
        return {
            "sample_id": row["sample_id"],
            "caption_reason": None if kept else self.failure_reason(original, synthetic),
            "caption_chosen": chosen.text if chosen else None,
            "caption_source": chosen.source if chosen else None,
            "original_caption_reason": original.reason,
            "captions": [vars(c) for c in candidates],
            "chosen_clip_score": chosen.clip_score if chosen else None,
            "chosen_itm_prob": chosen.itm_prob if chosen else None,
        }

    def choose(self, kept: list[Candidate]) -> Candidate | None:
        if not kept:
            return None
        if self.cfg.capfilt.prefer == "original" and kept[0].source == "original":
            return kept[0]  # a human caption that passes is kept as written; synthetic ones rescue the rest
        return max(kept, key=self._rank)  # the first of equal ranks: the original, then the better synthetic

    def failure_reason(self, original: Candidate, synthetic: list[Candidate]) -> str:
        if self.mode == "caption_only":
            return reason("no_caption_passed", synthetic[0].reason) if synthetic else "no_synthetic_caption"
        if not synthetic:
            return original.reason  # no captioner (or nothing generated): the original's own reason
        return reason("no_caption_passed", original.reason)


def _at(values: list | None, j: int):
    return values[j] if values is not None and j < len(values) else None


def decisions_sql(available: set[str]) -> str:
    """The rows the decision needs: downloaded, passed the image rules."""
    columns = ", ".join(
        f"s.{name}" if name in available else f"NULL::{type_} AS {name}" for name, type_ in INPUT_COLUMNS.items()
    )
    return f"""
        SELECT r.sample_id, r.caption, {columns}
        FROM rows r JOIN scored s USING (sample_id)
        WHERE r.blocked_reason IS NULL AND s.download_reason IS NULL AND s.image_reject IS NULL
    """


DECIDE_BATCH_ROWS = 10_000  # rows decided in Python at a time (DuckDB's default batch is 1M)


def decide_all(con, cfg: CurateConfig) -> None:
    """The decision for every candidate row, into the DuckDB table ``captions_decided``.

    Streamed: batches are read through a cursor and inserted as they are decided, so the
    driver holds one batch of decisions at a time, not the whole table."""
    available = {row[0] for row in con.execute("SELECT column_name FROM (DESCRIBE scored)").fetchall()}
    decider = Decider(cfg)
    con.register("decided_batch", DECISION_SCHEMA.empty_table())
    con.execute("CREATE OR REPLACE TABLE captions_decided AS SELECT * FROM decided_batch")
    for batch in con.cursor().execute(decisions_sql(available)).to_arrow_reader(DECIDE_BATCH_ROWS):
        rows = [decider.decide(row) for row in batch.to_pylist()]
        con.register("decided_batch", pa.Table.from_pylist(rows, schema=DECISION_SCHEMA))
        con.execute("INSERT INTO captions_decided SELECT * FROM decided_batch")
    con.unregister("decided_batch")
