"""Step 4: decide every row and write the manifest, per partition of sample_ids, as Ray tasks.

A partition is a run of consecutive input parts (curate.pipeline.prepare), about
``manifest.partition_rows`` rows: its sample_ids are a contiguous range, so it reads only its
own RUN/rows/ parts and the RUN/scored/ parts of its own download shards. Four phases:

A. ``decide``: a task per partition runs the generated decision (curate.flow.decision: image
   rules, the kind's units) in its own DuckDB and writes the decided rows and, per global
   stage, the candidates it must see (RUN/_decide/).
G. each global stage (dedupe) finds what it finds over every partition's candidates, as Ray
   tasks (curate.stages.dedupe_stage.DedupeStage.find_partitioned), one file per partition.
B. ``finish``: a task per partition applies the global stages' rules and writes its manifest
   part(s) (the kind's layout), returning its counts.
C. ``shards``: with every partition's kept count, the driver numbers output shards in
   sample_id order (as one process would); a task per manifest part writes them in.

The driver holds partitions, counts and digests: nothing that grows with the rows. (The one
exception is the dedupe stage's near-duplicate pairs, resolved on the driver: they grow with
the duplicates found, not with the rows.) No model runs, so ``curate refilter`` re-decides a
finished run by running this step again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.core import storage
from curate.core.progress import Progress
from curate.core.rundir import RunDir
from curate.flow.decision import PartitionFiles, apply_globals, candidates_sql, decide_units, followed, open_views
from curate.flow.plan import Plan
from curate.pipeline import calibration, quantiles
from curate.pipeline.passes import RETRY_PREFIX, load_prepared, shards_by_part
from curate.schemas.status import Status

TASK_CPUS = 0.5
BATCH_ROWS = 10_000  # rows streamed from DuckDB to Parquet at a time
STAGED = "_decide"  # RUN/_decide/: what the phases hand each other; removed when the step ends


@dataclass(frozen=True)
class Partition:
    """Input parts ``parts`` (``FFFFF-SSSS`` names, consecutive) and the download shards their
    rows went to; ``rows``: input rows (images, for documents)."""

    index: int
    parts: tuple[str, ...]
    shards: tuple[str, ...]
    rows: int

    @property
    def name(self) -> str:
        return f"{self.index:05d}"

    def files(self, run: RunDir) -> PartitionFiles:
        """The partition's files: listed by the task that reads them, never by the driver."""
        scored = [uri for shard in self.shards for uri in storage.list_files(storage.join(run.scored, shard), ".parquet")]
        return PartitionFiles(
            tuple(storage.join(run.rows, f"part-{p}.parquet") for p in self.parts),
            tuple(scored),
            tuple(uri for p in self.parts if storage.exists(uri := storage.join(run.documents, f"part-{p}.parquet"))),
        )


def plan_partitions(prepared: dict, partition_rows: int) -> list[Partition]:
    """Consecutive input parts grouped into partitions of about ``partition_rows`` rows.

    ``prepared``: the prepare step's result (its parts, in sample_id order, with their rows and
    download-list parts) and, with ``retries``, the `curate retry` passes (curate.pipeline.passes).
    A download shard is a download-list part (at most one shard each), its number the part's
    position among all of its pass's parts in name order, as img2dataset numbers them."""
    parts = sorted(prepared["parts"], key=lambda p: p["part"])
    shards = shards_by_part(prepared)
    out, group, rows = [], [], 0
    for part in parts:
        group.append(part)
        rows += part["rows"]
        if rows >= partition_rows:
            out.append(_partition(len(out), group, rows, shards))
            group, rows = [], 0
    if group or not out:
        out.append(_partition(len(out), group, rows, shards))
    return out


def _partition(index: int, parts: list[dict], rows: int, shards: dict[str, list[str]]) -> Partition:
    return Partition(index, tuple(p["part"] for p in parts), tuple(s for p in parts for s in shards[p["part"]]), rows)


@dataclass(frozen=True)
class Outputs:
    """Where the manifest parts go (RUN/manifest/ and, documents, RUN/manifest_images/), and
    the staging folder of the phases."""

    manifest: str
    manifest_images: str
    staged: str

    @classmethod
    def of(cls, run: RunDir) -> "Outputs":
        return cls(run.manifest, run.manifest_images, storage.join(run.root, STAGED))

    def decided(self, partition: str) -> str:
        return storage.join(self.staged, "decided", f"part-{partition}.parquet")

    def candidates(self, key: str, partition: str) -> str:
        return storage.join(self.staged, key, "candidates", f"part-{partition}.parquet")

    def found(self, key: str, partition: str) -> str:
        return storage.join(self.staged, key, "found", f"part-{partition}.parquet")


# -- the phases, as Ray tasks ------------------------------------------------------------------


def _timed(phase):
    """``phase`` returning its own duration as ``seconds`` (benchmarks: work done in tasks)."""

    def run(*args):
        started = time.perf_counter()
        result = phase(*args)
        result["seconds"] = round(time.perf_counter() - started, 3)
        return result

    run.__name__ = phase.__name__
    return run


