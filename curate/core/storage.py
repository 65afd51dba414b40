"""Paths that may be local or in a bucket (s3://, gs://), through fsspec.

Every write that marks work as done goes through ``atomic_write``: bytes land under a
temporary name and are renamed into place, so a reader never sees a half-written file
under a final name. (On object stores a single PUT is already atomic; the rename keeps
one code path for both.)
"""

from __future__ import annotations

import contextlib
import io
import posixpath
import uuid
from typing import Iterable

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

TMP_MARK = ".tmp-"


def fs_and_path(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def normalized_path(path: str) -> str:
    """A path as a run and its resume compare it: a local one absolute and normalised (``run/``,
    ``./run`` and ``/abs/run`` are one folder), a bucket one without a trailing slash."""
    import os

    if is_remote(path):
        return path.rstrip("/")
    return os.path.abspath(os.path.expanduser(path))


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        return posixpath.join(base, *parts)
    return posixpath.join(base.rstrip("/") or "/", *parts)


def to_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """fsspec strips the protocol from paths; put it back for remote filesystems."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return path
    return f"{protocol}://{path}"


def exists(uri: str) -> bool:
    fs, path = fs_and_path(uri)
    return fs.exists(path)


def makedirs(uri: str) -> None:
    fs, path = fs_and_path(uri)
    fs.makedirs(path, exist_ok=True)


def list_files(uri: str, suffix: str, recursive: bool = False) -> list[str]:
    """Committed files under ``uri`` ending in ``suffix`` (``recursive``: in its subfolders
    too), sorted; temporaries are ignored."""
    fs, path = fs_and_path(uri)
    # Other processes (Ray workers) write here: a bucket filesystem's cached listing is stale.
    fs.invalidate_cache(path)
    if not fs.exists(path):
        return []
    listed = fs.find(path) if recursive else fs.ls(path, detail=False)
    names = [p for p in listed if p.endswith(suffix) and TMP_MARK not in p]
    return sorted(to_uri(fs, p) for p in names)


def read_text(uri: str) -> str:
    fs, path = fs_and_path(uri)
    with fs.open(path, "r", encoding="utf-8") as handle:
        return handle.read()


class WriteError(OSError):
    """A commit failed (disk full, a bucket refusing writes, ...); names the file it was for.
    s3fs's errors name only the S3 error (``PermissionError('Access Denied')``), not the key."""


def _write_error(uri: str, error: OSError) -> WriteError:
    reason = str(error).rstrip(".") or "no reason given"
    failed = WriteError(f"cannot write {uri}: {error.__class__.__name__}: {reason}")
    failed.errno = error.errno  # ENOSPC stays ENOSPC for callers that check
    return failed


class _Sink(io.RawIOBase):
    """The handle ``atomic_open`` yields: a write that fails names the file it was for, so a
    read error in the same block (a missing input) is never reported as a write error."""

    def __init__(self, handle, uri: str):
        self.handle, self.uri = handle, uri
        # Set when the file is thrown away: later writes go nowhere, so a writer's finaliser
        # (tarfile's stream flushes when garbage-collected) can't fail on a removed file.
        self.discarded = False

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.discarded:
            return len(data)
        try:
            self.handle.write(data)
        except OSError as error:
            raise _write_error(self.uri, error) from error
        return len(data)

    def tell(self) -> int:
        return self.handle.tell()


@contextlib.contextmanager
def atomic_open(uri: str):
    """A binary handle whose bytes appear under ``uri`` only if the block ends cleanly.

    They stream to a temporary name (a local file, or a multipart upload in a bucket), so a
    large file is never held in memory; the rename is the commit. On an error the temporary
    is removed (best effort: ``remove_temporaries`` finds any left behind)."""
    fs, path = fs_and_path(uri)
    tmp = f"{path}{TMP_MARK}{uuid.uuid4().hex}"
    try:
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        handle = fs.open(tmp, "wb")
    except OSError as error:
        raise _write_error(uri, error) from error
    sink = _Sink(handle, uri)
    try:
        yield sink
    except BaseException:
        sink.discarded = True
        _discard(fs, handle, tmp)
        raise
    try:
        handle.close()
        fs.mv(tmp, path)
    except OSError as error:
        sink.discarded = True
        _discard(fs, handle, tmp)
        raise _write_error(uri, error) from error


def _discard(fs, handle, tmp: str) -> None:
    for undo in (handle.close, lambda: fs.rm(tmp)):
        try:
            undo()
        except Exception:  # noqa: BLE001 - the error being raised is the one to report
            pass


def atomic_write(uri: str, data: bytes) -> None:
    with atomic_open(uri) as handle:
        handle.write(data)


def write_text(uri: str, text: str) -> None:
    atomic_write(uri, text.encode("utf-8"))


def write_parquet(uri: str, table: pa.Table, row_group_size: int | None = None) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", row_group_size=row_group_size)
    atomic_write(uri, buffer.getvalue())


class ParquetStream:
    """A Parquet file written batch by batch and committed by ``atomic_write`` on ``commit()``.

    Only the compressed file and the current row group are held in memory, not the rows as
    Arrow, so a part of a million rows costs its size on disk, not its size in memory."""

    def __init__(self, uri: str, schema: pa.Schema, row_group_size: int):
        self.uri, self.row_group_size = uri, row_group_size
        self.buffer = io.BytesIO()
        self.writer = pq.ParquetWriter(self.buffer, schema, compression="zstd")
        self.rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        self.writer.write_batch(batch, row_group_size=self.row_group_size)
        self.rows += batch.num_rows

    def commit(self) -> None:
        self.writer.close()
        atomic_write(self.uri, self.buffer.getvalue())


def read_parquet(uris: Iterable[str], columns: list[str] | None = None, filters=None) -> pa.Table:
    """Read and concatenate Parquet files; ``filters`` (a pyarrow expression) skips row groups
    by their statistics and drops the rows that don't match."""
    tables = []
    for uri in uris:
        fs, path = fs_and_path(uri)
        tables.append(pq.read_table(path, columns=columns, filesystem=fs, filters=filters))
    if not tables:
        raise FileNotFoundError("no parquet files to read")
    return pa.concat_tables(tables, promote_options="default")


def remove_temporaries(uri: str) -> int:
    """Delete leftovers of interrupted writes under ``uri`` (recursively); returns the count."""
    fs, path = fs_and_path(uri)
    if not fs.exists(path):
        return 0
    leftovers = [p for p in fs.find(path) if TMP_MARK in posixpath.basename(p)]
    for leftover in leftovers:
        fs.rm(leftover)
    return len(leftovers)


def remove_tree(uri: str) -> None:
    fs, path = fs_and_path(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)
