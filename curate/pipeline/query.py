"""``curate query``: DuckDB over a run's tables, printed for people or for scripts.

Views (see docs/queries.md):
- ``manifest``: RUN/manifest/, one row per input row (the source of truth);
- ``scored``: RUN/scored/, one row per downloaded sample with its scores and CLIP image
  embeddings (a batch committed twice is counted once, as when the manifest is built);
- ``output``: RUN/output/index.json, one row per output shard (name, count, files).
Local and bucket (s3://, gs://) runs alike: pyarrow reads them through the pipeline's
fsspec. The SQL can read these views and nothing else: no other file, no network, no
writes (curate.pipeline.query_sandbox), unless external access is allowed explicitly.
"""

from __future__ import annotations

import csv
import decimal
import io
import json
import sys

import duckdb
import pyarrow as pa
from rich.console import Console
from rich.table import Table

from curate.pipeline import duck, query_sandbox, storage
from curate.pipeline.rundir import RunDir
from curate.textsafe import json_visible, literal, visible


class QueryError(ValueError):
    pass


OUTPUT_SCHEMA = pa.schema([("name", pa.string()), ("count", pa.int64()), ("files", pa.list_(pa.string()))])


def open_views(run_root: str, external_access: bool = False) -> duckdb.DuckDBPyConnection:
    """A connection with the views ``manifest``, ``scored`` and ``output`` of a run (and
    ``manifest_images`` for a documents run). Unless ``external_access``, SQL on it can
    read nothing but these views (no file, network, extension access; no writes)."""
    run = RunDir(run_root.rstrip("/"))
    files = storage.list_files(run.manifest, ".parquet")
    if not files:
        raise QueryError(f"{run_root} has no manifest (RUN/manifest/*.parquet); is it a finished curate run?")
    con = duck.connect(run.root)
    query_sandbox.register_view(con, "manifest", files, pa.schema([]))
    images = storage.list_files(run.manifest_images, ".parquet")
    if images:  # documents runs: one row per image of every document
        query_sandbox.register_view(con, "manifest_images", images, pa.schema([]))
    _scored_view(con, run)
    _output_view(con, run)
    if not external_access:
        query_sandbox.lock(con)
    return con


def _scored_view(con: duckdb.DuckDBPyConnection, run: RunDir) -> None:
    from curate.pipeline.manifest import SCORED_BASE_SCHEMA

    query_sandbox.register_first_copy_view(con, "scored", storage.list_files(run.scored, ".parquet"), SCORED_BASE_SCHEMA)


def _output_view(con: duckdb.DuckDBPyConnection, run: RunDir) -> None:
    index_uri = storage.join(run.output, "index.json")
    shards = json.loads(storage.read_text(index_uri))["shards"] if storage.exists(index_uri) else []
    rows = [{"name": s["name"], "count": s["count"], "files": s["files"]} for s in shards]
    con.register("output_index", pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA))
    con.execute("CREATE VIEW output AS SELECT * FROM output_index")


def run_query(run_root: str, sql: str, external_access: bool = False) -> pa.Table:
    """The result of ``sql`` over a run's views (``open_views``); QueryError if it fails,
    also when it tries to reach outside them."""
    con = open_views(run_root, external_access)
    try:
        return duck.fetch_table(con, sql)
    except duckdb.PermissionException as error:
        raise QueryError(
            f"query failed: {error}. `curate query` reads the run's views only (no other files, network, "
            "extensions or writes); pass --allow-external-access to lift that for a query you trust"
        ) from None
    except duckdb.Error as error:
        raise QueryError(f"query failed: {error}") from None
    finally:
        con.close()


def _json_default(value):
    """DuckDB sums are HUGEINT (Decimal in Python): numbers in JSON, not strings."""
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return str(value)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and len(value) > 8:  # an embedding: its size says enough in a table
        return f"[{len(value)} values]"
    return str(value)


def print_result(table: pa.Table, fmt: str, console: Console) -> None:
    """Print a result: ``table`` for people (every cell literal: no markup, controls made
    visible), ``json`` (the same values, with controls as JSON escapes) or ``csv`` (exact
    values for scripts; controls made visible only when stdout is a terminal)."""
    rows = table.to_pylist()
    if fmt == "json":
        sys.stdout.write(json_visible(json.dumps(rows, default=_json_default, ensure_ascii=False)) + "\n")
    elif fmt == "csv":
        shown = visible if sys.stdout.isatty() else str
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow([shown(c) for c in table.column_names])
        writer.writerows([[shown(_cell(r[c])) for c in table.column_names] for r in rows])
        sys.stdout.write(buffer.getvalue())
    else:
        out = Table(show_lines=False)
        for name in table.column_names:
            out.add_column(literal(name))
        for r in rows:
            out.add_row(*[literal(_cell(r[c])) for c in table.column_names])
        console.print(out)
        console.print(f"[dim]{table.num_rows} rows[/dim]")


def print_stats(run_root: str, fmt: str, console: Console) -> None:
    """``curate stats``: the ready queries of curate.report.stats, as tables or one JSON object."""
    from curate.report.stats import READY, READY_DOCUMENTS

    con = open_views(run_root)
    documents = bool(con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = 'manifest_images'").fetchone()[0])
    try:
        ready = READY_DOCUMENTS if documents else READY
        results = {name: (title, query(con)) for name, (title, query) in ready.items()}
    except duckdb.Error as error:
        raise QueryError(f"stats failed: {error}") from None
    finally:
        con.close()
    if fmt == "json":
        out = {name: table.to_pylist() for name, (_, table) in results.items()}
        sys.stdout.write(json_visible(json.dumps(out, default=_json_default, ensure_ascii=False)) + "\n")
        return
    for title, table in results.values():
        console.rule(f"[bold]{title}")
        print_result(table, "table", console)
