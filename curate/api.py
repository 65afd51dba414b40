"""The Python API: ``curate.run``, ``curate.query``, ``curate.open_run``, ``curate.export``,
``curate.evaluate``.

What the command line does, for notebooks and scripts (docs/python-api.md). ``import curate``
stays light: the package resolves these names from this module on first use.

Progress: ``progress="lines"`` (the default) prints one line per step when it ends
(``download ━━━━ 120/120 ...``), plain text that reads the same in a terminal, a log file and
a Jupyter cell, and turns Ray Data's own bars off; ``"rich"`` draws rich's live bars (in
Jupyter through rich's notebook support, which needs ipywidgets); ``"none"`` prints nothing.
RUN/progress.json is written in every mode.
"""

from __future__ import annotations

import copy
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

PROGRESS = ("lines", "rich", "none")


def _console(progress: str):
    from rich.console import Console

    if progress not in PROGRESS:
        raise ValueError(f"progress must be one of {', '.join(PROGRESS)}, not {progress!r}")
    if progress == "rich":
        return Console()
    if progress == "none":
        return Console(file=io.StringIO(), force_terminal=False, force_jupyter=False)
    # A console that is neither a terminal nor Jupyter: rich's bars render once, when a step ends.
    return Console(file=sys.stdout, force_terminal=False, force_jupyter=False, width=100)


def _config(config: str | Path | dict, out: str | Path | None, overrides: list[str]):
    from curate.core.config import apply_overrides, load_config, validate

    if isinstance(config, dict):
        data = apply_overrides(copy.deepcopy(config), overrides)  # the caller's dict stays as it was
        if out is not None:
            data = {**data, "output": {**(data.get("output") or {}), "path": str(out)}}
        return validate(data)
    return load_config(Path(config), overrides, None if out is None else str(out))


def run(config: str | Path | dict, out: str | Path | None = None, *, overrides: list[str] | None = None,
        address: str | None = None, progress: str = "lines", extend: bool = False, fresh: bool = False) -> "Run":
    """Run (or resume) the pipeline, as ``curate run``; returns the finished :class:`Run`.

    ``config``: a YAML path or the same structure as a dict (docs/config.md); ``out``: the
    run directory (``output.path``); ``overrides``: ``["clip.min_score=0.3", ...]`` as
    ``--set``; ``address``: an existing Ray cluster; ``extend``: grow a finished run with the
    input files it has not seen, as ``curate run --extend``; ``fresh``: remove an earlier curate
    run in ``out`` first, as ``curate run --fresh``."""
    from curate.core.ray_session import start_ray
    from curate.pipeline.runner import run_pipeline

    overrides = list(overrides or []) + ([f"ray.address={address}"] if address else [])
    cfg = _config(config, out, overrides)
    console = _console(progress)
    start_ray(cfg.ray.address, cfg.ray.num_cpus, cfg.storage.environment())
    result = run_pipeline(cfg, console, extend=extend, fresh=fresh)
    return Run(result.run.root, summary=result.summary, index=result.index)


def _root(run) -> str:
    """A run's root from a path, a URI or a :class:`Run` (a ``Path`` has a ``root`` of its own: "/")."""
    return run.root if isinstance(run, Run) else str(run)


def query(run: str | Path | "Run", sql: str) -> pa.Table:
    """DuckDB SQL over a run's views (``manifest``, ``scored``, ``output``, and for documents
    ``manifest_images``), as ``curate query``; a pyarrow Table (``.to_pandas()`` for pandas)."""
    from curate.core.views import run_query

    return run_query(_root(run), sql)


def open_run(run: str | Path) -> "Run":
    """A finished run: its views to query, its summary and output index."""
    return Run(str(run))


def export(run: str | Path | "Run", format: str, out: str | Path) -> dict:
    """``curate export``: ``llava``, ``datacomp-uids`` or ``clip-retrieval`` into ``out``."""
    from curate.pipeline.export import export as do_export

    return do_export(_root(run), format, out)


def evaluate(run: str | Path | "Run", selections: list[str] | None = None, *, seeds: list[int] | None = None,
             zeroshot: list[str | Path] = (), retrieval: list[str | Path] = (), synthetic: bool = False,
             address: str | None = None, progress: str = "lines", **train):
    """``curate eval``: train a small CLIP on each selection of a finished run with each seed
    and evaluate it zero-shot (docs/eval.md); returns curate.eval.runner.EvalResult (its
    ``summary``: mean and spread over seeds, difference to ``raw``; ``results``: the URI of
    RUN/eval/results.parquet). ``selections``: ``run``, ``raw``, ``clip``, ``itm``,
    ``clip+itm``, ``capfilt``, ``set:KEY=VALUE,...``, ``uids:PATH`` (default run, raw,
    clip+itm, capfilt); ``zeroshot``: image folders per class; ``retrieval``: Parquet or
    WebDataset image-caption pairs; ``synthetic``: the demo world's held-out sets;
    ``train``: curate.eval.train.TrainConfig fields (``model``, ``samples_seen``,
    ``batch_size``, ``epochs``, ``lr``, ``warmup``, ``device``, ``precision``, ``cpus``, ``gpus``).
    Raises curate.eval.runner.EvalError for anything refused before training."""
    from curate.eval.runner import evaluate_run
    from curate.eval.train import TrainConfig

    return evaluate_run(_root(run), selections, seeds, TrainConfig(**train),
                        [str(p) for p in zeroshot], [str(p) for p in retrieval], synthetic, address,
                        _console(progress))


@dataclass
class Run:
    """A run directory. ``query(sql)`` answers over its views; ``connection()`` is a DuckDB
    connection with them (close it when done); ``manifest`` is the whole manifest as a
    pyarrow Table; ``summary`` and ``index`` are summary.json and output/index.json."""

    root: str
    summary: dict | None = None
    index: dict | None = None

    def __post_init__(self):
        import json

        from curate.core import storage
        from curate.core.rundir import RunDir

        self.root = str(self.root).rstrip("/")
        run = RunDir(self.root)
        if self.summary is None and storage.exists(run.summary):
            self.summary = json.loads(storage.read_text(run.summary))
        index = storage.join(run.output, "index.json")
        if self.index is None and storage.exists(index):
            self.index = json.loads(storage.read_text(index))

    def query(self, sql: str) -> pa.Table:
        return query(self.root, sql)

    def connection(self) -> duckdb.DuckDBPyConnection:
        from curate.core.views import open_views

        return open_views(self.root)

    @property
    def views(self) -> list[str]:
        """The views to query (curate.core.views.PUBLIC_VIEWS this run has), not the ones they are built from."""
        from curate.core.views import PUBLIC_VIEWS

        con = self.connection()
        try:
            return [r[0] for r in con.execute(
                "SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY view_name").fetchall()
                if r[0] in PUBLIC_VIEWS]
        finally:
            con.close()

    @property
    def manifest(self) -> pa.Table:
        return self.query("SELECT * FROM manifest ORDER BY sample_id")

    def export(self, format: str, out: str | Path) -> dict[str, Any]:
        return export(self.root, format, out)

    def __repr__(self) -> str:
        kept = (self.summary or {}).get("kept")
        return f"Run({self.root!r}, kept={kept})"
