"""Step 3: run the batch stages over the downloaded shards on Ray Data, committing per batch.

The dataset reads committed download shards, runs every enabled batch stage of the plan in
order (light stages as tasks, model stages as actor pools), and ends in a writer that
commits every batch to ``RUN/scored/`` under a name derived from its sample_ids (temp name,
then rename). The committed sample_ids are the resume state: a restarted run skips shards
whose rows are all committed and filters the rows already done from the others. A batch
written twice (a task retried after its write) lands under the same name or is
deduplicated by sample_id when the manifest is built, so no row is ever counted twice.

Rows rejected by a gating stage's rules (the image rules) are marked not live (``_live``):
model stages skip them (curate.stages.base.BatchStage.todo).
"""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.compute as pc

from curate.core import commits, storage
from curate.core.progress import RowCounter, stage_counts_dir
from curate.core.rundir import RunDir
from curate.flow.plan import Plan
from curate.schemas.columns import NOT_STORED
from curate.stages.base import BatchStage

# Light tasks take a fraction of a CPU so they always fit beside the model actors
# (a 2-core machine otherwise deadlocks: actors hold every CPU, reads never run).
TASK_CPUS = 0.5
ACTOR_TASK_RETRIES = 3


def _read_shards(batch: pa.Table) -> pa.Table:
    return storage.read_parquet(batch.column("path").to_pylist())


def _skip_done(batch: pa.Table, done: frozenset[str]) -> pa.Table:
    if not done:
        return batch
    mask = pc.invert(pc.is_in(batch.column("sample_id"), value_set=pa.array(sorted(done), pa.string())))
    return batch.filter(mask)


def mark_live(batch: pa.Table, stage: BatchStage) -> pa.Table:
    """``_live``: downloaded, and no image rule of ``stage`` (a gating stage) rejects it."""
    import duckdb

    rejected = " OR ".join(f"({rule.when})" for rule in stage.rules() if rule.scope == "image") or "false"
    con = duckdb.connect()
    try:
        con.register("batch", batch.select([c for c in batch.column_names if c != stage.image_col]))
        live = con.execute(
            f"SELECT download_reason IS NULL AND NOT coalesce({rejected}, false) AS live FROM batch"
        ).arrow().read_all().column("live")
    finally:
        con.close()
    images = batch.column(stage.image_col)
    live = pc.and_(live, pc.fill_null(pc.greater(pc.binary_length(images), 0), False))
    if "_live" in batch.column_names:
        return batch.set_column(batch.column_names.index("_live"), "_live", pc.and_(batch.column("_live"), live))
    return batch.append_column("_live", live)


def run_light(batch: pa.Table, stage: BatchStage) -> pa.Table:
    """A light stage as a Ray Data task (no model: its setup is cheap, done per task)."""
    stage.setup()
    out = stage(batch)
    return mark_live(out, stage) if stage.gates else out


class StageActor:
    """A model stage in a Ray Data actor pool: ``setup()`` once per actor, then batches. It
    counts the rows it finishes into ``counts_dir`` (progress per stage)."""

    def __init__(self, stage: BatchStage, counts_dir: str):
        self.stage = stage
        stage.setup()
        self.counter = RowCounter(counts_dir)

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = self.stage(batch)
        out = mark_live(out, self.stage) if self.stage.gates else out
        self.counter.add(batch.num_rows)
        return out

    def __del__(self):
        # Ray Data calls this when it shuts the pool down gracefully: write the rows
        # counted since the last flush. Best effort: progress must never fail a run.
        try:
            self.counter.flush()
        except Exception:  # noqa: BLE001
            pass


def actor_class(stage: BatchStage) -> type:
    """StageActor named after the stage's class (``ClipStage``), so that Ray Data's logs and
    the workers' process titles name the pool after its model."""
    return type(type(stage).__name__, (StageActor,), {"__module__": StageActor.__module__})


def actor_pool_args(stage: BatchStage) -> dict:
    """map_batches arguments for a model stage: a fixed pool, GPUs when the cluster has them."""
    import ray
    import ray.data

    cfg = stage.compute
    num_gpus = cfg.num_gpus
    if num_gpus is None:
        num_gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
    return {
        "compute": ray.data.ActorPoolStrategy(size=cfg.actors),
        "batch_size": cfg.batch_size,
        "batch_format": "pyarrow",
        "num_cpus": cfg.num_cpus,
        "num_gpus": num_gpus,
        # A killed actor (OOM, node loss, SIGKILL) is restarted and its batch re-run; the
        # writer commits by sample_id, so a re-run batch never counts twice. Bounded task
        # retries: a batch that kills its actor every time stops the run instead of looping.
        "max_restarts": -1,
        "max_task_retries": ACTOR_TASK_RETRIES,
    }


