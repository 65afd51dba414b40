"""Build stages as the pipeline does, for tests that call a stage on a batch directly."""

from __future__ import annotations

import pyarrow as pa

from curate.core.config import CurateConfig, apply_overrides, validate


def config(*overrides: str) -> CurateConfig:
    """A validated config with placeholder paths and ``overrides`` (``clip.model=...``)."""
    return validate(apply_overrides({"input": {"path": "in.parquet"}, "output": {"path": "run"}}, list(overrides)))


def ready(stage_cls, *overrides: str):
    """An instance of ``stage_cls`` for ``overrides``, set up (its model loaded) like an actor's."""
    stage = stage_cls(config(*overrides))
    stage.setup()
    return stage


def live(batch: pa.Table, flags: list[bool]) -> pa.Table:
    """``batch`` with the score step's ``_live`` mask (False: an image rule rejected the row)."""
    return batch.append_column("_live", pa.array(flags, pa.bool_()))


def reasons(rules, rows: list[dict]) -> list[str | None]:
    """The reason the first matching rule gives each of ``rows`` (None: no rule matched),
    evaluated by DuckDB as the decision does (curate.flow.decision.case_sql)."""
    import duckdb

    from curate.flow.decision import case_sql

    con = duckdb.connect()
    con.register("rows_in", pa.Table.from_pylist(rows))
    got = con.execute(f"SELECT {case_sql(rules)[1]} AS reason FROM rows_in").fetchall()
    con.close()
    return [r[0] for r in got]


def caption_reasons(cfg: CurateConfig, captions: list[str | None], bad_encoding: list[bool] | None = None) -> list:
    """The caption rules' verdict on each original caption, from the facts the stage stores."""
    from curate.stages.caption_rules import CaptionRulesStage

    stage = CaptionRulesStage(cfg)
    n = len(captions)
    batch = pa.table({"caption": pa.array(captions, pa.string()),
                      "caption_bad_encoding": pa.array(bad_encoding or [False] * n, pa.bool_()),
                      "download_reason": pa.array([None] * n, pa.string()), "jpg": pa.array([b"x"] * n)})
    facts = stage(batch).to_pylist()
    rows = [{"chars": f["caption_chars"], "words": f["caption_words"], "junk": f["caption_junk"],
             "bad_encoding": f["caption_bad_encoding"], "source": "original"} for f in facts]
    return reasons(stage.rules(), rows)


def pairs_decision(cfg: CurateConfig, scored: pa.Table) -> list[dict]:
    """The pairs kind's decision (curate.flow.pairs) over ``scored`` (one row per image, with
    the columns the enabled stages write; ``sample_id`` given), every image passing the image
    rules: the SQL a run executes. The caption rules stage's facts are added when missing."""
    import duckdb

    from curate.flow.plan import make_plan
    from curate.schemas.status import Status
    from curate.stages.caption_rules import CaptionRulesStage

    if "caption_text" not in scored.column_names:
        scored = CaptionRulesStage(cfg)(scored)
    plan = make_plan(cfg)
    con = duckdb.connect()
    con.register("joined", scored)
    con.execute(f"CREATE TABLE image_decisions AS SELECT sample_id, {Status.KEPT.sql} AS status, "
                "NULL::VARCHAR AS reason FROM joined")
    plan.kind.decide(con, plan)
    out = con.execute("SELECT * FROM decided ORDER BY sample_id").arrow().read_all().to_pylist()
    con.close()
    return out
