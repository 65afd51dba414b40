"""Step 5: write the training shards from the manifest's kept rows.

Shard ``NNNNN`` holds the kept units (pairs, documents) whose manifest ``output_shard`` is
``NNNNN``, in sample_id order, as ``NNNNN.tar`` (WebDataset) and/or ``NNNNN.parquet``; the
run's kind writes them (curate.flow.pairs, curate.flow.documents). Each shard is written by
one Ray task and committed by rename. ``index.json`` (shard names and counts) is written
last and records the manifest digest: a resumed run re-uses shards written for the same
manifest, and a refilter (another manifest) replaces them.
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.compute as pc

from curate.core import commits, storage
from curate.core.rundir import RunDir
from curate.flow.kind import Kind
from curate.flow.plan import Plan
from curate.flow.shards import SUFFIX


def manifest_digest(run: RunDir) -> str:
    digest = hashlib.sha256()
    for uri in storage.list_files(run.manifest, ".parquet"):
        fs, path = storage.fs_and_path(uri)
        digest.update(fs.cat_file(path))
    return digest.hexdigest()


def shard_done(out_dir: str, name: str, formats: list[str]) -> bool:
    """A shard is done when every one of its files is committed and matches its commit
    record (curate.core.commits): a file deleted, truncated or rewritten since is written
    again."""
    return all(commits.problem(storage.join(out_dir, name + SUFFIX[f])) is None for f in formats)


def _reset_if_other_manifest(run: RunDir, digest: str) -> None:
    marker = storage.join(run.output, "_manifest_digest")
    if not storage.exists(marker) or storage.read_text(marker) != digest:
        commits.remove_tree(run.output)
        storage.write_text(marker, digest)
    storage.remove_temporaries(run.output)


def shard_counts(run: RunDir) -> dict[str, int]:
    """Output shard name -> kept samples, reading only the manifest's ``output_shard`` column:
    the driver never holds the kept rows themselves."""
    files = storage.list_files(run.manifest, ".parquet")
    shards = storage.read_parquet(files, columns=["output_shard"]).column("output_shard") if files else pa.array([])
    counts = pc.value_counts(pc.drop_null(shards)).to_pylist() if len(shards) else []
    return {c["values"]: c["counts"] for c in sorted(counts, key=lambda c: c["values"])}


def _write_from_manifest(kind: Kind, manifest_files: list[str], name: str, out_dir: str, downloaded_dir: str) -> int:
    """Ray task: read this shard's kept rows from the manifest (row groups of other shards are
    skipped by their statistics: shards follow sample_id order) and write the shard."""
    rows = storage.read_parquet(manifest_files, filters=pc.field("output_shard") == name)
    return kind.write_shard(rows.sort_by("sample_id"), name, out_dir, downloaded_dir)


def write_output(plan: Plan, run: RunDir, counts: dict[str, int], on_shard=None) -> dict:
    """Write every output shard of the manifest's kept rows (``counts``: ``shard_counts(run)``),
    then the index."""
    import ray

    cfg = plan.cfg
    digest = manifest_digest(run)
    _reset_if_other_manifest(run, digest)
    remote = ray.remote(num_cpus=0.5)(_write_from_manifest)
    files = storage.list_files(run.manifest, ".parquet")
    names = list(counts)
    futures = {
        name: remote.remote(plan.kind, files, name, run.output, run.downloaded)
        for name in names if not shard_done(run.output, name, cfg.output.formats)
    }
    for name, future in futures.items():
        written = ray.get(future)
        if written != counts[name]:  # the manifest changed under us: never index a partial shard
            raise RuntimeError(f"output shard {name}: wrote {written} samples, the manifest has {counts[name]}")
        if on_shard:
            on_shard(counts[name])
    index = {
        "kind": cfg.input.kind,
        "formats": cfg.output.formats,
        "image_format": cfg.download.encode_format,
        "total": int(sum(counts.values())),
        "shards": [
            {"name": n, "count": counts[n], "files": [n + SUFFIX[f] for f in cfg.output.formats]} for n in names
        ],
        "manifest_digest": digest,
    }
    storage.write_text(storage.join(run.output, "index.json"), json.dumps(index, indent=2))
    return index
