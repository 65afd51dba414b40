"""The query views of a run: DuckDB over its tables, for ``curate query``, ``curate stats`` and the report.

Views (see docs/queries.md):
- ``manifest``: RUN/manifest/, one row per input row (the source of truth);
- ``scored``: RUN/scored/, one row per downloaded sample with its scores and CLIP image
  embeddings (a batch committed twice is counted once, as when the manifest is built);
- ``output``: RUN/output/index.json, one row per output shard (name, count, files);
- ``hosts``: one row per host the download steps asked, their figures summed over every
  download shard (RUN/downloaded/**/NNNNN_hosts.parquet: requests, rows fetched and failed,
  429 and 5xx answers, Retry-After waits, seconds waited, shard timeouts);
- ``manifest_images`` (documents runs): one row per image of every document.
Local and bucket (s3://, gs://) runs alike: DuckDB reads through the pipeline's fsspec.
"""

from __future__ import annotations

import json

import duckdb
import pyarrow as pa

from curate.core import duck, storage
from curate.core.rundir import RunDir
from curate.schemas.columns import DOWNLOAD_HOSTS, SCORED_BASE


class QueryError(ValueError):
    pass


OUTPUT_SCHEMA = pa.schema([("name", pa.string()), ("count", pa.int64()), ("files", pa.list_(pa.string()))])


def open_views(run_root: str) -> duckdb.DuckDBPyConnection:
    """A connection with the views ``manifest``, ``scored`` and ``output`` of a run (and
    ``manifest_images`` for a documents run)."""
    run = RunDir(run_root.rstrip("/"))
    files = storage.list_files(run.manifest, ".parquet")
    if not files:
        raise QueryError(f"{run_root} has no manifest (RUN/manifest/*.parquet); is it a finished curate run?")
    con = duck.connect(run.root)
    con.execute(f"CREATE VIEW manifest AS SELECT * FROM read_parquet({duck.sql_list(files)})")
    images = storage.list_files(run.manifest_images, ".parquet")
    if images:  # documents runs: one row per image of every document
        con.execute(f"CREATE VIEW manifest_images AS SELECT * FROM read_parquet({duck.sql_list(images)})")
    _scored_view(con, run)
    _output_view(con, run)
    _hosts_view(con, run)
    return con


def _scored_view(con: duckdb.DuckDBPyConnection, run: RunDir) -> None:
    duck.create_latest_copy_view(con, "scored", storage.list_files(run.scored, ".parquet", recursive=True), SCORED_BASE)


def _hosts_view(con: duckdb.DuckDBPyConnection, run: RunDir) -> None:
    files = storage.list_files(run.downloaded, "_hosts.parquet", recursive=True)
    duck.create_parquet_view(con, "host_shards", files, DOWNLOAD_HOSTS)
    sums = ", ".join(f"sum({name})::{'DOUBLE' if name == 'waited_seconds' else 'BIGINT'} AS {name}"
                     for name in DOWNLOAD_HOSTS.names[1:])
    con.execute(f"CREATE VIEW hosts AS SELECT host, {sums} FROM host_shards GROUP BY host")


def _output_view(con: duckdb.DuckDBPyConnection, run: RunDir) -> None:
    index_uri = storage.join(run.output, "index.json")
    shards = json.loads(storage.read_text(index_uri))["shards"] if storage.exists(index_uri) else []
    rows = [{"name": s["name"], "count": s["count"], "files": s["files"]} for s in shards]
    con.register("output_index", pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA))
    con.execute("CREATE VIEW output AS SELECT * FROM output_index")


def run_query(run_root: str, sql: str) -> pa.Table:
    con = open_views(run_root)
    try:
        return duck.fetch_table(con, sql)
    except duckdb.Error as error:
        raise QueryError(f"query failed: {error}") from None
    finally:
        con.close()
