"""Before a run resumes, its committed work is checked, not trusted.

Every committed file has a record of its size and sha256 (curate.core.commits). A
file that is missing, of another size or other content than recorded (deleted or
damaged by hand, by a disk, by a second run) is removed here together with the work
derived from it, so that its step does it again:

- a file of an input part (``rows/``, ``download_list/``, ``documents/``): that part is
  prepared again (it rewrites the same files: they depend on the input only; with rows
  merged by URL, on the other parts' rows too, which are read back: curate.pipeline.same_url);
- a download shard (its Parquet or its stats): the shard is downloaded again, and its
  scored parts (``scored/<shard>/``) are removed, so its rows are scored again;
- a scored part: its rows are scored again.

Output shards are checked the same way by the output step itself
(``curate.pipeline.output``); the manifest is rebuilt by every run. Files written but
never recorded (a run killed between the two) are not committed: they are removed
without comment, as a resume always did with unfinished work.

Checking reads every committed file once. It runs as Ray tasks, a group of parts or
shards each, so on a cluster the reading is spread over the nodes and the driver holds
names only.
"""

from __future__ import annotations

import json
import posixpath

from curate.core import commits, storage
from curate.core.rundir import RunDir
from curate.pipeline.prepare import PART_MARKERS, ROWS_MARKERS

_STATS = "_stats.json"
_HOSTS = "_hosts.parquet"  # a download shard's per-host figures (curate.download.polite_fetch), committed with it
TASK_CPUS = 0.5
GROUP = 16  # parts or shards checked per task


def verify_run(run: RunDir) -> list[str]:
    """Check a run directory before resuming it; remove what is missing or damaged (and
    what was derived from it) so that its step does it again. Returns a line per damaged
    file, for the log; empty for a fresh or intact run. Needs Ray started."""
    if not storage.exists(run.config):
        return []  # a fresh run: nothing to check
    problems: list[str] = []
    if not storage.exists(storage.join(run.root, commits.RECORDS)):
        # Started by an earlier curate, or _commits/ removed: every file is read, and only
        # those that read whole are recorded; the checks below then redo the others.
        count, unreadable = _adopt(run)
        problems.append(f"(no commit records: {count} committed files read whole and recorded as they are now)")
        problems += [f"{_below_run(run, uri)}: {why}" for uri, why in unreadable]
    _check_prepare(run, problems)
    redo = _check_downloads(run, problems)
    _check_scored(run, redo, problems)
    return problems


def _in_tasks(fn, items: list, *args) -> list:
    """``fn(group, *args)`` as Ray tasks over groups of ``items``; their results, concatenated."""
    import ray

    if not items:
        return []
    task = ray.remote(num_cpus=TASK_CPUS)(fn)
    groups = [items[i : i + GROUP] for i in range(0, len(items), GROUP)]
    return [found for result in ray.get([task.remote(g, *args) for g in groups]) for found in result]


def _damage(uri: str) -> str | None:
    """What is wrong with a file that was committed once; None if it is whole or was
    never committed (never written, or written without its record)."""
    found = commits.problem(uri)
    return None if found in (None, "not written", "not recorded") else found


# -- prepare: per input part ------------------------------------------------------------------


def _part_files(run: RunDir, marker: dict) -> list[str]:
    part = marker["part"]
    files = [storage.join(run.rows, f"part-{part}.parquet"), storage.join(run.documents, f"part-{part}.parquet")]
    return files + [storage.join(run.download_list, name) for name in marker.get("download_parts", [])]


def _damaged_parts(markers: list[str], run: RunDir) -> list[tuple[str, list[str]]]:
    """Ray task: (marker, damaged files) of each prepared part in ``markers`` with damage."""
    out = []
    for uri in markers:
        files = _part_files(run, json.loads(storage.read_text(uri)))
        found = [(f, commits.problem(f)) for f in files]
        bad = [f"{posixpath.basename(posixpath.dirname(f))}/{posixpath.basename(f)}: {why}"
               for f, why in found if why is not None and why != "not written"]
        if bad:
            for f in files:
                commits.forget(f)
            out.append((uri, bad))
    return out


def _prepare_markers(run: RunDir) -> list[str]:
    """The marker of each prepared part: the whole part's (curate.pipeline.prepare's
    PART_MARKERS, its files all written) or, for a part whose step was interrupted, that of
    its rows/ file alone (ROWS_MARKERS)."""
    folders = [storage.join(run.root, "_done", name) for name in (PART_MARKERS, ROWS_MARKERS)]
    whole = storage.list_files(folders[0], ".json")
    done = {posixpath.basename(uri) for uri in whole}
    return whole + [uri for uri in storage.list_files(folders[1], ".json") if posixpath.basename(uri) not in done]


def _check_prepare(run: RunDir, problems: list[str]) -> None:
    damaged = _in_tasks(_damaged_parts, _prepare_markers(run), run)
    for marker, bad in damaged:
        problems += bad
        for name in (PART_MARKERS, ROWS_MARKERS):  # that part is prepared again, from its input
            storage.remove_tree(storage.join(run.root, "_done", name, posixpath.basename(marker)))
    if damaged:
        storage.remove_tree(run.marker("prepare"))


# -- download: per shard ----------------------------------------------------------------------


