"""DuckDB for SQL someone typed or pasted: it reads the run's tables and touches nothing else.

``curate query`` runs any SQL it is given. Left alone, DuckDB lets that SQL read any file
(``read_csv('/etc/passwd')``), write any file (``COPY ... TO``: a copy into
``RUN/manifest/`` doubles the manifest), ``ATTACH`` databases and ``INSTALL`` extensions
from a URL. So:

- the run's Parquet files are registered as Arrow datasets: pyarrow reads them (local
  files directly, bucket objects through the run's fsspec filesystem), and DuckDB sees
  them as tables it can scan, with projections and filters pushed down, but not as files
  it can write;
- then the connection is locked: ``enable_external_access=false`` (no file, network or
  extension access from SQL) and ``lock_configuration=true`` (no ``SET`` undoes it).

DuckDB's own way to open a few files under that lock, ``allowed_paths``, also lets SQL
*write* those files (measured with DuckDB 1.5.6: ``COPY ... TO '<manifest part>'
(USE_TMP_FILE false)`` overwrote it), so it can't make a view read-only.
``curate query --allow-external-access`` skips the lock, for queries that join other
files on purpose.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from curate.core import storage

_PART = "_curate_part"


def _filesystem(uris: list[str]) -> tuple[pafs.FileSystem, list[str]]:
    fs, _ = storage.fs_and_path(uris[0])
    paths = [storage.fs_and_path(u)[1] for u in uris]
    if not storage.is_remote(uris[0]):
        return pafs.LocalFileSystem(), paths
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), paths


def parquet_dataset(uris: list[str], empty: pa.Schema, numbered: bool = False) -> ds.Dataset | pa.Table:
    """A dataset over Parquet files whose schemas may differ (columns are unified by name,
    as DuckDB's ``union_by_name``); an empty table of ``empty`` when there are none. With
    ``numbered``, each row also has ``_curate_part``: the index of its file in ``uris``."""
    if not uris:
        return empty.empty_table()
    filesystem, paths = _filesystem(uris)
    schema = pa.unify_schemas([pq.read_schema(p, filesystem=filesystem) for p in paths], promote_options="permissive")
    if not numbered:
        return ds.dataset(paths, schema=schema, format="parquet", filesystem=filesystem)
    return ds.FileSystemDataset.from_paths(
        paths, schema=schema.append(pa.field(_PART, pa.int32())), format=ds.ParquetFileFormat(),
        filesystem=filesystem, partitions=[pc.field(_PART) == i for i in range(len(paths))],
    )


def register_view(con: duckdb.DuckDBPyConnection, name: str, uris: list[str], empty: pa.Schema) -> None:
    """View ``name`` over Parquet files, read by pyarrow (see the module docstring)."""
    con.register(f"{name}_data", parquet_dataset(uris, empty))
    con.execute(f"CREATE VIEW {name} AS SELECT * FROM {name}_data")


def register_latest_copy_view(con: duckdb.DuckDBPyConnection, name: str, uris: list[str], empty: pa.Schema,
                              attempt: str = "attempt") -> None:
    """``duck.create_latest_copy_view`` over Arrow: one row per sample_id, from its latest
    download (``attempt``, 1 when a file has none: `curate retry` downloads a row again), and
    of that the copy in the first file (by name) when a batch was committed twice."""
    if not uris:
        register_view(con, name, uris, empty)
        return
    data = parquet_dataset(sorted(uris), empty, numbered=True)
    con.register(f"{name}_data", data)
    if attempt in data.schema.names:
        order = f"struct_pack(a := -coalesce({attempt}, 1), f := {_PART})"
        select = f"p.* EXCLUDE ({_PART}, {attempt}), coalesce(p.{attempt}, 1)::INTEGER AS {attempt}"
    else:
        order, select = _PART, f"p.* EXCLUDE ({_PART}), 1::INTEGER AS {attempt}"
    con.execute(f"""
        CREATE VIEW {name} AS
        SELECT {select} FROM {name}_data p
        JOIN (SELECT sample_id, min({order}){'.f' if order != _PART else ''} AS {_PART} FROM {name}_data
              GROUP BY sample_id) f USING (sample_id, {_PART})
    """)


def lock(con: duckdb.DuckDBPyConnection) -> None:
    """No file, network or extension access from SQL on ``con`` from now on, for good; no
    allowed directory either. DuckDB adds its temporary directory to the directories SQL may
    read and write even with external access off (``<cwd>/.tmp/`` by default: SQL could
    create and overwrite files there, and a symlink there reached anywhere), so the locked
    connection has none: it does not spill to disk."""
    con.execute("SET temp_directory = ''")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    allowed = con.execute("SELECT current_setting('allowed_directories')").fetchone()[0]
    if allowed:  # a DuckDB that adds one anyway: refuse to run user SQL on it
        raise RuntimeError(f"DuckDB left directories open to SQL after the lock: {allowed}")
