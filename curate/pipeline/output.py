"""Step 5: write the training shards from the manifest's kept rows.

Shard ``NNNNN`` holds the kept units (pairs, documents) whose manifest ``output_shard`` is
``NNNNN``, in sample_id order, as ``NNNNN.tar`` (WebDataset) and/or ``NNNNN.parquet``; the
run's kind writes them (curate.flow.pairs, curate.flow.documents). Each shard is written by
one Ray task and committed by rename; then its digest (of the manifest rows it holds, and
the formats) is recorded in ``RUN/_done/output-shards/NNNNN``. A shard already written with
the same digest is kept as it is: a resumed run, or a `curate retry` / `--extend` / refilter
that changed other shards, rewrites only the shards whose content changes. Shards the new
manifest no longer has are removed. ``index.json`` (shard names and counts) is written last
and records the manifest digest.
"""

from __future__ import annotations

import hashlib
import json
import re

import pyarrow.compute as pc

from curate.core import commits, storage
from curate.core.rundir import RunDir
from curate.flow.kind import Kind
from curate.flow.plan import Plan
from curate.flow.shards import STATS_SUFFIX, SUFFIX
from curate.pipeline.decide import Decided

_SHARD_FILE = re.compile(r"(\d+)(\.tar|\.parquet|_stats\.json)$")


def shard_done(out_dir: str, name: str, formats: list[str]) -> bool:
    """A shard is done when every one of its files (its stats file last) is committed and
    matches its commit record (curate.core.commits): a file deleted, truncated or rewritten
    since is written again."""
    suffixes = [SUFFIX[f] for f in formats] + [STATS_SUFFIX]
    return all(commits.problem(storage.join(out_dir, name + suffix)) is None for suffix in suffixes)


def _digest_marker(run: RunDir, name: str) -> str:
    return storage.join(run.marker("output-shards"), name)


def _shard_digest(rows_digest: str, kind: str, formats: list[str]) -> str:
    return hashlib.sha256(json.dumps([rows_digest, kind, sorted(formats)]).encode()).hexdigest()


def _up_to_date(run: RunDir, name: str, digest: str, formats: list[str]) -> bool:
    marker = _digest_marker(run, name)
    return shard_done(run.output, name, formats) and storage.exists(marker) and storage.read_text(marker) == digest


def _start(run: RunDir, digest: str) -> None:
    """A new manifest: its index goes until every shard of it is written."""
    marker = storage.join(run.output, "_manifest_digest")
    if not storage.exists(marker) or storage.read_text(marker) != digest:
        for name in ("index.json", "sizes.json"):
            storage.remove_tree(storage.join(run.output, name))
        storage.write_text(marker, digest)
    storage.remove_temporaries(run.output)


def _remove_stale(run: RunDir, names: set[str], formats: list[str]) -> None:
    """Shard files of shards the manifest no longer has, or of formats no longer written."""
    wanted = {SUFFIX[f] for f in formats} | {STATS_SUFFIX}
    for uri in storage.list_files(run.output, ""):
        match = _SHARD_FILE.search(uri.rsplit("/", 1)[-1])
        if match and (match.group(1) not in names or match.group(2) not in wanted):
            commits.forget(uri)
    for uri in storage.list_files(run.marker("output-shards"), ""):
        if uri.rsplit("/", 1)[-1] not in names:
            storage.remove_tree(uri)


def _write_from_manifest(kind: Kind, manifest_files: list[str], name: str, out_dir: str, downloaded_dir: str) -> int:
    """Ray task: read this shard's kept rows from the manifest (row groups of other shards are
    skipped by their statistics: shards follow sample_id order) and write the shard."""
    rows = storage.read_parquet(manifest_files, filters=pc.field("output_shard") == name)
    return kind.write_shard(rows.sort_by("sample_id"), name, out_dir, downloaded_dir)


def build_index(kind: str, formats: list[str], image_format: str, counts: dict[str, int], digest: str) -> dict:
    """``output/index.json``: the shards and counts, and with WebDataset output a wids dataset
    description (``wids_version``, ``shardlist`` of tars relative to the index), so
    ``wids.ShardListDataset("RUN/output/index.json")`` opens the run's shards as they are."""
    index = {
        "kind": kind,
        "formats": formats,
        "image_format": image_format,
        "total": int(sum(counts.values())),
        "shards": [{"name": n, "count": c, "files": [n + SUFFIX[f] for f in formats] + [n + STATS_SUFFIX]}
                   for n, c in counts.items()],
        "manifest_digest": digest,
    }
    if "webdataset" in formats:
        index["wids_version"] = 1
        index["name"] = "curate"
        index["shardlist"] = [{"url": n + SUFFIX["webdataset"], "nsamples": c} for n, c in counts.items()]
    return index


def write_output(plan: Plan, run: RunDir, decided: Decided, on_shard=None) -> dict:
    """Write every output shard of the manifest's kept rows whose content changed or is
    missing (one Ray task each, reading only the manifest parts that hold its rows), then the
    index. ``decided``: what the decision step returned (shard counts, the manifest parts of
    each shard, the digests of the manifest and of each shard's rows)."""
    import ray

    cfg = plan.cfg
    formats = cfg.output.formats
    counts, digest = decided.shard_counts, decided.digest
    _start(run, digest)
    digests = {name: _shard_digest(decided.shard_digests.get(name, digest), cfg.input.kind, formats) for name in counts}
    remote = ray.remote(num_cpus=0.5)(_write_from_manifest)
    names = list(counts)
    todo = [name for name in names if not _up_to_date(run, name, digests[name], formats)]
    for name in todo:
        storage.remove_tree(_digest_marker(run, name))  # being rewritten: not up to date until its files are
    futures = {name: remote.remote(plan.kind, decided.shard_parts[name], name, run.output, run.downloaded)
               for name in todo}
    for name, future in futures.items():
        written = ray.get(future)
        if written != counts[name]:  # the manifest changed under us: never index a partial shard
            raise RuntimeError(f"output shard {name}: wrote {written} samples, the manifest has {counts[name]}")
        storage.write_text(_digest_marker(run, name), digests[name])
        if on_shard:
            on_shard(counts[name])
    _remove_stale(run, set(names), formats)
    index = build_index(cfg.input.kind, formats, cfg.download.encode_format, counts, digest)
    if "webdataset" in formats:
        # open_clip's loader (and DataComp's resharder) take the shard sizes from here.
        sizes = {n + SUFFIX["webdataset"]: counts[n] for n in names}
        storage.write_text(storage.join(run.output, "sizes.json"), json.dumps(sizes, indent=2))
    storage.write_text(storage.join(run.output, "index.json"), json.dumps(index, indent=2))
    return index
