"""Quantile thresholds: ``<stage>.keep_fraction`` resolved into the stage's threshold over the
whole run, before the decision (curate.pipeline.decide).

``clip.keep_fraction: 0.3`` keeps the top 30% of the run's CLIP scores, as DataComp's
strongest filtering baseline does (Gadre et al. 2023, "DataComp", CLIP score top 30% with
ViT-L/14). The population is every image the stage scored (its score column in RUN/scored/,
one value per sample_id, the original caption's score for pairs); the resolved threshold
``t`` is the k-th largest score, k = ceil(keep_fraction x scored images), so exactly the
images scoring ``>= t`` pass that rule (all of them on a tie at ``t``); for a score declared
lower-is-better (curate.stages.base.Score) it is the k-th smallest and ``<= t`` passes. It is exact, not
estimated, and computed without gathering the scores anywhere:

1. each partition's task returns its count, minimum and maximum;
2. each task histograms its scores into ``BINS`` equal bins of the current range; the driver
   sums the histograms, finds the bin holding the k-th largest, and narrows to it;
3. once that bin holds at most ``COLLECT`` scores (or after ``MAX_LEVELS`` narrowings), the
   tasks return its distinct values with their counts and the driver counts down to the k-th.

The driver holds a histogram and at most ``COLLECT`` values: nothing grows with the rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from curate.core.config import set_key, validate
from curate.core.rundir import RunDir
from curate.flow.plan import Plan, make_plan

BINS = 4096
COLLECT = 200_000
# After this many narrowings the range is 4096^-4 of the scores' span: the few distinct float
# values left are collected however many rows share them (a spike of equal scores).
MAX_LEVELS = 4
TASK_CPUS = 0.5


@dataclass(frozen=True)
class KeepFraction:
    """One quantile threshold to resolve: ``fraction_key`` (``clip.keep_fraction``) sets
    ``threshold_key`` (``clip.min_score``) from score column ``column``; ``higher_is_better``
    from the score's declaration (False: the fraction kept is the lowest scores)."""

    fraction_key: str
    threshold_key: str
    column: str
    fraction: float
    higher_is_better: bool = True


def wanted(plan: Plan) -> list[KeepFraction]:
    """The keep fractions the plan's enabled stages have set."""
    out = []
    for stage in plan.batch:
        for fraction_key, threshold_key in stage.keep_fractions.items():
            fraction = config_value(plan.cfg, fraction_key)
            if fraction is not None:
                column, score = next((c, s) for c, s in stage.scores.items() if s.threshold == threshold_key)
                out.append(KeepFraction(fraction_key, threshold_key, column, fraction, score.higher_is_better))
    return out


def resolve(plan: Plan, run: RunDir, partitions: list) -> tuple[Plan, dict]:
    """(the plan with every keep fraction replaced by its resolved threshold, what was
    resolved: ``{threshold_key: {"keep_fraction", "resolved", "scored", "at_or_above"}}``;
    ``at_or_above`` counts the scores that pass: at or below it when lower is better).
    ``partitions``: curate.pipeline.decide's, whose files the tasks read."""
    todo = wanted(plan)
    if not todo:
        return plan, {}
    data = plan.cfg.model_dump(mode="json")
    resolved = {}
    for item in todo:
        if item.higher_is_better:
            value, scored, at_or_above = kth_largest(plan, run, partitions, item.column, item.fraction)
        else:  # the k-th smallest: the k-th largest of the negated scores
            value, scored, at_or_above = kth_largest(plan, run, partitions, f'(-"{item.column}")', item.fraction)
            value = None if value is None else -value
        set_config_value(data, item.fraction_key, None)
        set_config_value(data, item.threshold_key, value)
        resolved[item.threshold_key] = {"keep_fraction": item.fraction, "resolved": value,
                                        "scored": scored, "at_or_above": at_or_above}
    return make_plan(validate(data)), resolved


