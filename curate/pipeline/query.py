"""``curate query``: DuckDB over a run's tables, printed for people or for scripts."""

from __future__ import annotations

import csv
import io
import json
import sys

import duckdb
import pyarrow as pa
from rich.console import Console
from rich.table import Table

from curate.pipeline import duck, storage
from curate.pipeline.rundir import RunDir


class QueryError(ValueError):
    pass


def open_views(run_root: str) -> duckdb.DuckDBPyConnection:
    """A connection with the view ``manifest`` over RUN/manifest/."""
    run = RunDir(run_root.rstrip("/"))
    files = storage.list_files(run.manifest, ".parquet")
    if not files:
        raise QueryError(f"{run_root} has no manifest (RUN/manifest/*.parquet); is it a finished curate run?")
    con = duck.connect(run.root)
    con.execute(f"CREATE VIEW manifest AS SELECT * FROM read_parquet({duck.sql_list(files)})")
    return con


def run_query(run_root: str, sql: str) -> pa.Table:
    con = open_views(run_root)
    try:
        return duck.fetch_table(con, sql)
    except duckdb.Error as error:
        raise QueryError(f"query failed: {error}") from None
    finally:
        con.close()


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_result(table: pa.Table, fmt: str, console: Console) -> None:
    rows = table.to_pylist()
    if fmt == "json":
        sys.stdout.write(json.dumps(rows, default=str, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(table.column_names)
        writer.writerows([[_cell(r[c]) for c in table.column_names] for r in rows])
        sys.stdout.write(buffer.getvalue())
    else:
        out = Table(show_lines=False)
        for name in table.column_names:
            out.add_column(name)
        for r in rows:
            out.add_row(*[_cell(r[c]) for c in table.column_names])
        console.print(out)
        console.print(f"[dim]{table.num_rows} rows[/dim]")
