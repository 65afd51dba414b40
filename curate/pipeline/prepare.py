"""Step 1: read every input row, give it a sample_id, block what must not be fetched.

Writes ``RUN/rows/`` (every image row, with ``blocked_reason``) and ``RUN/download_list/``
(the rows to download, in parts of ``download.shard_size`` rows: one part becomes one
download shard, the unit of resume). The run's kind reads each input file into image rows
(a documents run also writes ``RUN/documents/``). Both are deterministic from the input, so
a resumed run that finds them complete skips this step.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from curate.core import commits, storage
from curate.core.config import DownloadConfig
from curate.core.inputs import InputFile
from curate.core.rundir import RunDir
from curate.flow.plan import Plan
from curate.schemas import reasons as R
from curate.schemas.columns import BLOCKED_REASON
from curate.stages.browser_url import browser_url
from curate.stages.precheck import check_url


def _with_precheck(rows: pa.Table, download: DownloadConfig) -> tuple[pa.Table, pa.Array]:
    """(rows with ``blocked_reason``, the URL to fetch for each row). The check judges the
    URL as a browser would request it (curate.stages.browser_url); rows keep the input's."""
    allow, networks = download.allow_private_hosts, tuple(download.allowed_networks)
    fetch = [browser_url(u) for u in rows.column("url").to_pylist()]
    reasons = [R.URL_INVALID() if f is None and u else check_url(f, allow, networks)
               for u, f in zip(rows.column("url").to_pylist(), fetch)]
    return rows.append_column(BLOCKED_REASON, pa.array(reasons, pa.string())), pa.array(fetch, pa.string())


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


def prepare(plan: Plan, run: RunDir, files: list[InputFile]) -> dict:
    """Write rows/ and download_list/ (and what the kind keeps besides), each file with its
    commit record (curate.core.commits); returns counts."""
    for directory in (run.rows, run.download_list, run.documents):
        commits.remove_tree(directory)
    writer = _DownloadListWriter(run, plan.cfg.download.shard_size)
    total = blocked = 0
    for item in files:
        rows, fetch_urls = _with_precheck(plan.kind.read(item, run), plan.cfg.download)
        commits.write_parquet(storage.join(run.rows, f"part-{item.index:05d}.parquet"), rows)
        fetched = rows.set_column(rows.schema.get_field_index("url"), "url", fetch_urls)
        to_fetch = fetched.filter(pc.is_null(rows.column("blocked_reason")))
        writer.add(to_fetch.select(list(plan.kind.download_columns)))
        total += rows.num_rows
        blocked += rows.num_rows - to_fetch.num_rows
    writer.close()
    return {"rows": total, "blocked": blocked, "download_parts": writer.parts}
