"""Progress of a run, per step: rich bars in the terminal and RUN/progress.json for dashboards.

``progress.json`` is rewritten atomically (``storage.atomic_write``) at every update, so a
poller never reads half a file:

    {"run": RUN, "current": "download", "updated": "...",
     "steps": [{"name", "state": "running"|"done"|"failed", "done", "total", "rows_per_s",
                "started", "updated", "finished", "error"}]}

A step may have parts: entries of their own, listed after the step, with their own bar,
that end with it (``step(parts=...)``) or earlier (``part()``):

- ``score/caption``, ``score/clip``, ``score/itm``: rows each enabled model stage has
  finished, out of the score step's rows. The stages run at once on Ray Data, so an earlier
  stage is usually ahead of a later one and all of them ahead of ``score`` (rows committed).
- ``dedupe`` (inside ``manifest``): samples that passed every filter (the dedupe candidates)
  whose duplicate search has finished.

Steps whose work happens elsewhere (img2dataset's processes, Ray Data's tasks) are
followed by polling what they commit: a ``count`` callable runs in a background thread.
Model stages commit nothing of their own, so their actors report through small counter
files (:class:`RowCounter`, summed by :class:`StageRows`). ``rows_per_s`` counts only rows
done since the step started, so a resumed step reports its own speed, not the speed of the
run it resumes.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bars, TaskID, TextColumn, TimeElapsedColumn

from curate.core import storage
from curate.core.rundir import RunDir

POLL_SECONDS = 1.0
# A model actor rewrites its counter file at most this often: one small write per second
# costs nothing next to model time, also on a bucket, where a write is a few requests.
COUNTER_FLUSH_SECONDS = 1.0


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class _Live:
    """A running entry (a step or a part): its progress.json dict, bar and rate baseline."""

    entry: dict
    task: TaskID
    baseline: int
    clock: float
    count: Callable[[], int] | None


class Progress:
    def __init__(self, run: RunDir, console: Console | None = None, poll_seconds: float = POLL_SECONDS):
        self.run = run
        self.console = console or Console()
        self.poll_seconds = poll_seconds
        self.steps: list[dict] = []
        # Reentrant: advance() reads and sets a count under one hold (dedupe reports from threads).
        self._lock = threading.RLock()
        self._current: dict | None = None  # the running step
        self._live: dict[str, _Live] = {}  # the running step and its running parts, by name
        self._bars: Bars | None = None
        self._fail_quietly = False  # see _failing()

    @property
    def uri(self) -> str:
        return storage.join(self.run.root, "progress.json")

    @contextmanager
    def step(self, name: str, total: Callable[[], int] | int | None = None,
             count: Callable[[], int] | None = None,
             parts: dict[str, Callable[[], int]] | None = None) -> Iterator["Progress"]:
        """Follow one step; ``count`` (polled) returns the rows done so far, ``total`` the rows to do.
        ``parts`` maps part names to their polled counts; they share the step's total."""
        total_rows = total() if callable(total) else total
        self._bars = Bars(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=self.console)
        self._current = self._begin(name, total_rows, count)
        for part, part_count in (parts or {}).items():
            self._begin(part, total_rows, part_count)
        self._bars.start()
        stop = threading.Event()
        poller = threading.Thread(target=self._poll, args=(stop,), daemon=True)
        poller.start()
        try:
            yield self
        except BaseException as error:
            self._finish("failed", error)
            raise
        finally:
            stop.set()
            poller.join()
        self._refresh()
        self._finish("done")

    @contextmanager
    def part(self, name: str, total: int) -> Iterator[Callable[[int], None]]:
        """A part of the running step that reports its own units: yields ``advance(rows)``."""
        self._begin(name, total, None)
        try:
            yield lambda rows: self._add(name, rows)
        except BaseException as error:
            with self._failing():
                self._end(name, "failed", error)
            raise
        self._end(name, "done")

    def advance(self, rows: int) -> None:
        """Add rows done to the running step (for steps that report their own units of work)."""
        if self._current is not None:
            self._add(self._current["name"], rows)

    def update(self, done: int) -> None:
        if self._current is not None:
            self._set(self._current["name"], done)

    def _add(self, name: str, rows: int) -> None:
        with self._lock:
            live = self._live.get(name)
            if live is not None:
                self._set(name, live.entry["done"] + rows)

    def _set(self, name: str, done: int) -> None:
        with self._lock:
            live = self._live.get(name)
            if live is None:
                return
            entry = live.entry
            # A batch counted twice (a retried task) must not push an entry past its total.
            entry["done"] = int(min(done, entry["total"])) if entry["total"] is not None else int(done)
            elapsed = time.perf_counter() - live.clock
            entry["rows_per_s"] = round(max(entry["done"] - live.baseline, 0) / elapsed, 2) if elapsed > 0 else 0.0
            entry["updated"] = _now()
            self._bars.update(live.task, completed=entry["done"], total=entry["total"],
                              rate=f"{entry['rows_per_s']:,.1f} rows/s")
            self._save()

    def _begin(self, name: str, total: int | None, count: Callable[[], int] | None) -> dict:
        already = int(count()) if count else 0
        now = _now()
        entry = {"name": name, "state": "running", "done": already, "total": total,
                 "rows_per_s": 0.0, "started": now, "updated": now, "finished": None, "error": None}
        with self._lock:
            self.steps = [s for s in self.steps if s["name"] != name] + [entry]
            task = self._bars.add_task(name, total=total, completed=already, rate="")
            self._live[name] = _Live(entry, task, already, time.perf_counter(), count)
            self._save()
        return entry

    def _end(self, name: str, state: str, error: BaseException | None = None) -> None:
        live = self._live.get(name)
        if live is None:
            return
        entry = live.entry
        if state == "done":
            if entry["total"] is None:
                entry["total"] = entry["done"]  # an entry with no known total did what it counted
            self._set(name, entry["total"])  # an entry that finished did all its rows
        with self._lock:
            entry["state"], entry["finished"] = state, _now()
            entry["error"] = f"{type(error).__name__}: {error}" if error else None
            del self._live[name]
            self._save()

    def _finish(self, state: str, error: BaseException | None = None) -> None:
        """End the running step and the parts still running with it, in the same state."""
        with self._failing() if error is not None else nullcontext():
            for name in list(self._live):
                self._end(name, state, error)
            with self._lock:
                self._bars.stop()
                self._bars, self._current = None, None
                self._save()

    @contextmanager
    def _failing(self) -> Iterator[None]:
        """While a step or part is failing, a progress.json write that fails is not raised: the
        step fails often for the same reason (disk full, a bucket refusing writes), and its own
        error, not this bookkeeping write's, is the one to report."""
        self._fail_quietly = True
        try:
            yield
        finally:
            self._fail_quietly = False

    def _poll(self, stop: threading.Event) -> None:
        while not stop.wait(self.poll_seconds):
            self._refresh()

    def _refresh(self) -> None:
        for name, live in list(self._live.items()):
            if live.count is None:
                continue
            try:
                self._set(name, live.count())
            except (OSError, ValueError):
                continue  # a file being committed right now; the next poll sees it whole

    def _save(self) -> None:
        state = {"run": self.run.root, "current": self._current["name"] if self._current else None,
                 "updated": _now(), "steps": self.steps}
        try:
            storage.write_text(self.uri, json.dumps(state, indent=2))
        except OSError:
            if not self._fail_quietly:
                raise