def _damaged_shards(shards: list[str], run: RunDir) -> list[tuple[str, list[str]]]:
    """Ray task: (shard, problems) of each download shard in ``shards`` not committed and whole."""
    out = []
    for shard in shards:
        uris = [storage.join(run.downloaded, shard + s) for s in (".parquet", _STATS)]
        hosts = storage.join(run.downloaded, shard + _HOSTS)
        if commits.problem(hosts) != "not written":  # shards written before per-host figures have none
            uris.append(hosts)
        found = [commits.problem(u) for u in uris]
        if all(f is None for f in found) or all(f == "not written" for f in found):
            continue
        out.append((shard, [f"downloaded/{posixpath.basename(u)}: {why}" for u in uris if (why := _damage(u))]))
        for uri in uris:
            commits.forget(uri)
    return out


def _check_downloads(run: RunDir, problems: list[str]) -> set[str]:
    """Remove download shards that are not committed and whole; returns their names."""
    names = [posixpath.basename(u) for s in (".parquet", _STATS) for u in storage.list_files(run.downloaded, s)]
    names = [n for n in names + commits.recorded_names(run.downloaded) if not n.endswith(_HOSTS)]
    shards = sorted({n[: -len(_STATS)] if n.endswith(_STATS) else n[: -len(".parquet")]
                     for n in names if n.endswith((".parquet", _STATS))})
    damaged = _in_tasks(_damaged_shards, shards, run)
    for _, bad in damaged:
        problems += bad
    if damaged:
        storage.remove_tree(run.marker("download"))
    return {shard for shard, _ in damaged}


# -- score: per download shard's folder -------------------------------------------------------


def _damaged_scored(shards: list[str], run: RunDir, redo: set[str]) -> list[str]:
    """Ray task: remove the scored parts of ``shards`` that are damaged (and all of a shard
    downloaded again); returns the damage found."""
    out = []
    for shard in shards:
        folder = storage.join(run.scored, shard)
        if shard in redo:  # scored from a download that is done again: score it again
            commits.remove_tree(folder)
            continue
        present = {posixpath.basename(u) for u in storage.list_files(folder, ".parquet")}
        for name in sorted(present | set(commits.recorded_names(folder))):
            uri = storage.join(folder, name)
            found = commits.problem(uri)
            if found in (None, "not written"):
                continue
            if (why := _damage(uri)) is not None:
                out.append(f"scored/{shard}/{name}: {why}")
            commits.forget(uri)
    return out


def _check_scored(run: RunDir, redo: set[str], problems: list[str]) -> None:
    shards = sorted(set(_folders(run.scored)) | set(_folders(commits.records_dir(run.scored))) | redo)
    problems += _in_tasks(_damaged_scored, shards, run, redo)


def _folders(uri: str) -> list[str]:
    fs, path = storage.fs_and_path(uri)
    fs.invalidate_cache(path)
    if not fs.exists(path):
        return []
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False) if fs.isdir(p))


# -- runs started before commit records -------------------------------------------------------


def _below_run(run: RunDir, uri: str) -> str:
    return uri[len(run.root.rstrip("/")) + 1:] if uri.startswith(run.root.rstrip("/") + "/") else uri


def _unreadable(uri: str, stats_count: int | None = None) -> str | None:
    """Why a file can't be trusted as committed without a record (None: it reads whole): a
    Parquet file that does not read (truncated, damaged) or, for a download shard, holds
    another number of rows than its stats say; a stats file that is not JSON."""
    import pyarrow.parquet as pq

    fs, path = storage.fs_and_path(uri)
    try:
        if uri.endswith(".parquet"):
            with fs.open(path, "rb") as handle:
                rows = pq.ParquetFile(handle).read().num_rows  # every page decoded
            if stats_count is not None and rows != stats_count:
                return f"{rows} rows (its stats say {stats_count})"
        else:
            json.loads(storage.read_text(uri))
    except Exception as error:  # noqa: BLE001 - any failure to read is damage
        return f"unreadable ({error.__class__.__name__})"
    return None


def _record_all(uris: list[str]) -> list[tuple[int, list[tuple[str, str]]]]:
    """Ray task: record each existing file of ``uris`` that reads whole; (how many were
    recorded, (uri, why) of those that did not)."""
    done, bad = 0, []
    for uri in uris:
        if not storage.exists(uri):
            continue
        count = None
        if uri.endswith(".parquet") and not uri.endswith(_HOSTS) and storage.exists(uri[: -len(".parquet")] + _STATS):
            try:
                count = int(json.loads(storage.read_text(uri[: -len(".parquet")] + _STATS))["count"])
            except (ValueError, KeyError, TypeError, OSError):
                count = None
        why = _unreadable(uri, count)
        if why is None:
            commits.record(uri)
            done += 1
        else:
            bad.append((uri, why))
    return [(done, bad)]


def _adopt(run: RunDir) -> tuple[int, list[tuple[str, str]]]:
    """A run without commit records (started before they existed, or its _commits/ removed):
    record its committed files that read whole, once. Returns how many were recorded and the
    files that did not read (left unrecorded: their work is done again)."""
    uris = [u for d in (run.rows, run.download_list, run.documents) for u in storage.list_files(d, ".parquet")]
    uris += storage.list_files(run.scored, ".parquet", recursive=True)
    for stats in storage.list_files(run.downloaded, _STATS):
        uris += [stats, stats[: -len(_STATS)] + ".parquet", stats[: -len(_STATS)] + _HOSTS]
    results = _in_tasks(_record_all, uris)
    return sum(n for n, _ in results), [item for _, bad in results for item in bad]
