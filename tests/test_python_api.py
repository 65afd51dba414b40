"""The Python API (docs/python-api.md): curate.run with a dict config, curate.query and
curate.open_run over the finished run, one progress line per step, and a light import."""

from __future__ import annotations

import re
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq

import curate
from curate.synth.corpus import make_corpus
from curate.synth.http_server import CorpusServer


def test_import_curate_loads_no_heavy_library(repo_root):
    code = ("import sys, curate; heavy = [m for m in ('torch', 'ray', 'duckdb', 'pyarrow', 'open_clip') "
            "if m in sys.modules]; print(heavy); print(sorted(n for n in dir(curate) if not n.startswith('_')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo_root, check=True)
    heavy, names = done.stdout.splitlines()
    assert heavy == "[]"
    assert names == "['Run', 'evaluate', 'export', 'open_run', 'query', 'run']"


def test_run_query_and_open_run_from_python(tmp_path, ray_session, capsys):
    corpus = make_corpus(40, 2)
    config = {  # the same structure as a YAML config; no model stages: the API, not the models, is tested
        "input": {"path": str(tmp_path / "input.parquet")},
        "output": {"formats": ["webdataset", "parquet"], "samples_per_shard": 20},
        "download": {"image_size": 64, "timeout": 2, "allow_private_hosts": True},
        "filters": {"min_side": 32},
    }
    with CorpusServer(corpus.routes) as server:
        pq.write_table(corpus.input_table(server.base_url), tmp_path / "input.parquet")
        run = curate.run(config, out=tmp_path / "run")
    printed = capsys.readouterr().out

    assert "path" not in config["output"]  # the caller's dict is not changed
    assert isinstance(run, curate.Run) and run.summary["rows_in"] == 40
    # One line per step, when it ends: plain text, no cursor movement, no Ray Data bars.
    for step in ("prepare", "download", "score", "manifest", "output"):
        lines = [line for line in printed.splitlines() if re.match(rf"{step}\s+━+", line)]
        assert len(lines) == 1, (step, printed)
    assert "\x1b[" not in printed

    table = curate.query(run, "SELECT status, count(*) AS n FROM manifest GROUP BY status ORDER BY status")
    assert isinstance(table, pa.Table)
    frame = table.to_pandas()
    assert frame["n"].sum() == 40 and set(frame["status"]) <= {"kept", "filtered", "download_failed", "duplicate", "blocked"}
    assert dict(zip(frame["status"], frame["n"])) == run.summary["statuses"]

    opened = curate.open_run(str(tmp_path / "run"))
    assert {"manifest", "scored", "output"} <= set(opened.views)
    assert opened.manifest.num_rows == 40
    assert opened.index["total"] == run.summary["kept"] == opened.query(
        "SELECT sum(count) AS n FROM output").column("n")[0].as_py()
    con = opened.connection()
    try:
        assert con.execute("SELECT count(*) FROM manifest WHERE status = 'kept'").fetchone()[0] == run.summary["kept"]
    finally:
        con.close()
