"""Step 3: run the batch stages over the downloaded shards on Ray Data, committing per batch.

The dataset reads committed download shards, runs every enabled batch stage of the plan in
order (light stages as tasks, model stages as actor pools), and ends in a writer that
commits every batch to ``RUN/scored/<download shard>/`` under a name derived from its
sample_ids (temp name, then rename). Resume state is per download shard: a shard is done
when its scored parts hold as many rows as the shard (Parquet footers, counted by Ray tasks,
not the driver); the read task of an unfinished shard drops the rows its own scored parts
already hold. A batch written twice (a task retried after its write) lands under the same
name or is deduplicated by sample_id when the manifest is built, so no row is ever counted
twice.

Rows rejected by a gating stage's rules (the image rules) are marked not live (``_live``):
model stages skip them (curate.stages.base.BatchStage.todo).
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings

import pyarrow as pa
import pyarrow.compute as pc

from curate.core import commits, storage
from curate.core.progress import RowCounter, stage_counts_dir
from curate.core.rundir import RunDir
from curate.flow.plan import Plan
from curate.pipeline.passes import RETRY_PREFIX
from curate.schemas.columns import NOT_STORED
from curate.stages.base import BatchStage

# Light tasks take a fraction of a CPU so they always fit beside the model actors
# (a 2-core machine otherwise deadlocks: actors hold every CPU, reads never run).
TASK_CPUS = 0.5
ACTOR_TASK_RETRIES = 3


def shard_name(shard_uri: str) -> str:
    """``NNNNN`` of ``RUN/downloaded/NNNNN.parquet``; ``retry-KK/NNNNN`` of a `curate retry`
    pass's ``RUN/downloaded/retry-KK/NNNNN.parquet`` (curate.pipeline.passes)."""
    parent, _, file = shard_uri.rpartition("/")
    folder = parent.rpartition("/")[2]
    stem = file[: -len(".parquet")]
    return f"{folder}/{stem}" if folder.startswith(RETRY_PREFIX) else stem


def _read_shards(batch: pa.Table, scored_dir: str) -> pa.Table:
    """The rows of each shard in ``batch`` not yet committed to ``scored/<shard>/``, with the
    shard's name (``download_shard``: where the writer commits them, and the manifest's)."""
    tables = []
    for uri in batch.column("path").to_pylist():
        table = storage.read_parquet([uri])
        done = _committed_ids(storage.join(scored_dir, shard_name(uri)))
        if done:
            table = table.filter(pc.invert(pc.is_in(table.column("sample_id"), value_set=pa.array(done, pa.string()))))
        tables.append(table.append_column("download_shard", pa.array([shard_name(uri)] * table.num_rows, pa.string())))
    return pa.concat_tables(tables, promote_options="default")


def _committed_ids(shard_dir: str) -> list[str]:
    files = storage.list_files(shard_dir, ".parquet")
    return storage.read_parquet(files, columns=["sample_id"]).column("sample_id").to_pylist() if files else []


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
    """map_batches arguments for a model stage: its pool (``stage.pool``, sized at start)."""
    import ray.data

    pool = stage.pool
    return {
        "compute": ray.data.ActorPoolStrategy(size=pool.actors),
        "batch_size": stage.compute.batch_size,
        "batch_format": "pyarrow",
        "num_cpus": pool.num_cpus,
        "num_gpus": pool.num_gpus,
        # A killed actor (OOM, node loss, SIGKILL) is restarted and its batch re-run; the
        # writer commits by sample_id, so a re-run batch never counts twice. Bounded task
        # retries: a batch that kills its actor every time stops the run instead of looping.
        "max_restarts": -1,
        "max_task_retries": ACTOR_TASK_RETRIES,
    }


@contextlib.contextmanager
def _bounded_retries_accepted():
    """Ray 2.60 deprecates map_batches' extra ``**ray_remote_args`` for its named remote
    parameters, but names none for ``max_restarts`` and ``max_task_retries``: the bounded
    retries in actor_pool_args can only go that way (without them an actor that dies on a
    batch every time would retry it forever). Its RayDeprecationWarning, printed on every
    model run, is ignored here, for this call alone; any other warning still shows."""
    from ray.util.annotations import RayDeprecationWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=RayDeprecationWarning)
        yield


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
    rows, errors = [], []
    shards = batch.column("download_shard")
    for shard in pc.unique(shards).to_pylist():  # a batch may hold rows of two shards
        part = batch.filter(pc.equal(shards, shard))
        table = part.drop_columns([c for c in (image_col, *NOT_STORED) if c in part.column_names])
        ids = table.column("sample_id").to_pylist()
        digest = hashlib.sha1("\n".join(sorted(ids)).encode()).hexdigest()[:12]
        try:
            commits.write_parquet(storage.join(scored_dir, shard, f"part-{min(ids)}-{digest}.parquet"), table)  # + record
        except storage.WriteError as error:
            rows.append(0)
            errors.append(str(error))
            continue
        rows.append(table.num_rows)
        errors.append(None)
    return _receipt(rows, errors)


def _unfinished(shards: list[str], scored_dir: str) -> list[str]:
    """The shards of ``shards`` whose scored parts hold fewer rows than the shard (Ray task)."""
    from curate.core.progress import parquet_rows

    out = []
    for uri in shards:
        done = sum(map(parquet_rows, storage.list_files(storage.join(scored_dir, shard_name(uri)), ".parquet")))
        if done < parquet_rows(uri):
            out.append(uri)
    return out


SHARDS_PER_CHECK = 256  # download shards one resume-check task looks at


def unfinished_shards(shards: list[str], run: RunDir) -> list[str]:
    """Download shards with rows still to score, found by Ray tasks over groups of shards:
    the driver holds shard names, never sample_ids."""
    import ray

    check = ray.remote(num_cpus=TASK_CPUS)(_unfinished)
    groups = [shards[i : i + SHARDS_PER_CHECK] for i in range(0, len(shards), SHARDS_PER_CHECK)]
    return [uri for found in ray.get([check.remote(g, run.scored) for g in groups]) for uri in found]


def build_dataset(plan: Plan, run: RunDir, shards: list[str]):
    import ray.data

    # Not ray.data.read_parquet: in Ray 2.60 it lists files in a task that reserves a whole
    # CPU, which can't be placed once the actor pools hold the rest of a small machine, and
    # the pipeline deadlocks. One block per shard path, read by a light task, never blocks.
    ds = ray.data.from_items([{"path": shard} for shard in shards], override_num_blocks=max(1, len(shards)))
    ds = ds.map_batches(_read_shards, fn_kwargs={"scored_dir": run.scored}, batch_format="pyarrow", batch_size=None,
                        num_cpus=TASK_CPUS)
    for stage in plan.batch:
        if stage.uses_model:
            with _bounded_retries_accepted():
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
    pending = unfinished_shards(shards, run)
    if not pending:
        return 0
    ds = build_dataset(plan, run, pending)
    committed = 0
    for receipt in ds.iter_rows():
        if receipt["error"]:
            raise storage.WriteError(receipt["error"])  # leaving the loop stops the dataset's tasks
        committed += receipt["rows"]
    return committed
