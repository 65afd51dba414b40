"""Progress of a run, per step: rich bars in the terminal and RUN/progress.json for dashboards.

``progress.json`` is rewritten atomically (``storage.atomic_write``) at every update, so a
poller never reads half a file:

    {"run": RUN, "current": "download", "updated": "...",
     "steps": [{"name", "state": "running"|"done"|"failed", "done", "total", "rows_per_s",
                "started", "updated", "finished", "error"}]}

Steps whose work happens elsewhere (img2dataset's processes, Ray Data's tasks) are
followed by polling what they commit: a ``count`` callable runs in a background thread.
``rows_per_s`` counts only rows done since the step started, so a resumed step reports
its own speed, not the speed of the run it resumes.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bars, TextColumn, TimeElapsedColumn

from curate.pipeline import storage
from curate.pipeline.rundir import RunDir

POLL_SECONDS = 1.0


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


class Progress:
    def __init__(self, run: RunDir, console: Console | None = None, poll_seconds: float = POLL_SECONDS):
        self.run = run
        self.console = console or Console()
        self.poll_seconds = poll_seconds
        self.steps: list[dict] = []
        self._lock = threading.Lock()
        self._current: dict | None = None
        self._bars: Bars | None = None
        self._task = None
        self._baseline = 0
        self._clock = 0.0

    @property
    def uri(self) -> str:
        return storage.join(self.run.root, "progress.json")

    @contextmanager
    def step(self, name: str, total: Callable[[], int] | int | None = None,
             count: Callable[[], int] | None = None) -> Iterator["Progress"]:
        """Follow one step; ``count`` (polled) returns the rows done so far, ``total`` the rows to do."""
        total_rows = total() if callable(total) else total
        self._begin(name, total_rows, count() if count else 0)
        stop = threading.Event()
        poller = threading.Thread(target=self._poll, args=(count, stop), daemon=True) if count else None
        if poller:
            poller.start()
        try:
            yield self
        except BaseException as error:
            self._end("failed", error)
            raise
        finally:
            stop.set()
            if poller:
                poller.join()
        if count:
            self.update(count())
        self._end("done")

    def advance(self, rows: int) -> None:
        """Add rows done (for steps that report their own units of work)."""
        if self._current is not None:
            self.update(self._current["done"] + rows)

    def update(self, done: int) -> None:
        with self._lock:
            step = self._current
            if step is None:
                return
            # A batch committed twice (a retried task) must not push a step past its total.
            step["done"] = int(min(done, step["total"])) if step["total"] is not None else int(done)
            done = step["done"]
            elapsed = time.perf_counter() - self._clock
            step["rows_per_s"] = round(max(done - self._baseline, 0) / elapsed, 2) if elapsed > 0 else 0.0
            step["updated"] = _now()
            if self._bars is not None:
                self._bars.update(self._task, completed=done, total=step["total"], rate=f"{step['rows_per_s']:,.1f} rows/s")
            self._save()

    def _begin(self, name: str, total: int | None, already: int) -> None:
        with self._lock:
            now = _now()
            self._current = {"name": name, "state": "running", "done": int(already), "total": total,
                             "rows_per_s": 0.0, "started": now, "updated": now, "finished": None, "error": None}
            self.steps = [s for s in self.steps if s["name"] != name] + [self._current]
            self._baseline, self._clock = int(already), time.perf_counter()
            self._bars = Bars(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=self.console)
            self._task = self._bars.add_task(name, total=total, completed=already, rate="")
            self._bars.start()
            self._save()

    def _end(self, state: str, error: BaseException | None = None) -> None:
        step = self._current
        if step is None:
            return
        if state == "done" and step["total"] is not None:
            self.update(step["total"])  # a step that finished did all its rows
        elif state == "done":
            step["total"] = step["done"]  # a step with no known total did what it counted
            self.update(step["done"])
        with self._lock:
            step["state"], step["finished"] = state, _now()
            step["error"] = f"{type(error).__name__}: {error}" if error else None
            self._bars.stop()
            self._bars, self._current = None, None
            try:
                self._save()
            except OSError:
                if error is None:
                    raise
                # The step is failing already, often for the same reason (disk full, a bucket
                # refusing writes): its own error, not this bookkeeping write's, is the one to report.

    def _poll(self, count: Callable[[], int], stop: threading.Event) -> None:
        while not stop.wait(self.poll_seconds):
            try:
                self.update(count())
            except (OSError, ValueError):
                continue  # a file being committed right now; the next poll sees it whole

    def _save(self) -> None:
        state = {"run": self.run.root, "current": self._current["name"] if self._current else None,
                 "updated": _now(), "steps": self.steps}
        storage.write_text(self.uri, json.dumps(state, indent=2))


class CommittedRows:
    """Counts rows in committed files of a folder, reading each immutable file only once."""

    def __init__(self, folder: str, suffix: str, rows_of: Callable[[str], int]):
        self.folder, self.suffix, self.rows_of = folder, suffix, rows_of
        self._seen: dict[str, int] = {}

    def __call__(self) -> int:
        for uri in storage.list_files(self.folder, self.suffix):
            if uri not in self._seen:
                self._seen[uri] = self.rows_of(uri)
        return sum(self._seen.values())


def parquet_rows(uri: str) -> int:
    import pyarrow.parquet as pq

    fs, path = storage.fs_and_path(uri)
    return pq.read_metadata(path, filesystem=fs).num_rows


def stats_rows(uri: str) -> int:
    """Rows of one finished img2dataset shard, from its ``NNNNN_stats.json`` (its commit marker)."""
    return int(json.loads(storage.read_text(uri)).get("count", 0))


def rows_in(folder: str) -> int:
    return sum(parquet_rows(uri) for uri in storage.list_files(folder, ".parquet"))


def prepared_rows(run: RunDir) -> CommittedRows:
    return CommittedRows(run.rows, ".parquet", parquet_rows)


def downloaded_rows(run: RunDir) -> CommittedRows:
    return CommittedRows(run.downloaded, "_stats.json", stats_rows)


def scored_rows(run: RunDir) -> CommittedRows:
    return CommittedRows(run.scored, ".parquet", parquet_rows)
