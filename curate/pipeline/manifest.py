"""Step 4: assemble the manifest, one row per input row, from stored results only.

The decision (status, reason) is a SQL expression over stored columns and the config's
thresholds, evaluated by DuckDB. It never runs a model, so ``curate refilter`` re-decides
a finished run at new thresholds by running this step again.

Order of precedence, first match wins: blocked -> download_failed -> filtered (image
rules, then the caption decision of curate.stages.capfilt) -> duplicate -> kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from curate.core import duck, storage
from curate.core.config import CurateConfig
from curate.pipeline.inputs import ROWS_SCHEMA
from curate.core.rundir import RunDir
from curate.stages.download import BLOCKED_AT_DOWNLOAD
from curate.stages.registry import model_stages

if TYPE_CHECKING:
    from curate.core.progress import Progress

MANIFEST_PART_ROWS = 1_000_000
# Row groups small enough that an output task reading one shard's rows (by output_shard,
# which follows sample_id order) skips the rest of the part by its statistics.
MANIFEST_ROW_GROUP = 10_000

# The columns the scored view must have even when no shard was scored (all rows blocked).
SCORED_BASE_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("key", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
        ("sha256", pa.string()),
        ("pixel_sha256", pa.string()),
        ("download_reason", pa.string()),
        ("image_reject", pa.string()),
        ("caption_reject", pa.string()),
    ]
)
ROWS_WITH_PRECHECK = ROWS_SCHEMA.append(pa.field("blocked_reason", pa.string()))


def open_run_views(run: RunDir, cfg: CurateConfig):
    """A DuckDB connection with views ``rows`` and ``scored`` (one row per sample_id)."""
    con = duck.connect(run.root, spill_over=cfg.manifest.memory_limit)
    duck.create_parquet_view(con, "rows", storage.list_files(run.rows, ".parquet"), ROWS_WITH_PRECHECK)
    schema = SCORED_BASE_SCHEMA
    for stage in model_stages(cfg):
        schema = pa.unify_schemas([schema, stage.scored_schema])
    duck.create_first_copy_view(con, "scored", storage.list_files(run.scored, ".parquet"), schema)
    return con


def decided_sql(cfg: CurateConfig) -> str:
    """Every input row with its status and reason, before dedupe (table ``captions_decided``
    holds the caption decision of every image that passed the image rules)."""
    score_columns = "".join(f", s.{c}" for stage in model_stages(cfg) for c in stage.manifest_columns)
    return f"""
        SELECT r.sample_id, r.input_file, r.input_row, r.url, r.caption,
               CASE WHEN r.blocked_reason IS NOT NULL THEN 'blocked'
                    WHEN split_part(s.download_reason, ':', 1) IN {BLOCKED_AT_DOWNLOAD} THEN 'blocked'
                    WHEN s.sample_id IS NULL OR s.download_reason IS NOT NULL THEN 'download_failed'
                    WHEN s.image_reject IS NOT NULL OR c.caption_reason IS NOT NULL THEN 'filtered'
                    ELSE 'kept' END AS status,
               CASE WHEN r.blocked_reason IS NOT NULL THEN r.blocked_reason
                    WHEN s.sample_id IS NULL THEN 'missing_from_downloader'
                    WHEN s.download_reason IS NOT NULL THEN s.download_reason
                    ELSE coalesce(s.image_reject, c.caption_reason) END AS reason,
               c.caption_chosen, c.caption_source, c.original_caption_reason, c.captions,
               s.width, s.height, s.original_width, s.original_height, s.sha256, s.pixel_sha256
               {score_columns},
               substr(s.key, 1, 5) AS download_shard, s.key AS download_key
        FROM rows r LEFT JOIN scored s USING (sample_id) LEFT JOIN captions_decided c USING (sample_id)
    """


def with_duplicates_sql() -> str:
    """Table ``decided`` with the dedupe stage's verdicts (view ``duplicates``: sample_id,
    duplicate_of) applied: a duplicate's status and reason replace its earlier ones."""
    return """
        SELECT decided.* REPLACE (
            CASE WHEN dup.duplicate_of IS NOT NULL THEN 'duplicate' ELSE decided.status END AS status,
            CASE WHEN dup.duplicate_of IS NOT NULL THEN 'duplicate_of:' || dup.duplicate_of
                 ELSE decided.reason END AS reason)
        FROM decided LEFT JOIN duplicates dup USING (sample_id)
    """


def final_sql(cfg: CurateConfig) -> str:
    """Apply duplicates and assign output shards."""
    n = cfg.output.samples_per_shard
    return f"""
        WITH d AS ({with_duplicates_sql()})
        SELECT *,
               CASE WHEN status = 'kept' THEN
                   printf('%05d', (row_number() OVER (PARTITION BY status = 'kept' ORDER BY sample_id) - 1) // {n})
               END AS output_shard
        FROM d ORDER BY sample_id
    """


def decide(cfg: CurateConfig, run: RunDir, progress: Progress | None = None):
    """A DuckDB connection holding ``manifest_final``: every row decided, deduped, sharded.
    ``progress`` (when given) gets the ``dedupe`` entry."""
    from curate.stages.capfilt import decide_all
    from curate.stages.dedupe_stage import find_duplicates

    con = open_run_views(run, cfg)
    decide_all(con, cfg)
    con.execute(f"CREATE OR REPLACE TABLE decided AS {decided_sql(cfg)}")
    con.register("duplicates", find_duplicates(con, cfg, run, progress))
    con.execute(f"CREATE OR REPLACE TABLE manifest_final AS {final_sql(cfg)}")
    return con


def preview_manifest(cfg: CurateConfig, run: RunDir) -> pa.Table:
    """The manifest ``cfg`` would give for a scored run, in memory; nothing is written."""
    con = decide(cfg, run)
    try:
        return duck.fetch_table(con, "SELECT * FROM manifest_final ORDER BY sample_id")
    finally:
        con.close()


def build_manifest(cfg: CurateConfig, run: RunDir, progress: Progress | None = None) -> int:
    """Decide every row, dedupe the survivors, write RUN/manifest/ and RUN/dedupe_index/."""
    from curate.stages.dedupe_stage import save_kept_index

    con = decide(cfg, run, progress)
    storage.remove_tree(run.manifest)
    reader = con.execute("SELECT * FROM manifest_final ORDER BY sample_id").to_arrow_reader(MANIFEST_ROW_GROUP)
    total, part, stream = 0, 0, None
    for batch in reader:  # streamed: one batch and the compressed part in memory at a time
        if stream is None:
            stream = _part(run, part, reader.schema)
        stream.write(batch)
        if stream.rows >= MANIFEST_PART_ROWS:
            stream.commit()
            part, total, stream = part + 1, total + stream.rows, None
    if stream is not None or part == 0:
        stream = stream or _part(run, part, reader.schema)
        stream.commit()
        total += stream.rows
    if cfg.clip.model:
        save_kept_index(con, run)
    con.close()
    return total


def _part(run: RunDir, part: int, schema: pa.Schema) -> storage.ParquetStream:
    return storage.ParquetStream(storage.join(run.manifest, f"part-{part:05d}.parquet"), schema, MANIFEST_ROW_GROUP)
