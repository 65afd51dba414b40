"""Pairs: one image and its alt-text per input row, decided with BLIP's CapFilt.

For every image that passed the image rules, the candidate captions are its original
caption and its synthetic ones (when the captioner ran). Each candidate is judged by the
enabled stages' caption rules (``scope="caption"``: text rules, ``clip.min_score``,
``itm.min_prob``...), first failing rule wins. ``capfilt.mode``:

- ``capfilt``: keep the original if it passes, plus the ``capfilt.max_synthetic`` best
  synthetic captions that pass; no caption passes -> the sample is filtered
  (``no_caption_passed:<original's reason>``).
- ``filter_only``: only the original is a candidate (CLIP/ITM filtering alone).
- ``caption_only``: the best synthetic captions replace the original; the model stages'
  score rules are not applied (the text rules are).

"Best" is by ITM probability when ITM scores exist, else by CLIP score. The training caption
(``caption_chosen``) is the original when it passes (``capfilt.prefer: original``) or the
best kept caption (``prefer: best``; on a tie the original wins). Source: Li et al. 2022,
"BLIP: Bootstrapping Language-Image Pre-training", section 3.3 (CapFilt).

All of it is SQL over stored columns (DuckDB), so a refilter re-decides without a model.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pyarrow as pa

from curate.core import duck, storage
from curate.core.inputs import InputFile, read_input_file
from curate.core.rundir import RunDir
from curate.flow.decision import KEPT, case_sql
from curate.flow.kind import Kind
from curate.flow.shards import CHUNK_ROWS, ShardFiles, ShardImages, json_value
from curate.schemas import columns
from curate.schemas import reasons as R
from curate.schemas.reasons import sql_clean_detail
from curate.stages.base import Rule

if TYPE_CHECKING:
    from curate.flow.plan import Plan

MANIFEST_PART_ROWS = 1_000_000
# Row groups small enough that an output task reading one shard's rows (by output_shard,
# which follows sample_id order) skips the rest of the part by its statistics.
MANIFEST_ROW_GROUP = 10_000
# Candidate columns every caption has in the manifest's `captions`, NULL when a stage is off.
STRUCT_SCORES = ("clip_score", "itm_prob", "itm_cosine")
# Manifest columns that say where the bytes are or why, not what the sample is.
LOCATION_COLUMNS = ("download_shard", "download_key", "output_shard", "status", "reason")


class PairsKind(Kind):
    name = "pairs"
    rows_schema = columns.PREPARED_ROWS
    download_columns = ("sample_id", "url", "caption", "caption_bad_encoding")
    thresholds = ("capfilt.mode", "capfilt.max_synthetic", "capfilt.prefer")

    def read(self, item: InputFile, run: RunDir) -> pa.Table:
        return read_input_file(item, self.cfg.input)

    # -- the caption decision ----------------------------------------------------------------

    def decide(self, con, plan: Plan) -> None:
        """``decided``: the image decision, then CapFilt for the images it kept."""
        con.execute(f"CREATE OR REPLACE TABLE caption_candidates AS {self.candidates_sql(plan)}")
        reason = self.candidate_reason_sql(plan)
        rank = _rank_column(plan)
        limit = self.synthetic_limit()
        con.execute(f"""
            CREATE OR REPLACE TABLE caption_ranked AS
            SELECT *, CASE WHEN source = 'synthetic' THEN
                          row_number() OVER (PARTITION BY sample_id, source ORDER BY rank DESC NULLS LAST, idx) END AS ord,
                   reason IS NULL AND (source = 'original' OR row_number() OVER (
                       PARTITION BY sample_id, source, reason IS NULL ORDER BY rank DESC NULLS LAST, idx) <= {limit}) AS kept
            FROM (SELECT *, {reason} AS reason, {rank} AS rank FROM caption_candidates)
        """)
        con.execute(f"CREATE OR REPLACE TABLE caption_decisions AS {self.decisions_sql()}")
        unit = Rule("c.caption_reason IS NOT NULL", "c.caption_reason", UNIT_CODES)
        status, reason = case_sql([unit], prior="i")
        con.execute(f"""
            CREATE OR REPLACE TABLE decided AS
            SELECT i.sample_id, {status} AS status, {reason} AS reason,
                   c.caption_chosen, c.caption_source, c.original_caption_reason, c.captions,
                   c.chosen_clip_score, c.chosen_itm_prob
            FROM image_decisions i LEFT JOIN caption_decisions c USING (sample_id)
        """)

    def candidate_columns(self, plan: Plan) -> dict[str, tuple[str, str | None]]:
        out = {}
        for stage in plan.batch:
            out.update(stage.caption_columns)
        return out

    def candidates_sql(self, plan: Plan) -> str:
        """One row per candidate caption of every image the image rules kept: ``idx`` 0 is
        the original, 1.. the captioner's in generation order."""
        cols = self.candidate_columns(plan)
        scores = {name: ("NULL::FLOAT", "NULL::FLOAT") for name in STRUCT_SCORES}
        for name, (original, synthetic) in cols.items():
            scores[name] = (original, f"{synthetic}[i]" if synthetic else "NULL")
        needed = sorted({c for pair in cols.values() for c in pair if c} | {"caption_text"})
        synthetic = "synthetic_captions" in plan.written
        base = f"""SELECT sample_id, {', '.join(needed)}{', synthetic_captions' if synthetic else ''}
                   FROM joined j JOIN image_decisions d USING (sample_id) WHERE d.status = {KEPT}"""
        original = ", ".join(f"{o} AS {name}" for name, (o, _) in scores.items())
        sql = f"WITH base AS ({base}) SELECT sample_id, 0 AS idx, 'original' AS source, caption_text AS text, {original} FROM base"
        if synthetic and self.cfg.capfilt.mode != "filter_only":
            per = ", ".join(f"{s} AS {name}" for name, (_, s) in scores.items())
            sql += f"""
                UNION ALL
                SELECT sample_id, i AS idx, 'synthetic' AS source, synthetic_captions[i] AS text, {per}
                FROM (SELECT *, unnest(range(1, len(synthetic_captions) + 1)) AS i FROM base
                      WHERE synthetic_captions IS NOT NULL)"""
        return sql

    def candidate_reason_sql(self, plan: Plan) -> str:
        """Why each candidate fails (NULL: it passes), from the stages' caption rules."""
        rules = plan.rules("caption")
        if self.cfg.capfilt.mode == "caption_only":  # trusts the captioner: no score thresholds
            model_rules = [r for s in plan.batch if s.uses_model for r in s.rules()]
            rules = [Rule.fixed("source = 'original'", R.CAPTION_ONLY_MODE, scope="caption")] + [
                r for r in rules if r not in model_rules]
        return case_sql(rules)[1]

    def synthetic_limit(self) -> int:
        limit = self.cfg.capfilt.max_synthetic
        return max(1, limit) if self.cfg.capfilt.mode == "caption_only" else limit

    def decisions_sql(self) -> str:
        """Per image: its captions (original first, then synthetic best first), the training
        caption and the reason when no caption was kept."""
        if self.cfg.capfilt.prefer == "original":
            choice = "source <> 'original', ord"
        else:  # the best kept; on a tie the original, then the better synthetic
            choice = "rank DESC NULLS LAST, source <> 'original', ord"
        if self.cfg.capfilt.mode == "caption_only":
            failure = (f"WHEN n_synthetic > 0 THEN {R.NO_CAPTION_PASSED.sql_with('best_synthetic_reason')} "
                       f"ELSE {R.NO_SYNTHETIC_CAPTION.sql()}")
        else:  # no captioner (or nothing generated): the original's own reason
            failure = (f"WHEN n_synthetic = 0 THEN original_reason "
                       f"ELSE {R.NO_CAPTION_PASSED.sql_with('original_reason')}")
        struct = ("struct_pack(text := text, source := source, clip_score := clip_score::FLOAT, "
                  "itm_prob := itm_prob::FLOAT, itm_cosine := itm_cosine::FLOAT, kept := kept, reason := reason)")
        return f"""
            WITH chosen AS (
                SELECT sample_id, text, source, clip_score, itm_prob,
                       row_number() OVER (PARTITION BY sample_id ORDER BY {choice}) AS choice
                FROM caption_ranked WHERE kept
            ), per_image AS (
                SELECT sample_id, list({struct} ORDER BY source <> 'original', ord) AS captions,
                       bool_or(kept) AS any_kept,
                       max(reason) FILTER (WHERE source = 'original') AS original_reason,
                       count(*) FILTER (WHERE source = 'synthetic') AS n_synthetic,
                       min_by(reason, ord) FILTER (WHERE source = 'synthetic') AS best_synthetic_reason
                FROM caption_ranked GROUP BY sample_id
            )
            SELECT p.sample_id, CASE WHEN any_kept THEN NULL {failure} END AS caption_reason,
                   c.text AS caption_chosen, c.source AS caption_source, p.original_reason AS original_caption_reason,
                   p.captions, c.clip_score::FLOAT AS chosen_clip_score, c.itm_prob::FLOAT AS chosen_itm_prob
            FROM per_image p LEFT JOIN chosen c ON c.sample_id = p.sample_id AND c.choice = 1
        """

    # -- the manifest --------------------------------------------------------------------------

    def manifest_schema(self, plan: Plan) -> pa.Schema:
        return columns.concat_schemas(columns.PAIRS_MANIFEST_HEAD, *(s.manifest_schema() for s in plan.stages),
                                      columns.MANIFEST_TAIL)

    def manifest_sql(self, plan: Plan) -> str:
        n = self.cfg.output.samples_per_shard
        head = [f"f.{c}" if c in ("status", "reason") else c for c in columns.PAIRS_MANIFEST_HEAD.names]
        stage_columns = [c for s in plan.stages for c in s.manifest]
        return f"""
            SELECT {', '.join(head + stage_columns)},
                   substr(key, 1, 5) AS download_shard, key AS download_key,
                   CASE WHEN f.status = {KEPT} THEN printf('%05d',
                       (row_number() OVER (PARTITION BY f.status = {KEPT} ORDER BY sample_id) - 1) // {n})
                   END AS output_shard
            FROM joined JOIN decided d USING (sample_id) JOIN final f USING (sample_id) ORDER BY sample_id
        """

    def preview(self, con, run: RunDir, plan: Plan) -> dict[str, pa.Table]:
        return {"manifest": duck.fetch_table(con, self.manifest_sql(plan)).cast(self.manifest_schema(plan))}

    def write_manifest(self, con, run: RunDir, plan: Plan) -> int:
        """RUN/manifest/part-NNNNN.parquet, streamed: one batch and one compressed part in memory."""
        schema = self.manifest_schema(plan)
        storage.remove_tree(run.manifest)
        reader = con.execute(self.manifest_sql(plan)).to_arrow_reader(MANIFEST_ROW_GROUP)
        total, part, stream = 0, 0, None
        for batch in reader:
            if stream is None:
                stream = _part(run, part, schema)
            for typed in pa.Table.from_batches([batch]).cast(schema).to_batches():
                stream.write(typed)
            if stream.rows >= MANIFEST_PART_ROWS:
                stream.commit()
                part, total, stream = part + 1, total + stream.rows, None
        if stream is not None or part == 0:
            stream = stream or _part(run, part, schema)
            stream.commit()
            total += stream.rows
        return total

    # -- the shards ----------------------------------------------------------------------------

    def write_shard(self, rows: pa.Table, name: str, out_dir: str, downloaded_dir: str) -> int:
        """One output shard: ``KEY.<image>``, ``KEY.txt`` (the training caption) and
        ``KEY.json`` (the manifest row, kept captions only) per sample, and/or Parquet."""
        image_col, formats = self.cfg.download.encode_format, self.cfg.output.formats
        images = ShardImages(name, rows.select(["sample_id", "download_shard"]), downloaded_dir, image_col)
        meta = rows.drop_columns([c for c in LOCATION_COLUMNS if c in rows.column_names])
        schema = _parquet_schema(meta.schema, image_col)
        with ShardFiles(out_dir, name, formats, schema) as files:
            for chunk in meta.to_batches(max_chunksize=CHUNK_ROWS):
                records = [_training_record(r) for r in chunk.to_pylist()]
                data = [images[r["sample_id"]] for r in records]
                if files.tar is not None:
                    for record, image in zip(records, data):
                        files.tar.write({
                            "__key__": record["sample_id"],
                            image_col: image,
                            "txt": record["caption_chosen"] or "",
                            "json": json.dumps(record, ensure_ascii=False).encode("utf-8"),
                        })
                if files.parquet is not None:
                    table = pa.Table.from_pylist([{**r, image_col: d} for r, d in zip(records, data)], schema=schema)
                    files.parquet.write_table(table)
        return rows.num_rows


