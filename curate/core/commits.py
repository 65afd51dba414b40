"""Commit records: the size and sha256 of every file a step committed, checked before a
resumed run trusts the file.

A file ``RUN/<dir>/<name>`` is recorded in ``RUN/_commits/<dir>/<name>.json`` as
``{"size": bytes, "sha256": hex}``, written right after the file itself is committed
(renamed into place, or closed by img2dataset). So a file is *committed* only when it
exists, has a record, and its bytes match the record: a file deleted, truncated or
rewritten by hand (or by a second run in the same directory) is found out and its work
is done again, instead of being read as finished.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath

import pyarrow as pa
import pyarrow.parquet as pq

from curate.core import storage

RECORDS = "_commits"
_BLOCK = 1 << 20


# The run directory's step folders. A record mirrors its file's path under RUN
# (RUN/scored/00001/x.parquet -> RUN/_commits/scored/00001/x.parquet.json); a path's RUN is
# what precedes the last step folder in it (a RUN may itself sit under a folder so named).
STEP_FOLDERS = ("rows", "download_list", "documents", "downloaded", "scored", "output")


def _under_run(path: str) -> tuple[str, str]:
    """(RUN, the path below it) of a file or folder inside a run directory."""
    parts = path.rstrip("/").split("/")
    for i in range(len(parts) - 1, 0, -1):
        if parts[i] in STEP_FOLDERS:
            return "/".join(parts[:i]), "/".join(parts[i:])
    root, sub = posixpath.split(path.rstrip("/"))  # not a step folder: records beside it
    return root, sub


def record_uri(uri: str) -> str:
    """Where the record of ``RUN/<dir>/.../<name>`` lives: ``RUN/_commits/<dir>/.../<name>.json``."""
    root, below = _under_run(uri)
    return storage.join(root, RECORDS, f"{below}.json")


def records_dir(directory: str) -> str:
    """The folder of the records of the files in ``directory`` (``RUN/<dir>/...``)."""
    root, below = _under_run(directory)
    return storage.join(root, RECORDS, below)


def describe(uri: str) -> dict:
    """``{"size": bytes, "sha256": hex}`` of a file, read once in 1 MiB blocks."""
    fs, path = storage.fs_and_path(uri)
    digest, size = hashlib.sha256(), 0
    with fs.open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
            size += len(block)
    return {"size": size, "sha256": digest.hexdigest()}


def record(uri: str, described: dict | None = None) -> None:
    """Write the record of the committed file ``uri`` (computed from the file unless
    ``described`` gives it). Raises storage.WriteError if it cannot be written."""
    storage.write_text(record_uri(uri), json.dumps(described or describe(uri)))


def write_committed(uri: str, data: bytes) -> None:
    """Commit ``data`` under ``uri`` (storage.atomic_write), then its record."""
    storage.atomic_write(uri, data)
    record(uri, {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()})


def write_parquet(uri: str, table: pa.Table, row_group_size: int | None = None) -> None:
    """storage.write_parquet, with a commit record."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", row_group_size=row_group_size)
    write_committed(uri, buffer.getvalue())


def problem(uri: str) -> str | None:
    """None if ``uri`` is committed and whole; else what is wrong with it, for a message:
    ``missing``, ``not recorded`` (written but never committed), ``size 10 (recorded 20)``
    or ``content changed``."""
    fs, path = storage.fs_and_path(uri)
    has_record = storage.exists(record_uri(uri))
    if not fs.exists(path):
        return "missing" if has_record else "not written"
    if not has_record:
        return "not recorded"
    try:
        recorded = json.loads(storage.read_text(record_uri(uri)))
        want_size, want_sha = int(recorded["size"]), str(recorded["sha256"])
    except (ValueError, KeyError, TypeError):
        return "its record is damaged"
    size = int(fs.size(path) or 0)
    if size != want_size:
        return f"size {size} (recorded {want_size})"
    if describe(uri)["sha256"] != want_sha:
        return "content changed"
    return None


def recorded_names(directory: str) -> list[str]:
    """Names of the files of ``directory`` that have a record (whether or not they exist)."""
    return sorted(posixpath.basename(u)[: -len(".json")] for u in storage.list_files(records_dir(directory), ".json"))


def forget(uri: str) -> None:
    """Remove a file and its record (work to be done again)."""
    for target in (uri, record_uri(uri)):
        fs, path = storage.fs_and_path(target)
        if fs.exists(path):
            fs.rm(path)


def remove_tree(directory: str) -> None:
    """storage.remove_tree for a directory of recorded files: its records go too."""
    storage.remove_tree(directory)
    storage.remove_tree(records_dir(directory))


class HashingSink(io.RawIOBase):
    """Passes writes through to ``handle`` and counts and hashes them, so a file streamed
    to storage.atomic_open is recorded without reading it back."""

    def __init__(self, handle):
        self.handle, self.size, self.sha256 = handle, 0, hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        written = self.handle.write(data)
        view = memoryview(data)[:written] if written is not None else memoryview(data)
        self.sha256.update(view)
        self.size += len(view)
        return len(view)

    def tell(self) -> int:
        return self.size

    def described(self) -> dict:
        return {"size": self.size, "sha256": self.sha256.hexdigest()}
