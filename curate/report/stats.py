"""Ready quality queries over a run (``curate stats``, and the figures of the report).

Each function takes a connection from ``curate.core.views.open_views`` and returns an
Arrow table, so the CLI prints them like ``curate query`` results and the report and the
tests read the same numbers.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

from curate.core import duck
from curate.schemas import reasons as R
from curate.schemas.status import STATUS_ORDER, Status
from curate.stages.base import Score
from curate.stages.registry import STAGES

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def _words(column: str) -> str:
    """Word count of a caption column; NULL and whitespace-only captions have 0 words."""
    return (f"CASE WHEN {column} IS NULL OR trim({column}) = '' THEN 0 "
            f"ELSE len(regexp_split_to_array(trim({column}), '\\s+')) END")


# Word count of the original caption (the alt-text).
CAPTION_WORDS = _words("caption")
# The URL's host, lower-cased, without user info or port (NULL when there is none).
URL_HOST = (
    "nullif(lower(regexp_extract(url, '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#@]*@)?(\\[[^\\]/]*\\]|[^/:?#]+)', 1)), '')"
)


def manifest_columns(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    rows = con.execute("SELECT column_name, column_type FROM (DESCRIBE manifest)").fetchall()
    return dict(rows)


def declared_scores(kind: str = "pairs") -> dict[str, Score]:
    """Score column -> what it means (curate.stages.base.Score), as declared: by every stage
    built for ``kind`` (in list order), then by the kind itself, whose declaration of a
    column replaces a stage's (a documents run's ``clip_score`` is its best text's)."""
    from curate.flow.plan import KINDS

    out = {column: score for stage in STAGES if kind in stage.kinds for column, score in stage.scores.items()}
    out.update(KINDS[kind].scores)
    return out


def score_columns(con: duckdb.DuckDBPyConnection, table: str = "manifest", kind: str = "pairs") -> list[str]:
    """The declared score columns ``table`` has (numeric), in its column order. A column is a
    score because a stage (or the kind) declares it one, not because of its name."""
    numeric = ("FLOAT", "DOUBLE", "REAL", "DECIMAL", "INTEGER", "BIGINT", "SMALLINT", "TINYINT")
    declared = declared_scores(kind)
    have = con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {table})").fetchall()
    return [name for name, type_ in have if name in declared and type_.upper().startswith(numeric)]


def status_reasons(con: duckdb.DuckDBPyConnection, table: str = "manifest") -> pa.Table:
    """Rows per status and reason code, with their share of all input rows."""
    return duck.fetch_table(con, f"""
        SELECT status, split_part(reason, ':', 1) AS reason, count(*) AS rows,
               round(100.0 * count(*) / sum(count(*)) OVER (), 2) AS pct
        FROM {table} GROUP BY ALL ORDER BY rows DESC, status, reason
    """)


def _quantile_columns(expr: str) -> tuple[str, str]:
    names = ", ".join(f"q[{i + 1}] AS p{round(q * 100):02d}" for i, q in enumerate(QUANTILES))
    return f"quantile_cont({expr}, {list(QUANTILES)})", names


def quantiles_by_status(con: duckdb.DuckDBPyConnection, expr: str, label: str, where: str = "TRUE",
                        table: str = "manifest") -> pa.Table:
    """n, min, quantiles, max and mean of ``expr`` per status (and over all rows), non-NULL values."""
    q, names = _quantile_columns(expr)
    return duck.fetch_table(con, f"""
        SELECT {duck.sql_string(label)} AS measure, coalesce(s, 'all') AS status, n, lo AS min, {names}, hi AS max, mean
        FROM (
            SELECT status AS s, count({expr}) AS n, min({expr}) AS lo, {q} AS q, max({expr}) AS hi,
                   avg({expr}) AS mean
            FROM {table} WHERE ({where}) AND {expr} IS NOT NULL
            GROUP BY GROUPING SETS ((status), ())
        ) ORDER BY s NULLS FIRST
    """)


def score_quantiles(con: duckdb.DuckDBPyConnection) -> pa.Table:
    tables = [quantiles_by_status(con, f'"{c}"', c) for c in score_columns(con)]
    return _concat(tables)