# Every code a pair's caption decision can give a sample.
UNIT_CODES = tuple(c for c in R.CODES if c.name.startswith("caption_") and c.scope == "row") + (
    R.CLIP_SCORE_BELOW, R.ITM_PROB_BELOW, R.NO_CAPTION_PASSED, R.NO_SYNTHETIC_CAPTION)


def _rank_column(plan: Plan) -> str:
    """What "best" means among captions: ITM's P(match) when it ran, else the CLIP score."""
    for column in ("itm_prob", "clip_score"):
        if column in plan.written:
            return column
    return "NULL::FLOAT"


def _part(run: RunDir, part: int, schema: pa.Schema) -> storage.ParquetStream:
    return storage.ParquetStream(storage.join(run.manifest, f"part-{part:05d}.parquet"), schema, MANIFEST_ROW_GROUP)


def _training_record(row: dict) -> dict:
    """A manifest row as the trainer sees it: the kept captions only (the manifest keeps all)."""
    record = {k: json_value(v) for k, v in row.items()}
    if record.get("captions") is not None:
        record["captions"] = [
            {k: json_value(v) for k, v in c.items() if k not in ("kept", "reason")} for c in record["captions"] if c["kept"]
        ]
    return record


def _parquet_schema(meta: pa.Schema, image_col: str) -> pa.Schema:
    """The Parquet shard's schema: the manifest's columns as a trainer sees them (captions
    without the kept/reason fields, as in _training_record) plus the image bytes. Fixed once
    per shard, so every chunk is written with the same types."""
    fields = []
    for field in meta:
        if field.name == "captions":
            item = field.type.value_type
            kept = [f for f in item if f.name not in ("kept", "reason")]
            field = field.with_type(pa.list_(pa.struct(kept)))
        fields.append(field)
    return pa.schema(fields + [pa.field(image_col, pa.binary())])
