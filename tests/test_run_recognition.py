"""Issue 31, items 6 and 9: a curate run directory is recognised by its own files, input left
out is named, and paths are compared after normalisation.

- An input folder holding a crawler's own layout (a sub-folder with some ``state.json`` and an
  ``output/`` folder) is input: its files were skipped silently (10 of 15 rows in the attack).
  A real curate run directory inside the input folder is still left out, and named.
- ``--out run/``, ``./run``, the absolute path, and ``input.path`` spelled ``./x.csv`` are the
  same run: they were refused as "another config"."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from curate.core.config import InputConfig, config_changes, validate
from curate.pipeline.run_inputs import is_curate_run, list_run_inputs


def _parquet(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"url": ["http://x.org/1.jpg"], "caption": ["a photo of a cat"]}), path)


@pytest.mark.parametrize("state", [
    {"cursor": 17, "seen": 300},  # a crawler's state.json
    {"files": "not a list", "input": {}},  # curate's key names, not its content
    "not json {",
])
def test_a_folder_that_only_looks_like_a_run_is_input(tmp_path, state):
    crawl = tmp_path / "in" / "crawl-2026"
    _parquet(crawl / "output" / "part-0.parquet")
    _parquet(crawl / "rows" / "part-1.parquet")
    (crawl / "state.json").write_text(state if isinstance(state, str) else json.dumps(state))
    (crawl / "config.yaml").write_text("spider: true\n")
    _parquet(tmp_path / "in" / "top.parquet")
    left_out: dict = {}
    files = list_run_inputs(InputConfig(path=str(tmp_path / "in"), format="parquet"), str(tmp_path / "run"), left_out)
    assert sorted(os.path.relpath(f.uri, tmp_path / "in") for f in files) == [
        "crawl-2026/output/part-0.parquet", "crawl-2026/rows/part-1.parquet", "top.parquet"]
    assert left_out == {} and not is_curate_run(str(crawl))


def test_a_curate_run_inside_the_input_is_left_out_and_each_file_named(tmp_path):
    from curate.core.rundir import RunDir
    from curate.pipeline.runner import _print_left_out

    other = tmp_path / "in" / "old-run"
    _parquet(other / "manifest" / "part-0.parquet")
    _parquet(other / "output" / "00000.parquet")
    (other / "config.yaml").write_text("input: {path: x}\n")
    (other / "state.json").write_text(json.dumps({"files": [["x", 1]], "input": {"path": "x"}, "content": []}))
    _parquet(tmp_path / "in" / "top.parquet")
    left_out: dict = {}
    files = list_run_inputs(InputConfig(path=str(tmp_path / "in"), format="parquet"), str(tmp_path / "run"), left_out)
    assert [os.path.basename(f.uri) for f in files] == ["top.parquet"]
    assert is_curate_run(str(other))
    console = Console(record=True, width=400)
    _print_left_out(left_out, RunDir(str(tmp_path / "run")), console)
    shown = console.export_text()
    for name in ("manifest/part-0.parquet", "output/00000.parquet"):
        assert f"{other}/{name} left out: it belongs to the curate run {other}" in shown


def _cfg(input_path: str, out: str):
    return validate({"input": {"path": input_path, "format": "csv"}, "output": {"path": out}})


@pytest.mark.parametrize("out", ["run", "run/", "./run", "./run//", "{abs}/run", "{abs}/run/", "{abs}/./x/../run"])
@pytest.mark.parametrize("input_path", ["x.csv", "./x.csv", "{abs}/x.csv", "{abs}/sub/../x.csv"])
def test_the_same_paths_spelled_otherwise_are_no_config_change(tmp_path, monkeypatch, out, input_path):
    monkeypatch.chdir(tmp_path)
    stored = _cfg("x.csv", "run").to_yaml()
    cfg = _cfg(input_path.format(abs=tmp_path), out.format(abs=tmp_path))
    assert config_changes(stored, cfg) == []


def test_another_input_path_is_still_a_change(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config_changes(_cfg("x.csv", "run").to_yaml(), _cfg("y.csv", "run")) == [
        f"input.path: {str(tmp_path / 'x.csv')!r} -> {str(tmp_path / 'y.csv')!r}"]
