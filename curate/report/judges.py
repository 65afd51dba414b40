"""The judges against each other: how often they disagree, which one is blind, which said no.

A judge is a stage that scores every candidate caption and declares a ``calibration``
(CLIP's cosine, BLIP ITM's P(match): curate.pipeline.calibration). Every candidate of a
pairs run sits in the manifest's ``captions`` with each judge's score and, when it failed,
its reason, so all of this is read back from the manifest (``curate stats``, the report):

- ``agreement``: per group of captions (the input's: original and alternates; synthetic) and
  pair of judges, how many each accepts and how many one accepts that the other rejects;
- ``blind_warnings``: a judge that accepts nearly everything the other rejects (a blind judge:
  an ITM never trained on wrong shapes passes the captioner's "a green square" for a green
  triangle, which CLIP rejects), with the config keys to look at;
- ``rejected_by``: for the samples CapFilt filtered (``no_caption_passed``), which judges or
  rules turned down the original caption and the first synthetic one.

A judge's threshold is read back from the reasons it gave (``clip_score_below:0.7413``,
per group: ITM's bar for synthetic captions may be ``capfilt.synthetic_min_prob``); a judge
that rejected nothing in a group accepts all of it there.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import pyarrow as pa

from curate.core import duck

BLIND_RATE = 0.5  # a judge accepting at least half of what another rejects is called blind to it
MIN_REJECTS = 20  # ... once the other has rejected at least this many captions of the group
SCATTER_POINTS = 20_000  # candidates drawn per group for the report's figure
# Caption groups: the input's captions (people wrote them) and the captioner's.
GROUPS = {"input captions": "source <> 'synthetic'", "synthetic captions": "source = 'synthetic'"}


@dataclass(frozen=True)
class Judge:
    column: str  # its score in the captions structs (and the manifest column of the original's)
    label: str
    threshold_key: str


def judges(con: duckdb.DuckDBPyConnection) -> list[Judge]:
    """The judges whose scores this run's captions hold (non-NULL somewhere), in stage order."""
    from curate.stages.registry import STAGES

    struct = _captions_type(con)
    out = []
    for stage in STAGES:
        if stage.calibration is None:
            continue
        key, column, _ = stage.calibration
        if f"{column} " in struct and con.execute(f"SELECT count(*) FROM ({_candidates()}) WHERE {column} IS NOT NULL").fetchone()[0]:
            out.append(Judge(column, stage.scores[column].label, key))
    return out


def _captions_type(con) -> str:
    """The manifest's ``captions`` type as DuckDB spells it (``STRUCT(text VARCHAR, ...)[]``);
    "" when there is none (a documents run, an older run)."""
    types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE manifest)").fetchall())
    return types.get("captions", "")


def _candidates() -> str:
    """Every candidate caption of the manifest, one row each: source, reason and the scores."""
    return "SELECT c.* FROM (SELECT unnest(captions) AS c FROM manifest WHERE captions IS NOT NULL)"


def thresholds(con, judge: Judge) -> dict[str, float | None]:
    """Group -> the threshold ``judge`` applied there, read back from its reasons (None: it
    rejected nothing there)."""
    code = f"{judge.column}_below"
    out = {}
    for group, where in GROUPS.items():
        row = con.execute(f"""SELECT max(TRY_CAST(split_part(reason, ':', 2) AS DOUBLE)) FROM ({_candidates()})
                              WHERE {where} AND split_part(reason, ':', 1) = ?""", [code]).fetchone()
        out[group] = row[0] if row else None
    return out


def _accepts(judge: Judge, t: float | None) -> str:
    return "TRUE" if t is None else f"({judge.column} >= {t!r})"


