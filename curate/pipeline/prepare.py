"""Step 1: read every input row, give it a sample_id, block what must not be fetched.

Writes ``RUN/rows/`` (every input row, with ``blocked_reason``) and ``RUN/download_list/``
(the rows to download, in parts of ``download.shard_size`` rows: one part becomes one
download shard, the unit of resume). Both are deterministic from the input, so a resumed
run that finds them complete skips this step.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from curate.pipeline import commits, storage
from curate.pipeline.config import CurateConfig, DownloadConfig
from curate.pipeline.inputs import InputFile, read_input_file
from curate.pipeline.rundir import RunDir
from curate.stages.precheck import check_url

DOWNLOAD_COLUMNS = ["sample_id", "url", "caption", "caption_bad_encoding"]
# Documents runs: each image row also carries its document's texts, for CLIP to score against.
DOCUMENT_DOWNLOAD_COLUMNS = DOWNLOAD_COLUMNS + ["doc_texts"]


def _with_precheck(rows: pa.Table, download: DownloadConfig) -> pa.Table:
    allow, networks = download.allow_private_hosts, tuple(download.allowed_networks)
    reasons = [check_url(u, allow, networks) for u in rows.column("url").to_pylist()]
    return rows.append_column("blocked_reason", pa.array(reasons, pa.string()))


class _DownloadListWriter:
    """Buffers rows to download and writes them in parts of exactly ``shard_size`` rows."""

    def __init__(self, run: RunDir, shard_size: int):
        self.run, self.shard_size = run, shard_size
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.parts = 0

    def add(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.pending_rows += table.num_rows
        while self.pending_rows >= self.shard_size:
            self._flush(self.shard_size)

    def close(self) -> None:
        if self.pending_rows:
            self._flush(self.pending_rows)

    def _flush(self, n: int) -> None:
        merged = pa.concat_tables(self.pending)
        commits.write_parquet(storage.join(self.run.download_list, f"part-{self.parts:05d}.parquet"), merged.slice(0, n))
        rest = merged.slice(n)
        self.pending, self.pending_rows = ([rest] if rest.num_rows else []), rest.num_rows
        self.parts += 1


def _read(item: InputFile, cfg: CurateConfig, run: RunDir) -> pa.Table:
    """The rows to download of one input file; a documents file also writes RUN/documents/."""
    if not cfg.documents:
        return read_input_file(item, cfg.input)
    from curate.pipeline.documents_input import read_documents_file

    docs, images = read_documents_file(item, cfg.input)
    commits.write_parquet(storage.join(run.documents, f"part-{item.index:05d}.parquet"), docs)
    return images


def prepare(cfg: CurateConfig, run: RunDir, files: list[InputFile]) -> dict:
    """Write rows/ and download_list/ (and documents/ for documents runs); returns counts."""
    for directory in (run.rows, run.download_list, run.documents):
        commits.remove_tree(directory)
    writer = _DownloadListWriter(run, cfg.download.shard_size)
    columns = DOCUMENT_DOWNLOAD_COLUMNS if cfg.documents else DOWNLOAD_COLUMNS
    total = blocked = 0
    for item in files:
        rows = _with_precheck(_read(item, cfg, run), cfg.download)
        commits.write_parquet(storage.join(run.rows, f"part-{item.index:05d}.parquet"), rows)
        to_fetch = rows.filter(pc.is_null(rows.column("blocked_reason")))
        writer.add(to_fetch.select(columns))
        total += rows.num_rows
        blocked += rows.num_rows - to_fetch.num_rows
    writer.close()
    return {"rows": total, "blocked": blocked, "download_parts": writer.parts}
