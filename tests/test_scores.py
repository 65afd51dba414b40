"""A score's meaning comes from its declaration (curate.stages.base.Score), never from its
column's name: which columns are scores, which way a threshold keeps, the funnel's labels."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from curate.report import plots, stats
from curate.schemas import reasons as R
from curate.stages.base import Score


def _manifest(**columns) -> duckdb.DuckDBPyConnection:
    """A ``manifest`` table: every row kept, no reason, and ``columns`` (name -> (SQL type, values))."""
    con = duckdb.connect()
    n = len(next(iter(columns.values()))[1])
    table = pa.table({"status": ["kept"] * n, "reason": pa.array([None] * n, pa.string())})
    con.register("rows_in", table)
    casts = ", ".join(f"list_value({', '.join(map(repr, values))})::{kind}[] AS {name}" for name, (kind, values) in columns.items())
    con.execute(f"CREATE TABLE manifest AS SELECT status, reason, {', '.join(f'{c}[i] AS {c}' for c in columns)} "
                f"FROM (SELECT *, row_number() OVER () AS i FROM rows_in), (SELECT {casts})")
    return con


def test_a_column_is_a_score_because_a_stage_declares_it_not_because_of_its_name():
    con = _manifest(clip_score=("FLOAT", [0.1, 0.2]), nsfw_score=("FLOAT", [0.5, 0.6]),
                    aesthetic_score=("FLOAT", [4.0, 5.0]), width=("INTEGER", [3, 4]))
    assert stats.score_columns(con) == ["clip_score", "aesthetic_score"]  # nsfw_score: no stage declares it
    table = stats.score_quantiles(con)
    assert sorted(set(table.column("measure").to_pylist())) == ["aesthetic_score", "clip_score"]


def test_every_declared_score_of_a_kind_is_found_with_its_label():
    pairs, documents = stats.declared_scores("pairs"), stats.declared_scores("documents")
    assert pairs["clip_score"].label == "CLIP score" and pairs["clip_score"].reason == R.CLIP_SCORE_BELOW
    # a documents run's clip_score is its best text's: the kind's declaration replaces the stage's
    assert documents["clip_score"].threshold == "interleaved.min_sim" and "placed_itm_prob" in documents
    assert "placed_itm_prob" not in pairs


@pytest.mark.parametrize("higher_is_better, kept", [(True, "10%"), (False, "91%")])
def test_what_a_threshold_keeps_follows_the_declared_direction(higher_is_better, kept):
    values = np.arange(100) / 100  # 0.00, 0.01, ..., 0.99
    svg = plots.keep_fraction_curve(values, "a score", "curve", 0.9, higher_is_better=higher_is_better)
    assert f"0.9 keeps {kept}" in svg
    assert ("higher is better" if higher_is_better else "lower is better") in svg


def test_a_lower_is_better_score_passes_at_or_below_its_threshold():
    drop_high = Score("NSFW probability", higher_is_better=False, low=0.0, high=1.0)
    assert drop_high.passing_sql("nsfw_prob", 0.2) == "nsfw_prob <= 0.2"
    assert Score("CLIP score").passing_sql("clip_score", 0.28) == "clip_score >= 0.28"


def test_the_funnel_names_a_threshold_step_by_its_scores_label():
    con = _manifest(clip_score=("FLOAT", [0.1, 0.9]))
    con.execute("UPDATE manifest SET status = 'filtered', reason = 'clip_score_below:0.5' WHERE clip_score < 0.5")
    steps = dict(stats.funnel_steps(con))
    assert steps["after CLIP score threshold"] == 1
    assert stats.threshold_from_reasons(con, "clip_score") == 0.5
    assert stats.eligible_scores(con, "clip_score").tolist() == pytest.approx([0.1, 0.9])