def agreement(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Per caption group and pair of judges (a, b): candidates both scored, how many both
    accept, a alone, b alone, neither, and the share they disagree on (%)."""
    found = judges(con)
    rows = []
    for i, a in enumerate(found):
        for b in found[i + 1:]:
            ta, tb = thresholds(con, a), thresholds(con, b)
            for group, where in GROUPS.items():
                acc_a, acc_b = _accepts(a, ta[group]), _accepts(b, tb[group])
                n, both, a_only, b_only = con.execute(f"""
                    SELECT count(*), count(*) FILTER (WHERE {acc_a} AND {acc_b}),
                           count(*) FILTER (WHERE {acc_a} AND NOT {acc_b}), count(*) FILTER (WHERE NOT {acc_a} AND {acc_b})
                    FROM ({_candidates()}) WHERE {where} AND {a.column} IS NOT NULL AND {b.column} IS NOT NULL
                """).fetchone()
                if n:
                    rows.append({"captions": group, "judge_a": a.label, "judge_b": b.label,
                                 "threshold_a": ta[group], "threshold_b": tb[group], "candidates": n,
                                 "both_accept": both, "a_only": a_only, "b_only": b_only,
                                 "neither": n - both - a_only - b_only,
                                 "disagree_pct": round(100.0 * (a_only + b_only) / n, 2)})
    return pa.Table.from_pylist(rows) if rows else pa.table({"captions": pa.array([], pa.string())})


def blind_warnings(con: duckdb.DuckDBPyConnection, table: pa.Table | None = None) -> list[str]:
    """Plain sentences, at most one per caption group and pair of judges: the judge that
    accepts the larger share of what the other rejects, when that share is at least
    BLIND_RATE of at least MIN_REJECTS captions, naming the config keys. (The larger only:
    a judge set too strict makes the other look blind too, less so than a truly blind one.)"""
    table = agreement(con) if table is None else table
    by_label = {j.label: j for j in judges(con)}
    out = []
    for row in table.to_pylist():
        # (the judge that may be blind, the other, the captions it accepts that the other rejects)
        sides = []
        for blind, other, passed in (("judge_a", "judge_b", "a_only"), ("judge_b", "judge_a", "b_only")):
            rejects = row[passed] + row["neither"]  # captions `other` rejects
            if rejects >= MIN_REJECTS:
                sides.append((row[passed] / rejects, blind, other, passed, rejects))
        if not sides:
            continue
        rate, blind, other, passed, rejects = max(sides)
        if rate < BLIND_RATE:
            continue
        a, b = by_label[row[blind]], by_label[row[other]]
        out.append(f"{a.label} accepts {rate:.0%} of the {row['captions']} {b.label} rejects "
                   f"({row[passed]:,} of {rejects:,}): {a.label} may be blind to what {b.label} sees. Every "
                   f"caption must pass both, so {b.label} decides these; check {b.threshold_key} (calibrated "
                   f"when auto) and whether {a.threshold_key} suits this model (docs/capfilt.md, Judges).")
    return out


def rejected_by(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Samples CapFilt filtered (``no_caption_passed``), counted by what turned down their
    original caption and their first synthetic caption: the judges it fell below
    (``CLIP score<0.74``; several joined by ``+``), else its rule's code (``caption_junk``)."""
    found = judges(con)
    if not found:
        return pa.table({"original": pa.array([], pa.string())})
    limits = {j.column: thresholds(con, j) for j in found}

    def verdict(group: str) -> str:
        below = [f"CASE WHEN {j.column} < {limits[j.column][group]!r} THEN '{j.label}<{limits[j.column][group]:g}' END"
                 for j in found if limits[j.column][group] is not None]
        judged = f"nullif(concat_ws('+', {', '.join(below)}), '')" if below else "NULL"
        return f"coalesce({judged}, split_part(reason, ':', 1), 'passed')"

    return duck.fetch_table(con, f"""
        WITH rejected AS (
            SELECT sample_id, captions FROM manifest WHERE split_part(reason, ':', 1) = 'no_caption_passed'
        ), cands AS (
            SELECT sample_id, c.source AS source, c.reason AS reason, {', '.join(f'c.{j.column} AS {j.column}' for j in found)},
                   row_number() OVER (PARTITION BY sample_id, c.source = 'synthetic' ORDER BY i) AS nth
            FROM (SELECT sample_id, unnest(captions) AS c, unnest(range(len(captions))) AS i FROM rejected)
        )
        SELECT o.v AS original, coalesce(s.v, '(no synthetic caption)') AS first_synthetic, count(*) AS samples
        FROM (SELECT sample_id, {verdict('input captions')} AS v FROM cands WHERE source = 'original') o
        LEFT JOIN (SELECT sample_id, {verdict('synthetic captions')} AS v FROM cands
                   WHERE source = 'synthetic' AND nth = 1) s USING (sample_id)
        GROUP BY ALL ORDER BY samples DESC, original, first_synthetic
    """)


def describe_threshold(key: str, t: dict) -> str:
    """One line for a threshold resolved at the decision (summary.json ``thresholds``): a
    keep fraction (curate.pipeline.quantiles) or an ``auto`` judge (curate.pipeline.calibration)."""
    if "keep_fraction" in t:
        return (f"{key}: {t['resolved']:.6g} keeps the top {t['keep_fraction']:.0%} of {t['scored']:,} scored "
                f"images ({t['at_or_above']:,} at or above it)")
    value = "none (score only)" if t["resolved"] is None else f"{t['resolved']:.6g}"
    if t.get("calibrated"):
        return (f"{key}: auto -> {value}, calibrated against {', '.join(t['against'])} "
                f"({t['confident_accepts']:,} confident accepts, {t['confident_rejects']:,} rejects; "
                f"passes {t['tpr']:.0%} of the accepts, {t['fpr']:.0%} of the rejects)")
    return f"{key}: auto -> {value}: not calibrated, {t['fallback']}"


def scatter_points(con: duckdb.DuckDBPyConnection, a: Judge, b: Judge) -> dict[str, tuple[list, list]]:
    """Group -> (a's scores, b's scores) of at most SCATTER_POINTS candidates (a fixed,
    hash-ordered draw: the same run gives the same figure)."""
    out = {}
    for group, where in GROUPS.items():
        rows = con.execute(f"""SELECT {a.column}::DOUBLE, {b.column}::DOUBLE FROM ({_candidates()})
                               WHERE {where} AND {a.column} IS NOT NULL AND {b.column} IS NOT NULL
                               ORDER BY hash(text, source) LIMIT {SCATTER_POINTS}""").fetchall()
        if rows:
            out[group] = ([r[0] for r in rows], [r[1] for r in rows])
    return out
