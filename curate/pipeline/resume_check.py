"""Before a run resumes, its committed work is checked, not trusted.

Every committed file has a record of its size and sha256 (curate.core.commits). A
file that is missing, of another size or other content than recorded (deleted or
damaged by hand, by a disk, by a second run) is removed here together with the work
derived from it, so that its step does it again:

- a file of ``rows/``, ``download_list/`` or ``documents/``: the prepare step runs again
  (it rewrites the same files: they depend on the input only);
- a download shard (its Parquet or its stats): the shard is downloaded again, and the
  scored parts holding any of its rows are removed, so those rows are scored again from
  the new download;
- a scored part: its rows are scored again.

Output shards are checked the same way by the output step itself
(``curate.pipeline.output``); the manifest is rebuilt by every run. Files written but
never recorded (a run killed between the two) are not committed: they are removed
without comment, as a resume always did with unfinished work.
"""

from __future__ import annotations

import posixpath

import pyarrow as pa
import pyarrow.compute as pc

from curate.core import commits, storage
from curate.core.rundir import RunDir

_STATS = "_stats.json"


def _names(directory: str, suffixes: tuple[str, ...]) -> list[str]:
    """Files of ``directory`` ending in one of ``suffixes``, present or only recorded."""
    present = {posixpath.basename(u) for s in suffixes for u in storage.list_files(directory, s)}
    recorded = {n for n in commits.recorded_names(directory) if n.endswith(suffixes)}
    return sorted(present | recorded)


def _damage(uri: str) -> str | None:
    """What is wrong with a file that was committed once; None if it is whole or was
    never committed (never written, or written without its record)."""
    found = commits.problem(uri)
    return None if found in (None, "not written", "not recorded") else found


def _check_prepare(run: RunDir, problems: list[str]) -> None:
    if not storage.exists(run.marker("prepare")):
        return  # prepare runs anyway
    damaged = [f"{posixpath.basename(d)}/{n}: {why}"
               for d in (run.rows, run.download_list, run.documents)
               for n in _names(d, (".parquet",))
               if (why := commits.problem(storage.join(d, n)))]
    if damaged:
        problems += damaged
        storage.remove_tree(run.marker("prepare"))


def _shard_rows(run: RunDir, shard: str) -> set[str]:
    """The sample_ids of download shard ``shard``: those of download_list part ``shard``
    (one list part becomes one img2dataset shard, numbered alike)."""
    part = storage.join(run.download_list, f"part-{int(shard):05d}.parquet")
    if not storage.exists(part):
        return set()
    return set(storage.read_parquet([part], columns=["sample_id"]).column("sample_id").to_pylist())


def _check_downloads(run: RunDir, problems: list[str]) -> set[str]:
    """Remove download shards that are not committed and whole; returns their sample_ids."""
    shards = {n[: -len(_STATS)] if n.endswith(_STATS) else n[: -len(".parquet")]
              for n in _names(run.downloaded, (".parquet", _STATS))}
    redo: set[str] = set()
    for shard in sorted(shards):
        uris = [storage.join(run.downloaded, shard + s) for s in (".parquet", _STATS)]
        found = [commits.problem(u) for u in uris]
        if all(f is None for f in found) or all(f == "not written" for f in found):
            continue
        problems += [f"downloaded/{posixpath.basename(u)}: {why}" for u in uris if (why := _damage(u))]
        for uri in uris:
            commits.forget(uri)
        redo.add(shard)
    if redo:
        storage.remove_tree(run.marker("download"))
    return set().union(*(_shard_rows(run, shard) for shard in redo)) if redo else set()


def _check_scored(run: RunDir, stale_rows: set[str], problems: list[str]) -> None:
    for name in _names(run.scored, (".parquet",)):
        uri = storage.join(run.scored, name)
        found = commits.problem(uri)
        if found == "not written":
            continue
        if found is not None:
            if (why := _damage(uri)) is not None:
                problems.append(f"scored/{name}: {why}")
            commits.forget(uri)
            continue
        if stale_rows:
            ids = storage.read_parquet([uri], columns=["sample_id"]).column("sample_id")
            if pc.any(pc.is_in(ids, value_set=pa.array(sorted(stale_rows), pa.string()))).as_py():
                commits.forget(uri)  # scored from a download that is done again: score it again


def _adopt(run: RunDir) -> int:
    """A run started before commit records existed: record its committed files as they
    are now (complete download shards only), once. Returns how many were recorded."""
    uris = [u for d in (run.rows, run.download_list, run.documents, run.scored) for u in storage.list_files(d, ".parquet")]
    for stats in storage.list_files(run.downloaded, _STATS):
        uris += [stats, stats[: -len(_STATS)] + ".parquet"]
    for uri in uris:
        if storage.exists(uri):
            commits.record(uri)
    return len(uris)


def verify_run(run: RunDir) -> list[str]:
    """Check a run directory before resuming it; remove what is missing or damaged (and
    what was derived from it) so that its step does it again. Returns a line per damaged
    file, for the log; empty for a fresh or intact run."""
    if not storage.exists(run.config):
        return []  # a fresh run: nothing to check
    if not storage.exists(storage.join(run.root, commits.RECORDS)):
        count = _adopt(run)
        return [f"(started by an earlier curate: {count} committed files recorded as they are now)"] if count else []
    problems: list[str] = []
    _check_prepare(run, problems)
    stale = _check_downloads(run, problems)
    _check_scored(run, stale, problems)
    return problems
