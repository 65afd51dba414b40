"""Calibrated judge thresholds (curate.pipeline.calibration): the cut between two groups'
histograms, and the config values a judge's threshold takes."""

from __future__ import annotations

import random

import pytest

from curate.pipeline.calibration import BINS, youden_cut


def _hist(values: list[float], lo: float = 0.0, hi: float = 1.0, bins: int = BINS) -> list[int]:
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / (hi - lo) * bins))] += 1
    return counts


def _score(cut: float, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * cut / BINS


def test_two_separated_groups_are_cut_in_the_middle_of_the_gap():
    rng = random.Random(0)
    accepts = [rng.uniform(0.8, 0.95) for _ in range(300)]
    rejects = [rng.uniform(0.05, 0.4) for _ in range(300)]
    cut, j, tpr, fpr = youden_cut(_hist(accepts), _hist(rejects))
    assert j == pytest.approx(1.0) and tpr == 1.0 and fpr == 0.0
    # the gap is (max reject, min accept); its lower edge would pass captions just above the rejects
    assert _score(cut) == pytest.approx((max(rejects) + min(accepts)) / 2, abs=0.01)


def test_a_minority_of_the_other_judges_blind_spot_among_the_accepts_does_not_move_the_cut_into_it():
    # The accepts of a judge blind to one attribute hold some captions wrong in that attribute:
    # they score like the rejects' upper part under the judge being calibrated.
    rng = random.Random(1)
    true = [rng.gauss(0.9, 0.02) for _ in range(400)]
    blind_spot = [rng.gauss(0.62, 0.03) for _ in range(60)]  # 13% of the accepts
    rejects = [rng.gauss(0.3, 0.08) for _ in range(300)] + [rng.gauss(0.62, 0.03) for _ in range(100)]
    cut, j, tpr, fpr = youden_cut(_hist(true + blind_spot), _hist(rejects))
    threshold = _score(cut)
    assert max(blind_spot) < threshold < min(true)  # rejects the blind spot, keeps every true caption
    assert j > 0.8


def test_overlapping_groups_get_the_best_single_cut():
    rng = random.Random(2)
    accepts = [rng.gauss(0.6, 0.1) for _ in range(2000)]
    rejects = [rng.gauss(0.4, 0.1) for _ in range(2000)]
    cut, j, _, _ = youden_cut(_hist(accepts), _hist(rejects))
    # equal spreads: the best cut is where the two densities cross, halfway
    assert _score(cut) == pytest.approx(0.5, abs=0.03)
    assert j == pytest.approx(0.6827, abs=0.04)  # 2 Phi(1) - 1 for two unit-separated normals


def test_describe_says_which_thresholds_the_decision_resolves():
    from curate.core.config import validate
    from curate.flow.plan import make_plan
    from curate.pipeline.describe import describe

    base = {"input": {"path": "x.parquet"}, "output": {"path": "/tmp/unused"}}
    both = describe(make_plan(validate({**base, "clip": {"model": "curate:tiny-clip"},
                                        "itm": {"model": "curate:tiny-blip-itm", "min_prob": "auto"}})))
    assert both["resolved_at_decision"] == [
        "clip.min_score: auto (calibrated against itm_prob; fallback none, score only)",
        "itm.min_prob: auto (calibrated against clip_score; fallback 0.5)"]
    alone = describe(make_plan(validate({**base, "clip": {"model": "curate:tiny-clip", "keep_fraction": 0.3}})))
    assert alone["resolved_at_decision"] == ["clip.min_score: the top 0.3 of the run's clip_score (keep_fraction)"]
    clip_only = describe(make_plan(validate({**base, "clip": {"model": "curate:tiny-clip"}})))
    assert clip_only["resolved_at_decision"] == ["clip.min_score: auto (no other judge: falls back; fallback none, score only)"]