class CommittedRows:
    """Counts rows in committed files of a folder, reading each immutable file only once."""

    def __init__(self, folder: str, suffix: str, rows_of: Callable[[str], int], recursive: bool = False,
                 exclude: str | None = None):
        self.folder, self.suffix, self.rows_of, self.recursive = folder, suffix, rows_of, recursive
        self.exclude = exclude  # files whose path below ``folder`` holds this are not counted
        self._seen: dict[str, int] = {}

    def __call__(self) -> int:
        for uri in storage.list_files(self.folder, self.suffix, self.recursive):
            if self.exclude and self.exclude in uri[len(self.folder):]:
                continue
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
    """Rows scored from the run's own download shards (a `curate retry` pass's are in
    scored/retry-KK/, counted by the retry)."""
    return CommittedRows(run.scored, ".parquet", parquet_rows, recursive=True, exclude="/retry-")


def stage_counts_dir(run: RunDir, key: str) -> str:
    """Where the actors of model stage ``key`` keep their counter files."""
    return storage.join(run.progress_counts, key)


class RowCounter:
    """Rows one model actor has finished, in ``<folder>/<random id>.json`` = ``{"rows": n}``.

    The file is rewritten (atomically) at the first batch, then at most every
    COUNTER_FLUSH_SECONDS, and when Ray shuts the actor down; never per row. A batch counts
    when its actor has finished it. Under retries: a batch whose actor dies mid-batch counts
    once, on the actor that re-runs it (the dead actor's file keeps the rows it had flushed);
    a batch finished and then lost with its actor counts twice. Progress caps every count at
    its total, and a step that ends well reports done = total.
    """

    def __init__(self, folder: str):
        self.uri = storage.join(folder, f"{uuid.uuid4().hex}.json")
        self.rows = 0
        self._flushed: float | None = None

    def add(self, rows: int) -> None:
        self.rows += rows
        if self._flushed is None or time.monotonic() - self._flushed >= COUNTER_FLUSH_SECONDS:
            try:
                self.flush()
            except OSError:
                # Progress must never fail a batch: a disk or bucket that refuses this write
                # refuses the batch's commit too, and that write stops the run cleanly.
                self._flushed = time.monotonic()

    def flush(self) -> None:
        storage.write_text(self.uri, json.dumps({"rows": self.rows}))
        self._flushed = time.monotonic()


class StageRows:
    """Rows a model stage has finished: the rows committed before this attempt of the process
    step (they went through every stage) plus what the stage's actors report now. Counter
    files of an earlier attempt must be removed before (its uncommitted rows run again)."""

    def __init__(self, folder: str, committed: int):
        self.folder, self.committed = folder, committed

    def __call__(self) -> int:
        files = storage.list_files(self.folder, ".json")
        return self.committed + sum(int(json.loads(storage.read_text(uri))["rows"]) for uri in files)