def kth_largest(plan: Plan, run: RunDir, partitions: list, column: str, fraction: float) -> tuple[float | None, int, int]:
    """(the k-th largest ``column`` value of the run's scored rows, k = ceil(fraction x n);
    n; how many are >= it). (None, 0, 0) when nothing was scored."""
    def run_all(sql_of) -> list:
        return run_on_partitions(plan, run, partitions, sql_of(column))

    stats = run_all(lambda c: f"SELECT count({c}), min({c})::DOUBLE, max({c})::DOUBLE FROM scored")
    n = sum(rows[0][0] for rows in stats)
    if n == 0:
        return None, 0, 0
    lo = min(rows[0][1] for rows in stats if rows[0][0])
    hi = max(rows[0][2] for rows in stats if rows[0][0])
    k = max(1, math.ceil(fraction * n))
    levels: list[tuple[float, float, int]] = []  # (lo, hi, bin) of each narrowing
    remaining, in_range = k, n
    while in_range > COLLECT and hi > lo and len(levels) < MAX_LEVELS:
        counts = [0] * BINS
        for rows in run_all(lambda c: f"SELECT {bin_sql(c, lo, hi)} AS b, count(*) FROM scored "
                                      f"WHERE {_within(c, levels)} GROUP BY b"):
            for b, count in rows:
                counts[b] += count
        b, remaining, in_range = _bin_of_kth(counts, remaining)
        levels.append((lo, hi, b))
        lo, hi = lo + (hi - lo) * b / BINS, lo + (hi - lo) * (b + 1) / BINS
    values: dict[float, int] = {}
    for rows in run_all(lambda c: f"SELECT {c}::DOUBLE AS v, count(*) FROM scored WHERE {_within(c, levels)} GROUP BY v"):
        for value, count in rows:
            values[value] = values.get(value, 0) + count
    above = k - remaining  # scores above the narrowed range
    for value in sorted(values, reverse=True):
        above += values[value]
        if above >= k:
            return value, n, above
    raise AssertionError("the k-th largest score lies in the range it was narrowed to")


def bin_sql(column: str, lo: float, hi: float, bins: int | None = None) -> str:
    """SQL: the bin (0..bins-1, default BINS) of ``column`` in [lo, hi] (the top edge in the last bin)."""
    bins = BINS if bins is None else bins  # read at call time: tests narrow BINS
    return f"least({bins - 1}, greatest(0, floor(({column}::DOUBLE - {lo!r}) / ({hi!r} - {lo!r}) * {bins})))::BIGINT"


def _within(column: str, levels: list[tuple[float, float, int]]) -> str:
    """SQL: the value is scored and in the bin chosen at every narrowing so far (membership
    by the same expression each time, so no value falls between two levels' edges)."""
    return " AND ".join([f"{column} IS NOT NULL"] + [f"{bin_sql(column, lo, hi)} = {b}" for lo, hi, b in levels])


def _bin_of_kth(counts: list[int], k: int) -> tuple[int, int, int]:
    """(the bin holding the k-th largest, k within that bin, the bin's count)."""
    for b in range(BINS - 1, -1, -1):
        if counts[b] >= k:
            return b, k, counts[b]
        k -= counts[b]
    raise AssertionError("fewer values than k")


def run_on_partitions(plan: Plan, run: RunDir, partitions: list, sql: str) -> list[list[tuple]]:
    """``sql`` over each partition's ``scored`` view (one row per sample_id), one Ray task each;
    each partition's rows, in partition order."""
    import ray

    task = ray.remote(num_cpus=TASK_CPUS)(_partition_query)
    return ray.get([task.remote(plan, run, p, sql) for p in partitions])


def _partition_query(plan: Plan, run: RunDir, partition, sql: str) -> list[tuple]:
    """Ray task: ``sql`` over the partition's ``scored`` view (one row per sample_id)."""
    from curate.flow.decision import open_views

    con = open_views(run.root, plan, partition.files(run))
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def config_value(cfg, dotted: str):
    """``cfg.a.b`` for the dotted key ``a.b`` of a validated config."""
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def set_config_value(data: dict, dotted: str, value) -> None:
    """``data["a"]["b"] = value`` for the dotted key ``a.b`` of a config as plain dicts."""
    set_key(data, dotted.split("."), value)

