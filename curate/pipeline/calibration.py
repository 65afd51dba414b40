"""Calibrated thresholds: a judge whose threshold is ``auto`` gets one from the run's own scores.

A judge is a model stage that scores every caption (CLIP's cosine, BLIP ITM's P(match)).
Their scales differ from model to model (CLIP ViT-B/32 scores true pairs around 0.3, the
tiny CLIP around 0.9), so no fixed number transfers; and each judge has blind spots of its
own (an ITM trained without negatives of one kind accepts them: docs/capfilt.md). By
default every caption must pass every judge, and a judge set to ``auto`` is calibrated
against the *other* judges, without labels:

1. The other judges' confident verdicts on the original captions: a caption every other
   judge ranks in its top ``CONFIDENT`` fraction of the run's scores is a *confident
   accept*, one every other judge ranks in its bottom fraction a *confident reject*.
   Ranks, not values: the other judges' scales are unknown too.
2. The calibrated judge's scores of the two groups are histogrammed (``BINS`` bins over its
   range, summed over partitions like curate.pipeline.quantiles: nothing grows with the
   rows on the driver), and its threshold is the cut that best separates them: Youden's J
   (TPR - FPR, the accepts as positives), taking the middle of the run of bins whose J is
   within ``J_TOLERANCE`` of the best. Why the middle: between two well-separated groups J
   is flat across the gap, and the gap's lower edge would pass captions just above the
   rejects (the one-attribute-wrong captions a blind judge accepts lie there). Why Youden
   and not a quantile of the accepts: the accepts hold the other judge's blind spot (an ITM
   blind to shapes confidently accepts "a green square" for a green triangle); a minority
   of such rows moves a low quantile, not the cut between the two groups' bulks.

The resolved value is rounded to ``DECIMALS`` decimals (scores move a float bit from one
batching to another: the threshold must not), recorded in summary.json ``thresholds`` and
written into the reason (``clip_score_below:0.7413``). A refilter decides again from the
stored scores: ``--set clip.min_score=0.8`` replaces it, ``auto`` calibrates again.

Failure modes, each recorded as ``fallback`` with the stage's fallback value (ITM: BLIP's
P(match) 0.5; CLIP: none, score only):

- no other judge in the run (one model alone cannot check itself);
- fewer than ``MIN_CONFIDENT`` confident accepts or rejects (a small run, or judges that
  agree on nothing);
- the judges do not separate the groups (best J below ``MIN_J``): they disagree too much for
  one to calibrate the other; the report's judges section shows where;
- a documents run (its images have no original caption to calibrate on).

It assumes the original captions hold both good and bad pairs, each well over
``CONFIDENT`` of the run (web alt-text does: LAION kept about 10% of Common Crawl's pairs
at CLIP 0.28; DataComp's best filter keeps the top 30%). A corpus of only good captions
gives confident "rejects" that are good too, and a threshold between good and good: set
the threshold by hand there (or use a published one by name, docs/config.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from curate.core.config import AUTO, validate
from curate.core.rundir import RunDir
from curate.flow.plan import Plan, make_plan
from curate.pipeline import quantiles

CONFIDENT = 0.25  # top / bottom fraction of another judge's scores that counts as its confident verdict
MIN_CONFIDENT = 30  # rows each group needs
MIN_J = 0.3  # below this the groups are not separated: no calibration
J_TOLERANCE = 0.01
BINS = 1024
DECIMALS = 4


@dataclass(frozen=True)
class Judge:
    """A calibratable judge: ``threshold_key`` (``clip.min_score``) over score column
    ``column`` of the original captions, with ``fallback`` when calibration cannot run."""

    stage: str
    threshold_key: str
    column: str
    fallback: float | None


def judges(plan: Plan) -> list[Judge]:
    """The enabled stages that judge captions and declare a calibration."""
    return [Judge(s.key, *s.calibration) for s in plan.batch if s.calibration is not None]


def resolve(plan: Plan, run: RunDir, partitions: list) -> tuple[Plan, dict]:
    """(the plan with every ``auto`` threshold replaced by its calibrated value or fallback,
    what was resolved: ``{threshold_key: {"calibrated", "resolved", ...}}``)."""
    every = judges(plan)
    todo = [j for j in every if quantiles.config_value(plan.cfg, j.threshold_key) == AUTO]
    if not todo:
        return plan, {}
    data = plan.cfg.model_dump(mode="json")
    resolved = {}
    for judge in todo:
        others = [j for j in every if j is not judge]
        record = calibrate(plan, run, partitions, judge, others)
        quantiles.set_config_value(data, judge.threshold_key, record["resolved"])
        resolved[judge.threshold_key] = record
    return make_plan(validate(data)), resolved


def calibrate(plan: Plan, run: RunDir, partitions: list, judge: Judge, others: list[Judge]) -> dict:
    """One judge's threshold from the others' confident verdicts (module docstring).

    Returns ``{"calibrated": True, "resolved", "against", "confident_accepts",
    "confident_rejects", "youden_j", "tpr", "fpr"}``, or, when it cannot run,
    ``{"calibrated": False, "resolved": judge.fallback, "fallback": <why>}``."""
    if plan.cfg.input.kind != "pairs":
        return _fallback(judge, "a documents run has no original captions to calibrate on")
    if not others:
        return _fallback(judge, f"no other judge in this run to calibrate {judge.stage} against")
    accept, reject = [], []
    for other in others:
        hi, n, _ = quantiles.kth_largest(plan, run, partitions, other.column, CONFIDENT)
        lo, _, _ = quantiles.kth_largest(plan, run, partitions, other.column, 1 - CONFIDENT)
        if n == 0:
            return _fallback(judge, f"no {other.column} was stored")
        accept.append(f"{other.column} >= {hi!r}")
        reject.append(f"{other.column} <= {lo!r}")
    col = judge.column
    groups = f"CASE WHEN {' AND '.join(accept)} THEN 1 WHEN {' AND '.join(reject)} THEN 0 END"
    stats = quantiles.run_on_partitions(plan, run, partitions, f"""
        SELECT count(*) FILTER (WHERE g = 1), count(*) FILTER (WHERE g = 0), min({col})::DOUBLE, max({col})::DOUBLE
        FROM (SELECT {col}, {groups} AS g FROM scored WHERE {col} IS NOT NULL) WHERE g IS NOT NULL""")
    n_accept, n_reject = sum(r[0][0] for r in stats), sum(r[0][1] for r in stats)
    counts = {"against": [o.column for o in others], "confident_accepts": n_accept, "confident_rejects": n_reject}
    if min(n_accept, n_reject) < MIN_CONFIDENT:
        return _fallback(judge, f"{n_accept} confident accepts and {n_reject} confident rejects by "
                         f"{', '.join(counts['against'])}: fewer than {MIN_CONFIDENT}", **counts)
    lo = min(r[0][2] for r in stats if r[0][2] is not None)
    hi = max(r[0][3] for r in stats if r[0][3] is not None)
    if hi <= lo:
        return _fallback(judge, f"every confident row has {col} {lo:g}", **counts)
    positive, negative = [0] * BINS, [0] * BINS
    for rows in quantiles.run_on_partitions(plan, run, partitions, f"""
            SELECT {quantiles.bin_sql(col, lo, hi, BINS)} AS b, g, count(*)
            FROM (SELECT {col}, {groups} AS g FROM scored WHERE {col} IS NOT NULL) WHERE g IS NOT NULL GROUP BY ALL"""):
        for b, g, n in rows:
            (positive if g == 1 else negative)[b] += n
    cut, j, tpr, fpr = youden_cut(positive, negative)
    if j < MIN_J:
        return _fallback(judge, f"{col} separates {', '.join(counts['against'])}'s confident accepts from its "
                         f"rejects too little (Youden's J {j:.2f} < {MIN_J})", **counts, youden_j=round(j, 4))
    threshold = round(lo + (hi - lo) * cut / BINS, DECIMALS)
    return {"calibrated": True, "resolved": threshold, **counts, "youden_j": round(j, 4),
            "tpr": round(tpr, 4), "fpr": round(fpr, 4)}


def youden_cut(positive: list[int], negative: list[int]) -> tuple[float, float, float, float]:
    """The cut between two histograms over the same bins (``positive[b]``: count of the
    positive group in bin b), as a bin edge position (``cut`` in 0..len: scores in bins
    ``>= cut`` pass; fractional: the middle of the best run), with its Youden's J, TPR and
    FPR. J(c) = TPR(c) - FPR(c) over the edges c = 0..len (Youden 1950, "Index for rating
    diagnostic tests"); the middle of the longest run of edges within J_TOLERANCE of the best."""
    n_pos, n_neg = sum(positive), sum(negative)
    j_at, tpr_at, fpr_at = [], [], []
    pos_above, neg_above = n_pos, n_neg
    for b in range(len(positive) + 1):  # edge b: bins b.. pass
        tpr, fpr = pos_above / n_pos, neg_above / n_neg
        j_at.append(tpr - fpr)
        tpr_at.append(tpr)
        fpr_at.append(fpr)
        if b < len(positive):
            pos_above -= positive[b]
            neg_above -= negative[b]
    best = max(j_at)
    runs, start = [], None
    for b, j in enumerate(j_at + [-math.inf]):
        near = j >= best - J_TOLERANCE
        if near and start is None:
            start = b
        elif not near and start is not None:
            runs.append((start, b - 1))
            start = None
    first, last = max(runs, key=lambda r: (r[1] - r[0], max(j_at[r[0]:r[1] + 1])))
    middle = (first + last) / 2
    at = round(middle)
    return middle, j_at[at], tpr_at[at], fpr_at[at]


def _fallback(judge: Judge, why: str, **extra) -> dict:
    return {"calibrated": False, "resolved": judge.fallback, "fallback": why, **extra}