def _phase_decide(plan: Plan, run: RunDir, partition: Partition, out: Outputs) -> dict:
    from curate.core import duck

    con = open_views(run.root, plan, partition.files(run))
    try:
        decide_units(con, plan)
        duck.stream_to_parquet(con, "SELECT * FROM decided ORDER BY sample_id", out.decided(partition.name))
        candidates = {}
        for stage in plan.globals:
            candidates[stage.key] = duck.stream_to_parquet(con, candidates_sql(stage), out.candidates(stage.key, partition.name))
    finally:
        con.close()
    return {"partition": partition.name, "candidates": candidates}


def _phase_finish(plan: Plan, run: RunDir, partition: Partition, out: Outputs) -> dict:
    from curate.core import duck

    files = partition.files(run)
    con = open_views(run.root, plan, files)
    try:
        con.execute(f"CREATE OR REPLACE VIEW decided AS SELECT * FROM read_parquet({duck.sql_string(out.decided(partition.name))})")
        found = {}
        for stage in plan.globals:
            uri = out.found(stage.key, partition.name)
            empty = pa.schema([("sample_id", pa.string())] + list(stage.writes))
            duck.create_parquet_view(con, f"{stage.key}_found", [uri] if storage.exists(uri) else [], empty)
            found[stage.key] = f"{stage.key}_found"
        apply_globals(con, plan, found)
        result = plan.kind.write_partition(con, plan, partition.name, files, out)
        result["retried"] = _retried_counts(con, plan.kind.image_manifest_parts(result, out))
        for stage in plan.globals:
            stage.partition_done(con, plan, storage.join(out.staged, stage.key), partition.name)
    finally:
        con.close()
    return result


def _retried_counts(con, image_parts: list[str]) -> dict[str, int]:
    """Image rows of the written manifest parts whose latest download came from a `curate
    retry` pass, per (pass, status, reason code): what each pass recovered, for the summary.
    Keys are JSON lists."""
    from curate.core import duck

    if not image_parts:
        return {}
    retry_pass = f"TRY_CAST(regexp_extract(download_shard, '^{RETRY_PREFIX}(\\d+)/', 1) AS INTEGER)"
    rows = con.execute(f"""
        SELECT {retry_pass} AS retry_pass, status, split_part(reason, ':', 1), count(*)
        FROM read_parquet({duck.sql_list(image_parts)}) WHERE {retry_pass} IS NOT NULL GROUP BY ALL
    """).fetchall()
    return {json.dumps([number, status, code]): n for number, status, code, n in rows}


def _phase_shards(uri: str, offset: int, per_shard: int) -> dict:
    """Number the kept rows of one manifest part from ``offset`` (global, in sample_id order):
    output shard ``NNNNN`` = (offset + rank) // per_shard. Returns shard counts, the part's
    digest and, per shard, the digest of its rows in this part."""
    fs, path = storage.fs_and_path(uri)
    table = pq.read_table(path, filesystem=fs)
    kept = pc.equal(table.column("status"), Status.KEPT.value).to_numpy(zero_copy_only=False)
    rank = kept.cumsum() - 1
    shards = [f"{(offset + r) // per_shard:05d}" if k else None for k, r in zip(kept, rank)]
    table = table.set_column(table.schema.get_field_index("output_shard"), "output_shard", pa.array(shards, pa.string()))
    storage.write_parquet(uri, table, BATCH_ROWS)
    return {"uri": uri, "shards": dict(Counter(s for s in shards if s is not None)),
            "digest": hashlib.sha256(fs.cat_file(path)).hexdigest(), "shard_digests": _rows_digests(table)}


def _rows_digests(table: pa.Table) -> dict[str, str]:
    """Per output shard: sha256 of its manifest rows here (Arrow IPC), which say everything its
    files hold (the record, and where its image bytes are). Equal rows give equal digests, so
    the output step rewrites only shards whose rows changed (a retry, an extend, a refilter)."""
    shard_column = table.column("output_shard")
    out = {}
    for name in pc.unique(shard_column.drop_null()).to_pylist():
        rows = table.filter(pc.equal(shard_column, name)).combine_chunks()
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, rows.schema) as writer:
            writer.write_table(rows)
        out[name] = hashlib.sha256(sink.getvalue()).hexdigest()
    return out


# -- the step ----------------------------------------------------------------------------------


@dataclass
class Decided:
    """What the driver keeps of the step: counts per status and reason (the summary's),
    kept units per output shard and the manifest parts that hold them, and the manifest's
    digest (of its parts' digests)."""

    counts: dict
    shard_counts: dict[str, int]
    shard_parts: dict[str, list[str]]
    digest: str
    task_seconds: dict[str, float]  # per phase, summed over its tasks (benchmarks)
    partitions: int
    thresholds: dict  # keep fractions and auto thresholds resolved (curate.pipeline.quantiles, .calibration)
    shard_digests: dict[str, str] = field(default_factory=dict)  # output shard -> digest of its manifest rows


