"""Issue 31, item 7: `curate query`'s SQL reaches no directory (DuckDB's temporary directory
included), Ctrl-C and `--timeout` stop a running query, and every refused or failing call
(`CALL enable_logging(storage='file')` aborted the process with SIGABRT) exits with status 2
and one line.

The run directory is a manifest Parquet file, which is all the views need; each query is the
`curate` command in a subprocess, as a user runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from e2e import cli_environment

LONG = "SELECT count(*) FROM range(10000000000000) t(i) WHERE i % 7 = 3"


@pytest.fixture
def run(tmp_path) -> Path:
    root = tmp_path / "run"
    (root / "manifest").mkdir(parents=True)
    pq.write_table(pa.table({"sample_id": ["00000-0000000000", "00000-0000000001"], "status": ["kept", "filtered"],
                             "caption": ["a cat", "a dog"]}), root / "manifest" / "part-00000.parquet")
    return root


def _query(run: Path, sql: str, *options: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["curate", "query", str(run), sql, "--format", "json", *options], env=cli_environment(),
                          capture_output=True, text=True, timeout=300, cwd=cwd)


def _refused(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_the_views_still_answer(run, tmp_path):
    done = _query(run, "SELECT status, count(*) AS n FROM manifest GROUP BY 1 ORDER BY 1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert '"kept"' in done.stdout and '"filtered"' in done.stdout


@pytest.mark.parametrize("sql", [
    "COPY (SELECT 1) TO '.tmp/x.csv'",  # DuckDB's default temporary directory, <cwd>/.tmp
    "COPY (SELECT 1) TO '.tmp/made.csv' (USE_TMP_FILE false)",
    "SELECT * FROM read_csv('.tmp/link/passwd')",  # a symlink there pointed anywhere
    "SELECT * FROM read_text('.tmp/secret.txt')",
    "COPY (SELECT 'x') TO '.tmp/secret.txt' (HEADER false)",
    "SELECT * FROM glob('.tmp/*')",
])
def test_sql_reaches_no_temporary_directory(run, tmp_path, sql):
    tmpdir = tmp_path / ".tmp"
    tmpdir.mkdir()
    (tmpdir / "secret.txt").write_text("kept as it is")
    os.symlink("/etc", tmpdir / "link")
    before = sorted(p.name for p in tmpdir.iterdir())
    _refused(_query(run, sql, cwd=tmp_path))
    assert sorted(p.name for p in tmpdir.iterdir()) == before
    assert (tmpdir / "secret.txt").read_text() == "kept as it is"


@pytest.mark.parametrize("sql", [
    "CALL enable_logging(storage='file', storage_path='.')",
    "CALL enable_logging(storage='file', storage_path='/tmp/curate-query-log'); SELECT 1",
    "CALL enable_logging(storage='file')",
    "SET enable_external_access = true",
    "SET temp_directory = '/tmp'",
    "ATTACH '/tmp/x.duckdb' AS x",
])
def test_every_refused_call_exits_2_with_one_line(run, tmp_path, sql):
    _refused(_query(run, sql, cwd=tmp_path))
    assert not Path("/tmp/curate-query-log").exists()


def test_timeout_stops_a_running_query(run, tmp_path):
    started = time.monotonic()
    line = _refused(_query(run, LONG, "--timeout", "2", cwd=tmp_path))
    assert "--timeout" in line
    assert time.monotonic() - started < 120  # the query alone runs for hours


def _query_child_of(pid: int) -> bool:
    for entry in os.listdir("/proc"):
        try:
            stat = open(f"/proc/{entry}/stat").read() if entry.isdigit() else ""
            if stat and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                if b"query_process" in open(f"/proc/{entry}/cmdline", "rb").read():
                    return True
        except OSError:
            pass
    return False


def test_ctrl_c_stops_a_running_query(run, tmp_path):
    # SIGINT handled as in a terminal, even when this test runs where it is ignored (a background job)
    proc = subprocess.Popen(["curate", "query", str(run), LONG], env=cli_environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not _query_child_of(proc.pid) and time.monotonic() < deadline:  # the query is running
        time.sleep(0.2)
    time.sleep(1)
    assert proc.poll() is None and _query_child_of(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal sends on Ctrl-C: the whole foreground group
    out, errors = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, errors)
    assert [line for line in errors.splitlines() if line.strip()] == ["query interrupted (Ctrl-C)"]


def test_timeout_must_be_positive(run, tmp_path):
    assert "--timeout" in _refused(_query(run, "SELECT 1", "--timeout", "0", cwd=tmp_path))