def _receipt(rows: list[int], errors: list[str | None]) -> pa.Table:
    return pa.table({"rows": pa.array(rows, pa.int64()), "error": pa.array(errors, pa.string())})


def write_scored(batch: pa.Table, scored_dir: str, image_col: str) -> pa.Table:
    """Commit a batch (minus the image bytes) to RUN/scored/; return a one-row receipt.

    A failed commit (disk full, a bucket refusing writes) comes back as the receipt's
    ``error``, and ``run_score`` raises it: an exception raised here would reach the driver
    as Ray Data's ``UserCodeException``, which loses its cause on the way, so the run could
    not tell a write error (stop cleanly, resume later) from a bug.
    """
    if batch.num_rows == 0:
        return _receipt([], [])
    table = batch.drop_columns([c for c in (image_col, *NOT_STORED) if c in batch.column_names])
    ids = table.column("sample_id").to_pylist()
    digest = hashlib.sha1("\n".join(sorted(ids)).encode()).hexdigest()[:12]
    try:
        commits.write_parquet(storage.join(scored_dir, f"part-{min(ids)}-{digest}.parquet"), table)  # + its record
    except storage.WriteError as error:
        return _receipt([0], [str(error)])
    return _receipt([table.num_rows], [None])


def committed_ids(run: RunDir) -> set[str]:
    files = storage.list_files(run.scored, ".parquet")
    if not files:
        return set()
    return set(storage.read_parquet(files, columns=["sample_id"]).column("sample_id").to_pylist())


def plan_shards(shards: list[str], done: set[str]) -> tuple[list[str], frozenset[str]]:
    """Which shards still have work, and which of their rows are already committed."""
    pending, partial_done = [], set()
    for shard in shards:
        ids = set(storage.read_parquet([shard], columns=["sample_id"]).column("sample_id").to_pylist())
        already = ids & done
        if len(already) < len(ids):
            pending.append(shard)
            partial_done |= already
    return pending, frozenset(partial_done)


def build_dataset(plan: Plan, run: RunDir, shards: list[str], skip: frozenset[str]):
    import ray.data

    # Not ray.data.read_parquet: in Ray 2.60 it lists files in a task that reserves a whole
    # CPU, which can't be placed once the actor pools hold the rest of a small machine, and
    # the pipeline deadlocks. One block per shard path, read by a light task, never blocks.
    ds = ray.data.from_items([{"path": shard} for shard in shards], override_num_blocks=max(1, len(shards)))
    ds = ds.map_batches(_read_shards, batch_format="pyarrow", batch_size=None, num_cpus=TASK_CPUS)
    if skip:
        ds = ds.map_batches(_skip_done, fn_kwargs={"done": skip}, batch_format="pyarrow", batch_size=None,
                            num_cpus=TASK_CPUS)
    for stage in plan.batch:
        if stage.uses_model:
            ds = ds.map_batches(actor_class(stage), fn_constructor_kwargs={
                "stage": stage, "counts_dir": stage_counts_dir(run, stage.key)}, **actor_pool_args(stage))
        else:
            ds = ds.map_batches(run_light, fn_kwargs={"stage": stage}, batch_format="pyarrow", batch_size=None,
                                num_cpus=TASK_CPUS)
    return ds.map_batches(
        write_scored, fn_kwargs={"scored_dir": run.scored, "image_col": plan.cfg.download.encode_format},
        batch_format="pyarrow", batch_size=None, num_cpus=TASK_CPUS,
    )


def run_score(plan: Plan, run: RunDir, shards: list[str]) -> int:
    """Score every uncommitted row of ``shards``; returns the number of rows committed now."""
    storage.remove_temporaries(run.scored)
    pending, skip = plan_shards(shards, committed_ids(run))
    if not pending:
        return 0
    ds = build_dataset(plan, run, pending, skip)
    committed = 0
    for receipt in ds.iter_rows():
        if receipt["error"]:
            raise storage.WriteError(receipt["error"])  # leaving the loop stops the dataset's tasks
        committed += receipt["rows"]
    return committed