def decide_run(plan: Plan, run: RunDir, prepared: dict, progress: Progress | None = None,
               out: Outputs | None = None) -> Decided:
    """Phases A, G, B and C over every partition; ``out`` (default: the run's own folders)."""
    import ray

    out = out or Outputs.of(run)
    for folder in (out.staged, out.manifest, out.manifest_images):
        storage.remove_tree(folder)
    partitions = plan_partitions(prepared, plan.cfg.manifest.partition_rows)
    plan, thresholds = quantiles.resolve(plan, run, partitions)  # keep_fraction -> its threshold
    plan, calibrated = calibration.resolve(plan, run, partitions)  # auto -> calibrated against the other judges
    thresholds = {**thresholds, **calibrated}
    task = lambda fn: ray.remote(num_cpus=TASK_CPUS)(fn)  # noqa: E731
    decided = ray.get([task(_timed(_phase_decide)).remote(plan, run, p, out) for p in partitions])
    for stage in plan.globals:
        candidates = {d["partition"]: out.candidates(stage.key, d["partition"]) for d in decided}
        total = sum(d["candidates"][stage.key] for d in decided)
        staged = storage.join(out.staged, stage.key)
        with followed(progress, stage.key, total) as advance:
            stage.find_partitioned(candidates, staged, lambda p, key=stage.key: out.found(key, p), advance)
    finished = ray.get([task(_timed(_phase_finish)).remote(plan, run, p, out) for p in partitions])
    if not any(result["manifest"] for result in finished):  # no input row at all: still a readable manifest
        storage.write_parquet(storage.join(out.manifest, "part-00000.parquet"), plan.kind.manifest_schema(plan).empty_table())
    if out == Outputs.of(run):  # a preview keeps nothing of its own
        for stage in plan.globals:
            stage.run_done(storage.join(out.staged, stage.key), run)
    parts = [part for result in finished for part in result["manifest"]]
    offsets, kept = [], 0
    for part in parts:
        offsets.append(kept)
        kept += part["kept"]
    per_shard = plan.cfg.output.samples_per_shard
    sharded = ray.get([task(_timed(_phase_shards)).remote(p["uri"], o, per_shard) for p, o in zip(parts, offsets)])
    storage.remove_tree(out.staged)
    shard_counts: Counter = Counter()
    shard_parts: dict[str, list[str]] = {}
    row_digests: dict[str, list[str]] = {}
    for s in sorted(sharded, key=lambda s: s["uri"]):
        shard_counts.update(s["shards"])
        for shard in s["shards"]:
            shard_parts.setdefault(shard, []).append(s["uri"])
            row_digests.setdefault(shard, []).append(s["shard_digests"][shard])
    shard_digests = {name: hashlib.sha256("".join(d).encode()).hexdigest() for name, d in sorted(row_digests.items())}
    digest = hashlib.sha256("".join(s["digest"] for s in sorted(sharded, key=lambda s: s["uri"])).encode()).hexdigest()
    seconds = {"decide": sum(d["seconds"] for d in decided), "finish": sum(f["seconds"] for f in finished),
               "shards": sum(s["seconds"] for s in sharded)}
    return Decided(_merge_counts(finished), dict(sorted(shard_counts.items())), shard_parts, digest,
                   {k: round(v, 3) for k, v in seconds.items()}, len(partitions), thresholds, shard_digests)


def _merge_counts(finished: list[dict]) -> dict:
    statuses, reasons, extra, retried = Counter(), Counter(), {}, Counter()
    for result in finished:
        retried.update({tuple(json.loads(k)): n for k, n in result.get("retried", {}).items()})
        statuses.update(result["statuses"])
        reasons.update({tuple(json.loads(k)): n for k, n in result["reasons"].items()})
        for name, values in result.get("extra", {}).items():
            extra.setdefault(name, Counter()).update(values)
    return {"statuses": dict(statuses), "reasons": dict(reasons), "extra": {k: dict(v) for k, v in extra.items()},
            "retried": dict(retried)}


PREVIEW = "_preview"


def preview(plan: Plan, run: RunDir) -> dict[str, pa.Table]:
    """The manifest tables ``plan`` would give for a scored run (``manifest``; a documents run
    also ``manifest_images``), decided as a run decides, in a scratch folder of the run that
    is removed again: the run's own manifest is untouched."""
    root = storage.join(run.root, PREVIEW)
    out = Outputs(storage.join(root, "manifest"), storage.join(root, "manifest_images"), storage.join(root, STAGED))
    try:
        decide_run(plan, run, load_prepared(run), out=out)
        tables = {"manifest": storage.read_parquet(storage.list_files(out.manifest, ".parquet"))}
        images = storage.list_files(out.manifest_images, ".parquet")
        if images:
            tables["manifest_images"] = storage.read_parquet(images)
        return tables
    finally:
        storage.remove_tree(root)
