"""Helpers for end-to-end runs: write the mixed corpus as input, run, read results back."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from corpus import blocked_rows, mixed_corpus
from curate.core import storage
from curate.core.rundir import RunDir

FAST_SETTINGS = [
    "download.timeout=2",
    "download.allow_private_hosts=true",
    "download.image_size=64",
    "download.threads=8",
    "filters.min_side=32",
]


def corpus_rows(server) -> list[dict]:
    """Input rows in order, each with the status and reason code the manifest must show."""
    rows = [
        {"url": server.url(c.path), "caption": c.caption, "want_status": c.status, "want_reason": c.reason}
        for c in mixed_corpus()
    ]
    rows += [
        {"url": r["url"], "caption": r["caption"], "want_status": "blocked", "want_reason": r["reason"]}
        for r in blocked_rows()
        # With allow_private_hosts on (the local server needs it) private hosts would be
        # fetched: never send test traffic anywhere but loopback.
        if r["reason"] != "private_host"
    ]
    return rows


def write_input(rows: list[dict], path) -> None:
    table = pa.Table.from_pylist([{"url": r["url"], "caption": r["caption"]} for r in rows])
    pq.write_table(table, path)


def read_manifest(run_root: str) -> pa.Table:
    run = RunDir(run_root)
    return storage.read_parquet(storage.list_files(run.manifest, ".parquet")).sort_by("sample_id")
