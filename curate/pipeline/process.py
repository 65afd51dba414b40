"""Step 3: inspect and score the downloaded shards on Ray Data, committing per batch.

The dataset reads committed download shards, runs the inspect task and each enabled
model stage (actor pools), and ends in a writer that commits every batch to
``RUN/scored/`` under a name derived from its sample_ids (temp name, then rename). The
committed sample_ids are the resume state: a restarted run skips shards whose rows are
all committed and filters the rows already done from the others. A batch written twice
(a task retried after its write) lands under the same name or is deduplicated by
sample_id when the manifest is built, so no row is ever counted twice.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.compute as pc

from curate.pipeline import commits, storage
from curate.pipeline.config import CurateConfig
from curate.pipeline.rundir import RunDir
from curate.stages.inspect import inspect_batch

# Light tasks take a fraction of a CPU so they always fit beside the model actors
# (a 2-core machine otherwise deadlocks: actors hold every CPU, reads never run).
TASK_CPUS = 0.5


def _read_shards(batch: pa.Table) -> pa.Table:
    return storage.read_parquet(batch.column("path").to_pylist())


def _skip_done(batch: pa.Table, done: frozenset[str]) -> pa.Table:
    if not done:
        return batch
    mask = pc.invert(pc.is_in(batch.column("sample_id"), value_set=pa.array(sorted(done), pa.string())))
    return batch.filter(mask)


def _receipt(rows: list[int], errors: list[str | None]) -> pa.Table:
    return pa.table({"rows": pa.array(rows, pa.int64()), "error": pa.array(errors, pa.string())})


def write_scored(batch: pa.Table, scored_dir: str, image_col: str) -> pa.Table:
    """Commit a batch (minus the image bytes) to RUN/scored/; return a one-row receipt.

    A failed commit (disk full, a bucket refusing writes) comes back as the receipt's
    ``error``, and ``run_process`` raises it: an exception raised here would reach the driver
    as Ray Data's ``UserCodeException``, which loses its cause on the way, so the run could
    not tell a write error (stop cleanly, resume later) from a bug.
    """
    if batch.num_rows == 0:
        return _receipt([], [])
    # Image bytes stay in RUN/downloaded/; a document's texts stay in RUN/documents/.
    table = batch.drop_columns([c for c in (image_col, "doc_texts") if c in batch.column_names])
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


def plan(shards: list[str], done: set[str]) -> tuple[list[str], frozenset[str]]:
    """Which shards still have work, and which of their rows are already committed."""
    pending, partial_done = [], set()
    for shard in shards:
        ids = set(storage.read_parquet([shard], columns=["sample_id"]).column("sample_id").to_pylist())
        already = ids & done
        if len(already) < len(ids):
            pending.append(shard)
            partial_done |= already
    return pending, frozenset(partial_done)


def build_dataset(cfg: CurateConfig, run: RunDir, shards: list[str], skip: frozenset[str]):
    import ray.data

    from curate.pipeline.progress import stage_counts_dir
    from curate.stages.registry import model_stages

    image_col = cfg.download.encode_format
    # Not ray.data.read_parquet: in Ray 2.60 it lists files in a task that reserves a whole
    # CPU, which can't be placed once the actor pools hold the rest of a small machine, and
    # the pipeline deadlocks. One block per shard path, read by a light task, never blocks.
    ds = ray.data.from_items([{"path": shard} for shard in shards], override_num_blocks=max(1, len(shards)))
    ds = ds.map_batches(_read_shards, batch_format="pyarrow", batch_size=None, num_cpus=TASK_CPUS)
    if skip:
        ds = ds.map_batches(_skip_done, fn_kwargs={"done": skip}, batch_format="pyarrow", batch_size=None,
                            num_cpus=TASK_CPUS)
    ds = ds.map_batches(
        inspect_batch, fn_kwargs={"filters": cfg.filters, "image_col": image_col},
        batch_format="pyarrow", batch_size=None, num_cpus=TASK_CPUS,
    )
    for stage in model_stages(cfg):
        ds = stage.apply(ds, image_col, stage_counts_dir(run, stage.key))
    return ds.map_batches(
        write_scored, fn_kwargs={"scored_dir": run.scored, "image_col": image_col},
        batch_format="pyarrow", batch_size=None, num_cpus=TASK_CPUS,
    )


def run_process(cfg: CurateConfig, run: RunDir, shards: list[str]) -> int:
    """Score every uncommitted row of ``shards``; returns the number of rows committed now."""
    storage.remove_temporaries(run.scored)
    pending, skip = plan(shards, committed_ids(run))
    if not pending:
        return 0
    ds = build_dataset(cfg, run, pending, skip)
    committed = 0
    for receipt in ds.iter_rows():
        if receipt["error"]:
            raise storage.WriteError(receipt["error"])  # leaving the loop stops the dataset's tasks
        committed += receipt["rows"]
    return committed
