"""``curate query`` and ``curate stats``: a run's views (curate.core.views) printed for people
or for scripts."""

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

from curate.core.views import QueryError, open_views
from curate.core.textsafe import json_visible, literal, visible
from curate.core.terminal import print_full


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
        print_full(console, out)
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
