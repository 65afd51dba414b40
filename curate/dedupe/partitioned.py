"""Dedupe over partitioned candidates: Ray tasks read and write files, the driver plans.

The input is one Parquet file of candidates per partition of sample_ids (``sample_id``,
``exact_key``, ``score`` and the columns the near searches need). Three steps:

1. **Exact groups by a hash shuffle** (:func:`shuffle_exact`): each partition's rows go to
   bucket ``hash(exact_key) % B``; one task per bucket groups equal keys and picks each
   group's representative, its best copy (:func:`curate.dedupe.choose_survivors`: the highest
   score, then the smallest sample_id). A placeholder image copied 100,000 times is one
   representative: it never reaches a near search.
2. **Near search over the representatives** (the caller's ``search``: it sees only
   representatives, whose score is their group's best) returns, per duplicated
   representative, its survivor and the kind of match.
3. **Verdicts per partition** (:func:`write_verdicts`): every row -> the survivor of its
   representative's group (``duplicate_kind`` ``exact`` where it shares its key with another
   row, else the kind the search found), one file per partition.

The survivor of a group of exact and near copies is the same as with everything in one
array: a representative scores at least as high as every copy it stands for, so the best
representative of a near-duplicate group is the best row of the whole group.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.core import storage
from curate.dedupe.exact import exact_groups, is_null
from curate.dedupe.survivors import choose_survivors

TASK_CPUS = 0.5
VERDICTS = pa.schema([("sample_id", pa.string()), ("duplicate_of", pa.string()), ("duplicate_kind", pa.string())])
GROUPS = pa.schema([("sample_id", pa.string()), ("rep_id", pa.string()), ("group_size", pa.int64())])


def bucket_of(key: str, buckets: int) -> int:
    """A stable bucket of a key (blake2b: the same in every process and every run)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little") % buckets


def _split_by_bucket(candidates_uri: str, partition: str, work: str, buckets: int) -> int:
    """Ray task: one partition's (sample_id, exact_key, score) into one file per bucket."""
    table = storage.read_parquet([candidates_uri], columns=["sample_id", "exact_key", "score"])
    keys, ids = table.column("exact_key").to_pylist(), table.column("sample_id").to_pylist()
    # A row without a key is a group of its own: any bucket holds it (its sample_id picks one).
    where = np.array([bucket_of(i if is_null(k) else k, buckets) for k, i in zip(keys, ids)], np.int64)
    table = table.append_column("partition", pa.array([partition] * table.num_rows, pa.string()))
    for b in np.unique(where):
        part = table.filter(pa.array(where == b))
        storage.write_parquet(storage.join(work, "exact_in", f"b={b:05d}", f"part-{partition}.parquet"), part)
    return table.num_rows


def _group_bucket(bucket_dir: str, work: str, keep: str) -> dict[str, int]:
    """Ray task: the exact groups of one bucket -> per partition, (sample_id, rep_id, group_size).
    Returns the rows that are copies (not representatives) per partition."""
    files = storage.list_files(bucket_dir, ".parquet")
    table = storage.read_parquet(files).sort_by("sample_id")
    ids = table.column("sample_id").to_pylist()
    labels = exact_groups(table.column("exact_key").to_pylist())
    scores = table.column("score").to_numpy(zero_copy_only=False).astype(np.float64) if keep != "first" else None
    duplicate_of = choose_survivors(ids, labels, scores, keep)
    rep = [d if d is not None else i for i, d in zip(ids, duplicate_of)]
    sizes = np.bincount(labels, minlength=len(ids))[labels]
    groups = pa.table({"sample_id": ids, "rep_id": rep, "group_size": sizes.astype(np.int64)}, schema=GROUPS)
    copies: dict[str, int] = {}
    bucket = bucket_dir.rstrip("/").rsplit("/", 1)[-1]
    partitions = table.column("partition")
    for p in pc.unique(partitions).to_pylist():
        mine = groups.filter(pc.equal(partitions, p))
        storage.write_parquet(storage.join(work, "exact_out", f"part-{p}", f"{bucket}.parquet"), mine)
        copies[p] = int(pc.sum(pc.not_equal(mine.column("sample_id"), mine.column("rep_id"))).as_py() or 0)
    return copies


