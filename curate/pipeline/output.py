"""Step 5: write the training shards from the manifest's kept rows.

Shard ``NNNNN`` holds the kept units (pairs, documents) whose manifest ``output_shard`` is
``NNNNN``, in sample_id order, as ``NNNNN.tar`` (WebDataset) and/or ``NNNNN.parquet``; the
run's kind writes them (curate.flow.pairs, curate.flow.documents). Each shard is written by
one Ray task and committed by rename. ``index.json`` (shard names and counts) is written
last and records the manifest digest: a resumed run re-uses shards written for the same
manifest, and a refilter (another manifest) replaces them.
"""

from __future__ import annotations

import json

import pyarrow.compute as pc

from curate.core import commits, storage
from curate.core.rundir import RunDir
from curate.flow.kind import Kind
from curate.flow.plan import Plan
from curate.flow.shards import STATS_SUFFIX, SUFFIX
from curate.pipeline.decide import Decided


def shard_done(out_dir: str, name: str, formats: list[str]) -> bool:
    """A shard is done when every one of its files (its stats file last) is committed and
    matches its commit record (curate.core.commits): a file deleted, truncated or rewritten
    since is written again."""
    suffixes = [SUFFIX[f] for f in formats] + [STATS_SUFFIX]
    return all(commits.problem(storage.join(out_dir, name + suffix)) is None for suffix in suffixes)


def _reset_if_other_manifest(run: RunDir, digest: str) -> None:
    marker = storage.join(run.output, "_manifest_digest")
    if not storage.exists(marker) or storage.read_text(marker) != digest:
        commits.remove_tree(run.output)
        storage.write_text(marker, digest)
    storage.remove_temporaries(run.output)


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
    """Write every output shard of the manifest's kept rows (one Ray task each, reading only
    the manifest parts that hold its rows), then the index. ``decided``: what the decision
    step returned (shard counts, the manifest parts of each shard, the manifest's digest)."""
    import ray

    cfg = plan.cfg
    counts, digest = decided.shard_counts, decided.digest
    _reset_if_other_manifest(run, digest)
    remote = ray.remote(num_cpus=0.5)(_write_from_manifest)
    names = list(counts)
    futures = {
        name: remote.remote(plan.kind, decided.shard_parts[name], name, run.output, run.downloaded)
        for name in names if not shard_done(run.output, name, cfg.output.formats)
    }
    for name, future in futures.items():
        written = ray.get(future)
        if written != counts[name]:  # the manifest changed under us: never index a partial shard
            raise RuntimeError(f"output shard {name}: wrote {written} samples, the manifest has {counts[name]}")
        if on_shard:
            on_shard(counts[name])
    index = build_index(cfg.input.kind, cfg.output.formats, cfg.download.encode_format, counts, digest)
    if "webdataset" in cfg.output.formats:
        # open_clip's loader (and DataComp's resharder) take the shard sizes from here.
        sizes = {n + SUFFIX["webdataset"]: counts[n] for n in names}
        storage.write_text(storage.join(run.output, "sizes.json"), json.dumps(sizes, indent=2))
    storage.write_text(storage.join(run.output, "index.json"), json.dumps(index, indent=2))
    return index
