"""download.write_retry_pause reaches img2dataset's reader: a shard-list write that keeps
failing is retried as img2dataset does (10 rounds of 10 attempts) and then raises, without
its pauses when the factor is 0; img2dataset's own module is put back afterwards."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from img2dataset.reader import Reader

from curate.core.config import ConfigError, validate
from curate.download.write_retries import reader_write_pauses


def _reader(tmp_path, tmp_dir) -> Reader:
    pq.write_table(pa.table({"url": ["http://127.0.0.1/a.jpg"], "caption": ["a"]}), tmp_path / "list.parquet")
    return Reader(str(tmp_path / "list.parquet"), "parquet", "url", "caption", None, None, [], 10, [], str(tmp_dir))


def test_a_failing_shard_list_write_is_retried_then_raises_without_pauses(tmp_path):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where img2dataset's _tmp folder should be: every write fails")
    reader = importlib.import_module("img2dataset.reader")
    real_time = reader.time
    with reader_write_pauses(0):
        assert reader.time is not real_time and reader.time.monotonic  # the rest of `time` is the real one
        with pytest.raises(OSError):
            next(iter(_reader(tmp_path, blocked)))
    assert reader.time is real_time


def test_one_keeps_img2dataset_s_own_pauses_and_the_key_is_checked():
    reader = importlib.import_module("img2dataset.reader")
    with reader_write_pauses(1):
        assert reader.time is importlib.import_module("time")
    assert validate({"input": {"path": "in.parquet"}, "output": {"path": "run"}}).download.write_retry_pause == 1
    with pytest.raises(ConfigError, match="write_retry_pause"):
        validate({"input": {"path": "in.parquet"}, "output": {"path": "run"}, "download": {"write_retry_pause": -1}})


def test_a_download_whose_shard_lists_cannot_be_written_stops_with_one_error_and_no_traceback(tmp_path):
    """The whole step (curate.download.download.run_download) in a process of its own: every
    retry of img2dataset's reader runs (99 "retrying" lines: 9 in each of 10 rounds, 9 between
    rounds), then one OSError, and img2dataset's logger process, which it never joins when it
    raises, is ended without printing a traceback (it used to, when it was still starting)."""
    lists, out = tmp_path / "list", tmp_path / "out"
    lists.mkdir()
    out.mkdir()
    pq.write_table(pa.table({"url": ["http://127.0.0.1:9/a.jpg"], "caption": ["a"], "sample_id": ["s0"]}),
                   lists / "part-0.parquet")
    (out / "_tmp").write_text("a file where img2dataset's _tmp folder should be")
    script = textwrap.dedent(f"""
        import sys
        from curate.core.config import validate
        from curate.download.download import run_download
        cfg = validate({{"input": {{"path": "in.parquet"}}, "output": {{"path": "run"}},
                         "download": {{"write_retry_pause": 0}}}}).download
        try:
            run_download({str(lists)!r}, {str(out)!r}, cfg, ["sample_id"])
        except OSError as error:
            print("stopped:", error, file=sys.stderr)
            sys.exit(2)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stdout.count("retrying") == 99
    assert "stopped: [Errno 20] Not a directory" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