def _groups_of(partition: str, work: str) -> pa.Table:
    """(sample_id, rep_id, group_size) of a partition's rows (none for a partition without candidates)."""
    files = storage.list_files(storage.join(work, "exact_out", f"part-{partition}"), ".parquet")
    return storage.read_parquet(files) if files else GROUPS.empty_table()


def _representatives(candidates_uri: str, partition: str, work: str) -> int:
    """Ray task: the partition's representatives with every candidate column -> ``reps/``."""
    groups = _groups_of(partition, work)
    reps = groups.filter(pc.equal(groups.column("sample_id"), groups.column("rep_id"))).column("sample_id")
    table = storage.read_parquet([candidates_uri], filters=pc.field("sample_id").isin(reps.combine_chunks()))
    storage.write_parquet(storage.join(work, "reps", f"part-{partition}.parquet"), table.sort_by("sample_id"))
    return table.num_rows


def shuffle_exact(candidates: dict[str, str], work: str, keep: str, buckets: int) -> tuple[list[str], int]:
    """Steps 1 and the representatives' files: ``candidates`` maps partition name -> its
    candidates file. Returns (the ``reps/`` files, how many rows are copies of a representative)."""
    import ray

    split = ray.remote(num_cpus=TASK_CPUS)(_split_by_bucket)
    ray.get([split.remote(uri, p, work, buckets) for p, uri in candidates.items()])
    group = ray.remote(num_cpus=TASK_CPUS)(_group_bucket)
    dirs = sorted({uri.rsplit("/", 1)[0] for uri in storage.list_files(storage.join(work, "exact_in"), ".parquet",
                                                                            recursive=True)})
    copies = sum(sum(c.values()) for c in ray.get([group.remote(d, work, keep) for d in dirs]))
    reps = ray.remote(num_cpus=TASK_CPUS)(_representatives)
    ray.get([reps.remote(uri, p, work) for p, uri in candidates.items()])
    return storage.list_files(storage.join(work, "reps"), ".parquet"), copies


def _verdicts(partition: str, work: str, resolved: pa.Table, out_uri: str) -> int:
    """Ray task: every row of the partition -> its representative's survivor."""
    groups = _groups_of(partition, work)
    survivor = dict(zip(resolved.column("rep_id").to_pylist(), resolved.column("survivor").to_pylist()))
    kind_of = dict(zip(resolved.column("rep_id").to_pylist(), resolved.column("kind").to_pylist()))
    rows = []
    for sample_id, rep, size in zip(*(groups.column(c).to_pylist() for c in ("sample_id", "rep_id", "group_size"))):
        final = survivor.get(rep, rep)  # a representative no search matched survives its own group
        if final != sample_id:
            rows.append((sample_id, final, "exact" if size > 1 else kind_of[rep]))
    rows.sort()
    table = pa.table({name: [r[i] for r in rows] for i, name in enumerate(VERDICTS.names)}, schema=VERDICTS)
    storage.write_parquet(out_uri, table)
    return table.num_rows


def write_verdicts(partitions: list[str], work: str, resolved: pa.Table, out: Callable[[str], str]) -> dict[str, int]:
    """Step 3: ``resolved`` (rep_id, survivor, kind) of the duplicated representatives ->
    one verdicts file per partition at ``out(partition)``; returns duplicates per partition."""
    import ray

    task = ray.remote(num_cpus=TASK_CPUS)(_verdicts)
    shared = ray.put(resolved)
    counts = ray.get([task.remote(p, work, shared, out(p)) for p in partitions])
    return dict(zip(partitions, counts))
