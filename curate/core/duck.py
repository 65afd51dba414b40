"""DuckDB connections over a run's Parquet files, local or in a bucket.

Bucket paths are read through the same fsspec filesystem the pipeline writes with
(``register_filesystem``), so DuckDB needs no extension download (none is possible
offline) and uses the credentials the user already configured.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref

import duckdb
import pyarrow as pa

from curate.core import storage


def sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def sql_list(values: list[str]) -> str:
    return "[" + ", ".join(sql_string(v) for v in values) + "]"


def connect(root: str, spill_over: str | None = None) -> duckdb.DuckDBPyConnection:
    """A connection for a run at ``root``; with ``spill_over`` (a DuckDB memory_limit such as
    "1GB", the config's manifest.memory_limit) its tables live in a database file and DuckDB
    spills to a local temporary directory past that much memory."""
    if spill_over:
        # A database file, not an in-memory database: its tables live in the file and only
        # the buffer pool (memory_limit) stays in memory.
        spill_dir = tempfile.mkdtemp(prefix="curate-duckdb-")
        con = duckdb.connect(f"{spill_dir}/manifest.duckdb")
        weakref.finalize(con, shutil.rmtree, spill_dir, True)
        con.execute(f"SET memory_limit = {sql_string(spill_over)}")
        con.execute(f"SET temp_directory = {sql_string(spill_dir)}")
    else:
        con = duckdb.connect()
    if storage.is_remote(root):
        fs, _ = storage.fs_and_path(root)
        con.register_filesystem(fs)
    return con


def create_parquet_view(con: duckdb.DuckDBPyConnection, name: str, files: list[str], empty: pa.Schema) -> None:
    """A view over committed Parquet files; an empty table of ``empty`` when there are none."""
    if files:
        con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet({sql_list(files)}, union_by_name=true)")
    else:
        # A table, not a registered Arrow object: those are private to one connection, and
        # the manifest step reads these views through a cursor too.
        con.register(f"{name}_arrow", empty.empty_table())
        con.execute(f"CREATE OR REPLACE TABLE {name}_empty AS SELECT * FROM {name}_arrow")
        con.unregister(f"{name}_arrow")
        con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM {name}_empty")


def create_latest_copy_view(con: duckdb.DuckDBPyConnection, name: str, files: list[str], empty: pa.Schema,
                            attempt: str = "attempt") -> None:
    """View ``name`` over Parquet parts that may hold a sample_id more than once: one row per
    sample_id, from its latest download, with an ``attempt`` column (int, 1 when a part has none).

    A row is in several parts when `curate retry` downloaded it again (its parts carry
    ``attempt``: the latest wins), or when a batch retried after its write was committed
    twice, in two files with identical rows (the copy in the first file by name is kept).
    This joins on the file chosen per sample_id, an aggregate of narrow columns that spills,
    while the rest streams. (A ``QUALIFY row_number() OVER (PARTITION BY sample_id)`` window
    holds every column of the rows it partitions: at 1M scored rows, embeddings included, it
    ran out of the 256 MB limit, measured by the since removed bench/manifest_memory.py.)"""
    if not files:
        create_parquet_view(con, name, files, empty)
        return
    parts = f"read_parquet({sql_list(files)}, union_by_name=true, filename=true)"
    columns = {row[0] for row in con.execute(f"SELECT column_name FROM (DESCRIBE SELECT * FROM {parts})").fetchall()}
    if attempt in columns:  # some rows were downloaded again: a row's latest download wins
        value = f"coalesce(p.{attempt}, 1)::INTEGER"
        order = f"struct_pack(a := -coalesce({attempt}, 1), f := filename)"
        chosen = f"SELECT sample_id, min({order}).f AS filename FROM {parts} GROUP BY sample_id"
        select = f"p.* EXCLUDE (filename, {attempt}), {value} AS {attempt}"
    else:
        chosen = f"SELECT sample_id, min(filename) AS filename FROM {parts} GROUP BY sample_id"
        select = f"p.* EXCLUDE (filename), 1::INTEGER AS {attempt}"
    con.execute(f"""
        CREATE OR REPLACE VIEW {name} AS
        SELECT {select} FROM {parts} p
        JOIN ({chosen}) f USING (sample_id, filename)
    """)


def fetch_table(con: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
    return con.execute(sql).arrow().read_all()


def stream_to_parquet(con: duckdb.DuckDBPyConnection, sql: str, uri: str, batch_rows: int = 10_000) -> int:
    """Write a query's rows to ``uri`` (committed whole, storage.ParquetStream), ``batch_rows``
    rows in memory at a time; returns the rows written."""
    reader = con.execute(sql).to_arrow_reader(batch_rows)
    stream = storage.ParquetStream(uri, reader.schema, batch_rows)
    for batch in reader:
        stream.write(batch)
    stream.commit()
    return stream.rows
