"""Quantile thresholds (``<stage>.keep_fraction``, curate.pipeline.quantiles): resolved over
the whole run to the exact k-th largest score, recorded, applied and refilter-able."""

from __future__ import annotations

import json
import math
import shutil

import duckdb
import pytest

from curate.core import storage
from curate.core.config import ConfigError, validate
from curate.core.rundir import RunDir
from curate.flow.plan import make_plan
from curate.pipeline import quantiles
from curate.pipeline.decide import plan_partitions
from curate.pipeline.runner import refilter
from e2e import read_manifest


def _scores(run: RunDir, column: str) -> list[float]:
    """The column over the run's scored rows, one per sample_id, as the decision reads them."""
    files = storage.list_files(run.scored, ".parquet", recursive=True)
    con = duckdb.connect()
    rows = con.execute(f"SELECT sample_id, any_value({column}) FROM read_parquet({files!r}) GROUP BY sample_id").fetchall()
    return sorted((float(v) for _, v in rows if v is not None), reverse=True)


def _kth(scores: list[float], fraction: float) -> float:
    return scores[max(1, math.ceil(fraction * len(scores))) - 1]


@pytest.fixture
def run_copy(finished_run, tmp_path):  # noqa: F811
    root = tmp_path / "run"
    shutil.copytree(finished_run, root)
    data = json.loads(json.dumps(__import__("yaml").safe_load((root / "config.yaml").read_text())))
    data["output"]["path"] = str(root)
    (root / "config.yaml").write_text(validate(data).to_yaml())
    return RunDir(str(root))


@pytest.mark.parametrize("fraction", [0.01, 0.3, 0.5, 0.97, 1.0])
def test_the_kth_largest_is_exact_across_partitions_and_narrowings(run_copy, ray_session, monkeypatch, fraction):
    """Tiny bins and a tiny collect limit force several narrowings; the run's one partition
    given three times stands for three partitions (every score three times, ties included)."""
    monkeypatch.setattr(quantiles, "BINS", 4)
    monkeypatch.setattr(quantiles, "COLLECT", 3)
    plan = make_plan(validate(__import__("yaml").safe_load(storage.read_text(run_copy.config))))
    partitions = plan_partitions(json.loads(storage.read_text(run_copy.marker("prepare"))), 10**6) * 3
    scores = sorted(_scores(run_copy, "clip_score") * 3, reverse=True)
    value, scored, at_or_above = quantiles.kth_largest(plan, run_copy, partitions, "clip_score", fraction)
    assert scored == len(scores)
    assert value == _kth(scores, fraction)
    assert at_or_above == sum(s >= value for s in scores) >= math.ceil(fraction * len(scores))


def test_refilter_with_a_keep_fraction_keeps_the_top_scores_and_records_the_threshold(run_copy, ray_session):
    scores = _scores(run_copy, "clip_score")
    want = _kth(scores, 0.3)
    with pytest.raises(ConfigError, match="set min_score or keep_fraction, not both"):
        refilter(run_copy.root, ["clip.keep_fraction=0.3"])  # the demo config sets clip.min_score
    result = refilter(run_copy.root, ["clip.min_score=null", "clip.keep_fraction=0.3"])
    resolved = result.summary["thresholds"]["clip.min_score"]
    assert resolved == {"keep_fraction": 0.3, "resolved": want, "scored": len(scores),
                        "at_or_above": sum(s >= want for s in scores)}
    summary = json.loads(storage.read_text(run_copy.summary))
    assert summary["thresholds"]["clip.min_score"]["resolved"] == want
    below = f"clip_score_below:{want:g}"
    judged = 0
    for row in read_manifest(run_copy.root).to_pylist():
        original = (row["captions"] or [None])[0]
        if row["clip_score"] is None or original is None:
            continue  # not scored: no image, or the image rules stopped it first
        reason = original["reason"] or ""
        if row["clip_score"] >= want:
            assert not reason.startswith("clip_score_below"), row
        elif reason.startswith("clip_score_below"):  # (a text rule may have failed it first)
            assert reason == below, row
            judged += 1
    assert judged > 0


def test_keep_fraction_config():
    base = {"input": {"path": "in.parquet"}, "output": {"path": "run"}}
    cfg = validate({**base, "itm": {"model": "curate:tiny-blip-itm", "keep_fraction": 0.3}})
    assert cfg.itm.min_prob is None  # the default 0.5 gives way to the fraction; saved as null
    assert validate(__import__("yaml").safe_load(cfg.to_yaml())).itm.keep_fraction == 0.3
    assert validate(base).itm.min_prob == 0.5  # BLIP's decision when ITM is on
    assert validate({**base, "itm": {"min_prob": None}}).itm.min_prob is None  # score only
    for bad in (0, 1.5):
        with pytest.raises(ConfigError, match="keep_fraction"):
            validate({**base, "clip": {"keep_fraction": bad}})
