"""The query views of a run: DuckDB over its tables, for ``curate query``, ``curate stats`` and the report.

Views (see docs/queries.md):
- ``manifest``: RUN/manifest/, one row per input row (the source of truth);
- ``scored``: RUN/scored/, one row per downloaded sample with its scores and CLIP image
  embeddings (a row's latest download; a batch committed twice is counted once, as when
  the manifest is built);
- ``output``: RUN/output/index.json, one row per output shard (name, count, files);
- ``hosts``: one row per host the download steps asked, their figures summed over every
  download shard (RUN/downloaded/**/NNNNN_hosts.parquet: requests, rows fetched and failed,
  429 and 5xx answers, Retry-After waits, seconds waited, shard timeouts);
- ``manifest_images`` (documents runs): one row per image of every document;
- ``eval_results`` (after ``curate eval``): RUN/eval/results.parquet, one row per
  (selection, seed, metric).
Local and bucket (s3://, gs://) runs alike: pyarrow reads them through the pipeline's
fsspec. The SQL can read these views and nothing else: no other file, no network, no
writes (curate.core.query_sandbox), unless external access is allowed explicitly.
"""

from __future__ import annotations

import json

import duckdb
import pyarrow as pa

from curate.core import duck, query_sandbox, storage
from curate.core.rundir import RunDir
from curate.schemas.columns import DOWNLOAD_HOSTS, SCORED_BASE


class QueryError(ValueError):
    pass


# The views a user queries (docs/queries.md); the others a connection holds serve them.
PUBLIC_VIEWS = ("manifest", "manifest_images", "scored", "output", "hosts")

OUTPUT_SCHEMA = pa.schema([("name", pa.string()), ("count", pa.int64()), ("files", pa.list_(pa.string()))])


def open_views(run_root: str, external_access: bool = False) -> duckdb.DuckDBPyConnection:
    """A connection with the views ``manifest``, ``scored``, ``output`` and ``hosts`` of a run (and
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
    _hosts_view(con, run)
    eval_results = storage.join(run.root, "eval", "results.parquet")
    if storage.exists(eval_results):
        query_sandbox.register_view(con, "eval_results", [eval_results], pa.schema([]))
    if not external_access:
        query_sandbox.lock(con)
    return con


def _scored_view(con: duckdb.DuckDBPyConnection, run: RunDir) -> None:
    query_sandbox.register_latest_copy_view(con, "scored", storage.list_files(run.scored, ".parquet", recursive=True),
                                            SCORED_BASE)


def _hosts_view(con: duckdb.DuckDBPyConnection, run: RunDir) -> None:
    files = storage.list_files(run.downloaded, "_hosts.parquet", recursive=True)
    query_sandbox.register_view(con, "host_shards", files, DOWNLOAD_HOSTS)
    sums = ", ".join(f"sum({name})::{'DOUBLE' if name == 'waited_seconds' else 'BIGINT'} AS {name}"
                     for name in DOWNLOAD_HOSTS.names[1:])
    con.execute(f"CREATE VIEW hosts AS SELECT host, {sums} FROM host_shards GROUP BY host")


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
