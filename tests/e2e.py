"""Helpers for end-to-end runs: write the mixed corpus as input, run, read results back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


# Model scores of one image can differ in their last float bits when it is scored in another
# batch (other batch shapes take other BLAS blockings): decisions must not, scores only so much.
FLOAT_TOLERANCE = 1e-5


def same_but_float_bits(a, b) -> bool:
    """``a == b``, floats within FLOAT_TOLERANCE, recursing through lists and dicts."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= FLOAT_TOLERANCE
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_but_float_bits(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_but_float_bits(x, y) for x, y in zip(a, b))
    return a == b


def assert_same_decisions(got: pa.Table, want: pa.Table) -> None:
    """Every column and row equal, floats (model scores) within FLOAT_TOLERANCE."""
    assert got.column_names == want.column_names and got.num_rows == want.num_rows
    for name in got.column_names:
        for i, (a, b) in enumerate(zip(got.column(name).to_pylist(), want.column(name).to_pylist())):
            assert same_but_float_bits(a, b), (name, i, a, b)


def cli_environment() -> dict:
    """Environment for `curate` subprocesses: this interpreter's venv first on PATH."""
    return dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))


def curate_cli(args: list[str], env: dict, ok: bool = True) -> subprocess.CompletedProcess:
    """``curate ARGS`` as a user runs it; with ``ok``, asserts it exited 0 (showing its output)."""
    done = subprocess.run(["curate", *args], env=env, capture_output=True, text=True, timeout=900)
    if ok:
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done


def file_states(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Name -> (mtime in ns, bytes) of each file in ``folder``: which files a step rewrote."""
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir()) if p.is_file()}
