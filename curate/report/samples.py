"""Which manifest rows the report shows: small, deterministic samples per decision.

Samples are ordered by ``md5(sample_id)``: spread over the whole run (not its first
input file) and the same rows on every rebuild of the report, so two reports of one run
can be compared side by side.
"""

from __future__ import annotations

import duckdb

from curate.core import duck
from curate.flow.pair_record import CAPTION_SCORES
from curate.report.stats import manifest_columns, score_columns
from curate.schemas import reasons as R
from curate.schemas.status import Status

BASE_COLUMNS = ("sample_id", "url", "caption", "caption_chosen", "status", "reason",
                "width", "height", "download_shard", "download_key")




def _select(con: duckdb.DuckDBPyConnection, extra: tuple[str, ...] = ()) -> str:
    present = manifest_columns(con)
    training = tuple(c for c in ("caption_source", "captions") if c in present and c not in extra)
    columns = list(BASE_COLUMNS) + score_columns(con) + list(extra) + list(training)
    return ", ".join(f'"{c}"' for c in columns)


def training_caption_scores(row: dict) -> dict:
    """A sample shown with its training caption (``caption_chosen``) shows that caption's
    scores: the manifest's score columns are the alt-text's, which CapFilt may have replaced."""
    captions = row.get("captions") or []
    chosen = next((c for c in captions if c.get("kept") and c.get("text") == row.get("caption_chosen")
                   and c.get("source") == row.get("caption_source")), None)
    if chosen is None:
        return row
    return {**row, **{s: chosen[s] for s in CAPTION_SCORES if s in row and chosen.get(s) is not None}}


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict]:
    return [training_caption_scores(r) for r in duck.fetch_table(con, sql).to_pylist()]


def kept_sample(con: duckdb.DuckDBPyConnection, n: int) -> list[dict]:
    return _rows(con, f"SELECT {_select(con)} FROM manifest WHERE status = {Status.KEPT.sql} ORDER BY md5(sample_id) LIMIT {int(n)}")


def filtered_samples(con: duckdb.DuckDBPyConnection, n: int) -> dict[str, list[dict]]:
    """Up to ``n`` filtered rows per reason code, codes with the most rows first."""
    rows = _rows(con, f"""
        SELECT * EXCLUDE (rank) FROM (
            SELECT {_select(con)}, split_part(reason, ':', 1) AS code,
                   row_number() OVER (PARTITION BY split_part(reason, ':', 1) ORDER BY md5(sample_id)) AS rank,
                   count(*) OVER (PARTITION BY split_part(reason, ':', 1)) AS code_rows
            FROM manifest WHERE status = {Status.FILTERED.sql}
        ) WHERE rank <= {int(n)} ORDER BY code_rows DESC, code, rank
    """)
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row.pop("code"), []).append(row)
    return groups


def duplicate_groups(con: duckdb.DuckDBPyConnection, n_groups: int) -> list[dict]:
    """The largest duplicate groups: the survivor (None when it is from an earlier run) and its
    copies (dedupe's: rows merged by URL were never fetched, and have no image to show)."""
    groups = _rows(con, f"""
        SELECT split_part(reason, ':', 2) AS survivor, count(*) AS copies FROM manifest
        WHERE status = {Status.DUPLICATE.sql} AND split_part(reason, ':', 1) = {R.DUPLICATE_OF.sql()}
        GROUP BY 1 ORDER BY copies DESC, md5(survivor) LIMIT {int(n_groups)}
    """)
    if not groups:
        return []
    survivors = duck.sql_list([g["survivor"] for g in groups])
    members = _rows(con, f"""
        SELECT {_select(con)} FROM manifest
        WHERE sample_id IN (SELECT unnest({survivors})) OR (status = {Status.DUPLICATE.sql} AND split_part(reason, ':', 2) IN (SELECT unnest({survivors})))
        ORDER BY sample_id
    """)
    by_id = {m["sample_id"]: m for m in members}
    return [
        {"survivor_id": g["survivor"], "survivor": by_id.get(g["survivor"]), "copies": g["copies"],
         "duplicates": [m for m in members if m["status"] == "duplicate" and m["reason"] == f"duplicate_of:{g['survivor']}"]}
        for g in groups
    ]


def failure_examples(con: duckdb.DuckDBPyConnection, status: str, per_reason: int = 3,
                     table: str = "manifest") -> list[dict]:
    """Reason codes of a status without images (download_failed, blocked), with example URLs
    (``table``: ``manifest_images`` for a documents run's images)."""
    return _rows(con, f"""
        SELECT split_part(reason, ':', 1) AS reason, count(*) AS rows,
               list(url ORDER BY md5(sample_id))[1:{int(per_reason)}] AS examples
        FROM {table} WHERE status = {duck.sql_string(status)} GROUP BY 1 ORDER BY rows DESC, reason
    """)


def capfilt_sample(con: duckdb.DuckDBPyConnection, n: int) -> list[dict]:
    """Kept rows with their candidate captions (the CapFilt ``captions`` column), when it exists."""
    return _rows(con, f"""
        SELECT {_select(con, ('captions',))} FROM manifest
        WHERE status = {Status.KEPT.sql} AND captions IS NOT NULL AND len(captions) > 0
        ORDER BY md5(sample_id) LIMIT {int(n)}
    """)