def caption_length_quantiles(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Alt-text length per status; and the training caption's, over the kept samples."""
    words = quantiles_by_status(con, f"({CAPTION_WORDS})::DOUBLE", "caption_words")
    chars = quantiles_by_status(con, "length(coalesce(caption, ''))::DOUBLE", "caption_chars")
    tables = [words, chars]
    if "caption_chosen" in manifest_columns(con):
        kept = f"status = {Status.KEPT.sql}"
        tables.append(quantiles_by_status(con, f"({TRAINING_CAPTION_WORDS})::DOUBLE", "training_caption_words", kept))
        tables.append(quantiles_by_status(con, "length(caption_chosen)::DOUBLE", "training_caption_chars", kept))
    return _concat(tables)


def top_domains(con: duckdb.DuckDBPyConnection, limit: int = 20, table: str = "manifest") -> pa.Table:
    """The hosts with the most input rows: how many were kept and how many failed to download."""
    return duck.fetch_table(con, f"""
        SELECT {URL_HOST} AS host, count(*) AS rows,
               count(*) FILTER (status = {Status.KEPT.sql}) AS kept,
               count(*) FILTER (status = {Status.DOWNLOAD_FAILED.sql}) AS download_failed,
               round(count(*) FILTER (status = {Status.KEPT.sql}) / count(*), 4) AS kept_fraction
        FROM {table} GROUP BY host ORDER BY rows DESC, host LIMIT {int(limit)}
    """)


def host_figures(con: duckdb.DuckDBPyConnection, limit: int = 20) -> pa.Table:
    """The download's figures for the hosts asked most (view ``hosts``): requests, rows
    fetched and failed, 429 and 5xx answers, Retry-After waits, seconds waited for a start
    (download.max_per_host, download.per_host_rps, Retry-After) and rows ended by a shard's deadline."""
    return duck.fetch_table(con, f"""
        SELECT host, requests, fetched, failed, http_429, http_5xx, retry_after_waits,
               round(waited_seconds, 1) AS waited_seconds, shard_timeout
        FROM hosts ORDER BY requests DESC, host LIMIT {int(limit)}
    """)


def kept_per_input_file(con: duckdb.DuckDBPyConnection) -> pa.Table:
    return duck.fetch_table(con, f"""
        SELECT input_file, count(*) AS rows, count(*) FILTER (status = {Status.KEPT.sql}) AS kept,
               round(count(*) FILTER (status = {Status.KEPT.sql}) / count(*), 4) AS kept_fraction
        FROM manifest GROUP BY input_file ORDER BY input_file
    """)


def funnel_steps(con: duckdb.DuckDBPyConnection) -> list[tuple[str, int]]:
    """Rows left after each step, in the order the pipeline decides (docs/manifest.md)."""
    counts = dict(con.execute(
        "SELECT coalesce(status || '/' || split_part(reason, ':', 1), status), count(*) FROM manifest GROUP BY 1"
    ).fetchall())
    total = sum(counts.values())

    def removed(test) -> int:
        return sum(n for key, n in counts.items() if test(key))

    filter_codes = sorted({k.split("/", 1)[1] for k in counts if k.startswith("filtered/")})
    image = [c for c in filter_codes if c.startswith(("image_", "aspect_"))]
    caption = [c for c in filter_codes if c.startswith("caption_")]
    model = [c for c in filter_codes if c not in image and c not in caption]
    steps = [("rows in", total)]
    left = total - removed(lambda k: k.startswith("blocked"))
    steps.append(("URL check passed", left))
    same_url = tuple(f"{Status.DUPLICATE.value}/{code.name}" for code in (R.SAME_URL_AS, R.SAME_URL_NOT_SCORED))
    if removed(lambda k: k in same_url):  # rows whose URL another row fetched: one sample per URL
        left -= removed(lambda k: k in same_url)
        steps.append(("one sample per URL", left))
    left -= removed(lambda k: k.startswith("download_failed"))
    steps.append(("downloaded", left))
    model_steps = [(_filter_label(c), [c]) for c in model]  # in code order; labels from the declarations
    for label, codes in [("image rules", image), ("caption rules", caption)] + model_steps:
        left -= removed(lambda k: k.split("/", 1)[-1] in codes and k.startswith("filtered/"))
        steps.append((f"after {label}", left))
    left -= removed(lambda k: k.startswith("duplicate") and k not in same_url)
    steps.append(("kept (after dedupe)", left))
    return steps


def _filter_label(code: str) -> str:
    """The funnel's name for the step of reason ``code``: a declared score's threshold by its
    label (``CLIP score threshold``), else the code itself."""
    if code == R.NO_CAPTION_PASSED.name:
        return "CapFilt (a caption passed)"
    labels = {score.reason.name: score.label for score in declared_scores().values() if score.reason}
    return f"{labels[code]} threshold" if code in labels else code


# The histogram series of kept samples whose alt-text failed and CapFilt kept a synthetic caption.
RESCUED = "kept (CapFilt caption)"


def values_by_status(con: duckdb.DuckDBPyConnection, expr: str, rescued_apart: bool = False) -> dict[str, np.ndarray]:
    """Non-NULL values of ``expr`` per status, statuses in a fixed order. ``rescued_apart``:
    kept samples whose training caption is a synthetic one (CapFilt rescued the image) are
    their own series, RESCUED, after ``kept``."""
    split = rescued_apart and "caption_source" in manifest_columns(con)
    out = {}
    for status in STATUS_ORDER:
        where = f"status = ? AND ({expr}) IS NOT NULL"
        series = [(status.value, where)]
        if split and status == Status.KEPT:
            series = [(status.value, f"{where} AND caption_source IS DISTINCT FROM 'synthetic'"),
                      (RESCUED, f"{where} AND caption_source = 'synthetic'")]
        for name, condition in series:
            values = con.execute(f"SELECT ({expr})::DOUBLE AS v FROM manifest WHERE {condition}",
                                 [status.value]).fetchnumpy()["v"]
            if len(values):
                out[name] = np.asarray(values, dtype=float)
    return out


# Word count of the training caption (kept samples; NULL elsewhere).
TRAINING_CAPTION_WORDS = _words("caption_chosen")


def training_caption_words(con: duckdb.DuckDBPyConnection) -> dict[str, np.ndarray]:
    """Words of the kept samples' training captions: the alt-text kept (``kept``) and the
    synthetic captions CapFilt chose (RESCUED)."""
    if "caption_chosen" not in manifest_columns(con):
        return {}
    return {k: v for k, v in values_by_status(con, TRAINING_CAPTION_WORDS, rescued_apart=True).items()
            if k in (Status.KEPT.value, RESCUED)}


def _reason_code(column: str) -> str | None:
    score = declared_scores().get(column)
    return score.reason.name if score and score.reason else None


def eligible_scores(con: duckdb.DuckDBPyConnection, column: str) -> np.ndarray:
    """Scores of the samples only this score's threshold decides on: kept, duplicate, or
    filtered by this score (the reason code its declaration names, e.g. clip_score_below)."""
    values = con.execute(
        f'SELECT "{column}"::DOUBLE AS v FROM manifest WHERE "{column}" IS NOT NULL '
        f"AND (status IN ({Status.KEPT.sql}, {Status.DUPLICATE.sql}) OR split_part(reason, ':', 1) = ?)",
        [_reason_code(column)],
    ).fetchnumpy()["v"]
    return np.asarray(values, dtype=float)


def threshold_from_reasons(con: duckdb.DuckDBPyConnection, column: str) -> float | None:
    """The threshold a run applied to ``column``, read back from the reasons of its declared
    reason code (``clip_score_below:0.5``); None when it declares none or no row has it."""
    code = _reason_code(column)
    if code is None:
        return None
    row = con.execute(
        "SELECT max(TRY_CAST(split_part(reason, ':', 2) AS DOUBLE)) FROM manifest WHERE split_part(reason, ':', 1) = ?",
        [code],
    ).fetchone()
    return row[0] if row else None


def _concat(tables: list[pa.Table]) -> pa.Table:
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return pa.table({"measure": pa.array([], pa.string())})
    return pa.concat_tables(tables, promote_options="permissive")


# What `curate stats` prints, in order: (title, query).
READY = {
    "status_reasons": ("rows per status and reason", status_reasons),
    "score_quantiles": ("score quantiles per status", score_quantiles),
    "caption_length": ("caption length (words, characters) per status", caption_length_quantiles),
    "top_domains": ("top domains", top_domains),
    "hosts": ("download figures per host", host_figures),
    "kept_per_input_file": ("kept fraction per input file", kept_per_input_file),
    "judges": ("judges against each other: candidates each accepts, per caption group", lambda con: _judges().agreement(con)),
    "blind_judges": ("blind judges", lambda con: pa.table({"warning": pa.array(_judges().blind_warnings(con), pa.string())})),
    "rejected_by": ("CapFilt: which judge said no (samples no caption passed)", lambda con: _judges().rejected_by(con)),
}


def _judges():
    from curate.report import judges  # it reads the stage registry: imported when asked

    return judges


def image_score_quantiles(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Documents runs: quantiles per status of the image scores the run has (``clip_score``,
    ``itm_prob`` when ITM ran, and for kept images the scores of the text that follows them)."""
    names = score_columns(con, "manifest_images", "documents")
    return _concat([quantiles_by_status(con, f'"{c}"', c, table="manifest_images") for c in names])


# Documents runs (input.kind: documents): documents in ``manifest``, their images in ``manifest_images``.
READY_DOCUMENTS = {
    "status_reasons": ("documents per status and reason", status_reasons),
    "image_status_reasons": ("images per status and reason", lambda con: status_reasons(con, "manifest_images")),
    "document_sizes": ("words and kept images per document, per status", lambda con: _concat([
        quantiles_by_status(con, "n_words::DOUBLE", "words"),
        quantiles_by_status(con, "n_images_kept::DOUBLE", "images_kept"),
    ])),
    "image_similarity": ("images: best CLIP cosine (and ITM P(match)) to a text of their document, per status",
                         lambda con: image_score_quantiles(con)),
    "top_image_domains": ("top image domains", lambda con: top_domains(con, table="manifest_images")),
    "hosts": ("download figures per host", host_figures),
    "kept_per_input_file": ("kept fraction per input file", kept_per_input_file),
}
