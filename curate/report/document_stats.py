"""The figures of a documents run's report: funnels of documents and of images, and the
samples of documents to draw, from the views ``manifest`` (documents) and ``manifest_images``.

An image is decided in this order (docs/formats.md): the URL check, the download, the image
rules, the match rules (does a text of its document describe it, or a synthetic caption
rescue it), dedupe, placement (the cap, a free text), and its document's rules. The image
funnel follows that order, grouping the reason codes by the step that gives them.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from curate.core import duck, storage
from curate.core.rundir import RunDir
from curate.schemas import reasons as R
from curate.schemas.status import Status

# Reason codes by the step of a document image's decision that gives them (the rest of the
# filtered codes come from the image rules).
MATCH_CODES = (R.DOCUMENT_HAS_NO_TEXT, R.SIM_BELOW, R.ITM_BELOW, R.NO_CAPTION_PASSED)
PLACEMENT_CODES = (R.OVER_MAX_IMAGES, R.NO_FREE_TEXT)
DOCUMENT_CODES = (R.DOCUMENT_DROPPED,)


def _counts(con: duckdb.DuckDBPyConnection, table: str) -> dict[tuple[str, str | None], int]:
    rows = con.execute(f"SELECT status, split_part(reason, ':', 1), count(*) FROM {table} GROUP BY ALL").fetchall()
    return {(status, code or None): n for status, code, n in rows}


def image_funnel(con: duckdb.DuckDBPyConnection) -> list[tuple[str, int]]:
    """Images left after each step of their decision, in the order it is made."""
    counts = _counts(con, "manifest_images")
    names = lambda codes: {c.name for c in codes}  # noqa: E731
    later = names(MATCH_CODES) | names(PLACEMENT_CODES) | names(DOCUMENT_CODES)
    steps = [
        ("URL check passed", lambda s, c: s == Status.BLOCKED.value),
        ("downloaded", lambda s, c: s == Status.DOWNLOAD_FAILED.value),
        ("after image rules", lambda s, c: s == Status.FILTERED.value and c not in later),
        ("described by a text or captioned", lambda s, c: s == Status.FILTERED.value and c in names(MATCH_CODES)),
        ("after dedupe", lambda s, c: s == Status.DUPLICATE.value),
        ("placed", lambda s, c: s == Status.FILTERED.value and c in names(PLACEMENT_CODES)),
        ("kept (in a kept document)", lambda s, c: s == Status.FILTERED.value and c in names(DOCUMENT_CODES)),
    ]
    left = sum(counts.values())
    out = [("images in", left)]
    for label, removed in steps:
        left -= sum(n for (status, code), n in counts.items() if removed(status, code))
        out.append((label, left))
    return out


def document_funnel(con: duckdb.DuckDBPyConnection, rule_codes: list[str]) -> list[tuple[str, int]]:
    """Documents left after each document rule, in ``rule_codes`` order (the run's rules;
    codes no rule of the config gives, say from an older config, come last)."""
    counts = {code: n for (status, code), n in _counts(con, "manifest").items() if status == Status.FILTERED.value}
    left = sum(_counts(con, "manifest").values())
    out = [("documents in", left)]
    for code in list(rule_codes) + sorted(set(counts) - set(rule_codes)):
        if code in counts:
            left -= counts[code]
            out.append(("well-formed" if code == R.MALFORMED_DOCUMENT.name else f"after {code}", left))
    out.append(("kept", left))
    return out


def sample_documents(con: duckdb.DuckDBPyConnection, status: Status, n: int) -> list[dict]:
    """Up to ``n`` documents of ``status`` (spread by md5(sample_id), the same on every rebuild),
    those with images first: the report draws them."""
    return duck.fetch_table(con, f"""
        SELECT * FROM manifest WHERE status = {status.sql}
        ORDER BY n_images_in = 0, md5(sample_id) LIMIT {int(n)}
    """).to_pylist()


def images_of(con: duckdb.DuckDBPyConnection, doc_ids: list[str]) -> dict[str, list[dict]]:
    """The image rows of ``doc_ids``, per document, in input order."""
    if not doc_ids:
        return {}
    rows = duck.fetch_table(con, f"""
        SELECT * FROM manifest_images WHERE doc_id IN (SELECT unnest({duck.sql_list(doc_ids)}))
        ORDER BY sample_id
    """).to_pylist()
    out: dict[str, list[dict]] = {d: [] for d in doc_ids}
    for row in rows:
        out[row["doc_id"]].append(row)
    return out


def input_texts(run: RunDir, doc_ids: list[str]) -> dict[str, list[str]]:
    """The texts of ``doc_ids`` as the input had them (RUN/documents/): a dropped document's
    manifest row has no sequence."""
    files = storage.list_files(run.documents, ".parquet")
    if not doc_ids or not files:
        return {}
    import pyarrow.compute as pc

    table = storage.read_parquet(files, columns=["sample_id", "texts"],
                                 filters=pc.field("sample_id").isin(pa.array(doc_ids, pa.string())))
    return {r["sample_id"]: r["texts"] or [] for r in table.to_pylist()}


def values_by(con: duckdb.DuckDBPyConnection, table: str, expr: str, group: str, where: str = "TRUE") -> dict:
    """Non-NULL values of ``expr`` in ``table`` per value of ``group``, as float arrays."""
    import numpy as np

    rows = con.execute(f"SELECT {group} AS g, list(({expr})::DOUBLE) FROM {table} "
                       f"WHERE ({where}) AND ({expr}) IS NOT NULL GROUP BY 1 ORDER BY 1").fetchall()
    return {g: np.asarray(v, dtype=float) for g, v in rows if v}
