"""Pairs: one image and its alt-text per input row, decided with BLIP's CapFilt.

For every image that passed the image rules, the candidate captions are its original
caption, its alternates (the captions of the other rows with its URL:
curate.pipeline.same_url) and its synthetic ones (when the captioner ran). Each candidate
is judged by the enabled stages' caption rules (``scope="caption"``: text rules,
``filters.max_caption_tokens``, ``clip.min_score``, ``itm.min_prob``...), first failing
rule wins (curate.flow.captions builds the candidates). ``capfilt.mode``:

- ``capfilt``: keep the original and each alternate that passes, plus those of the first
  ``capfilt.max_synthetic`` synthetic captions (in the consensus order: votes, the judges'
  rank, ITM, generation order) that pass and that every judge scores above the original
  (``judged_below_original:<judge>``); no caption passes -> the sample is filtered
  (``no_caption_passed:<original's reason>+synthetic-<the first synthetic caption's>``).
- ``filter_only``: only the input's captions (the original, the alternates) are candidates
  (CLIP/ITM filtering alone).
- ``caption_only``: the best synthetic captions replace the input's; the model stages'
  score rules are not applied (the text rules are).

The training caption (``caption_chosen``): ``capfilt.prefer: original``, the best kept of
the input's captions (by the judges' rank; on a tie the original), else the first kept
synthetic one; ``prefer: best``, the best kept caption (on a tie the original, then the
alternates). Source: Li et al. 2022, "BLIP: Bootstrapping Language-Image Pre-training",
section 3.3 (CapFilt).

All of it is SQL over stored columns (DuckDB), so a refilter re-decides without a model.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import pyarrow as pa

from curate.core import storage
from curate.core.inputs import InputPart, read_input_part
from curate.core.rundir import RunDir
from curate.flow import captions, pair_record
from curate.flow.decision import ATTEMPTS_SQL, KEPT, case_sql
from curate.flow.kind import Kind
from curate.flow.shards import CHUNK_ROWS, ShardFiles, ShardImages, write_shard_stats
from curate.schemas import columns
from curate.schemas import reasons as R
from curate.schemas.status import Status
from curate.stages.base import Rule, Score

if TYPE_CHECKING:
    from curate.flow.kind import Plan

# Row groups small enough that an output task reading one shard's rows (by output_shard,
# which follows sample_id order) skips the rest of the part by its statistics.
MANIFEST_ROW_GROUP = 10_000


class PairsKind(Kind):
    name = "pairs"
    rows_schema = columns.PAIRS_ROWS
    # A fetched row carries the captions of the rows with its URL (curate.pipeline.same_url).
    carried = columns.ALTERNATES
    download_columns = ("sample_id", "url", "caption", "caption_bad_encoding", *columns.ALTERNATES.names)
    thresholds = ("capfilt.mode", "capfilt.max_synthetic", "capfilt.prefer")
    # The training caption's scores (a sample kept with a synthetic caption: that caption's;
    # clip_score and itm_prob stay the alt-text's), for the report and `curate stats`.
    scores = {
        "caption_clip_score": Score("CLIP score of the training caption", low=-1.0, high=1.0),
        "caption_itm_prob": Score("ITM P(match) of the training caption", low=0.0, high=1.0),
    }

    @property
    def merges_same_url(self) -> bool:
        return self.cfg.input.merge_same_url

    def read(self, part: InputPart, run: RunDir) -> pa.Table:
        """The part's rows, with the input columns ``input.keep_columns`` carries after them."""
        return read_input_part(part, self.cfg.input, self.reserved_names())

    def reserved_names(self, plan: Plan | None = None) -> frozenset[str]:
        """Lower-case names of every column curate gives a pair (rows, scores, manifest, the
        training record): an input column kept by ``input.keep_columns`` may have none of
        them (DuckDB compares names without case). The plan's stage columns count once
        ``check`` has seen the plan (the runner checks it before the input is read)."""
        if plan is None:
            return getattr(self, "_reserved", None) or self._names(columns.SCORED_BASE, columns.concat_schemas(
                columns.PAIRS_MANIFEST_HEAD, columns.MANIFEST_TAIL))
        return self._names(plan.scored_schema(), self.manifest_schema(plan))

    @staticmethod
    def _names(scored: pa.Schema, manifest: pa.Schema) -> frozenset[str]:
        record = pair_record.record_schema(manifest).names
        names = [*columns.PAIRS_ROWS.names, *scored.names, *manifest.names, *record, *columns.ALTERNATES.names,
                 "_downloaded", "txt", "json", "jpg", "png", "webp", *(f"alt_text_{s}" for s in pair_record.CAPTION_SCORES)]
        return frozenset(n.lower() for n in names)

    def check(self, plan: Plan) -> None:
        """An input column kept under a name curate uses is refused before anything is written."""
        keep = self.cfg.input.keep_columns
        self._reserved = reserved = self.reserved_names(plan)
        if keep == "all":
            return
        clashes = [c for c in keep if c.lower() in reserved]
        if clashes:
            from curate.core.config import ConfigError

            raise ConfigError(
                f"input.keep_columns: {', '.join(map(repr, clashes))} would clash with curate's own column"
                f"{'s' if len(clashes) > 1 else ''} of that name (names compare without case); leave "
                f"{'them' if len(clashes) > 1 else 'it'} out, or set input.keep_columns: all, which carries such a "
                f"column as input_<name> (docs/formats.md)")

    @staticmethod
    def kept_columns(con) -> pa.Schema:
        """The input columns the partition's rows carry (``input.keep_columns``), with their types."""
        reader = con.execute("SELECT * FROM rows LIMIT 0").arrow()
        schema = reader.schema if hasattr(reader, "schema") else reader.read_all().schema
        return pa.schema([f for f in schema if f.name not in columns.PAIRS_ROWS.names])

    def unfetched_rules(self) -> list[Rule]:
        """A row whose URL another row fetches: ``same_url_as:<sample_id>`` (its caption is one
        of that sample's), ``same_url_not_scored:<sample_id>`` (the sample had its fill)."""
        return [Rule("same_url_reason IS NOT NULL", "same_url_reason", (R.SAME_URL_AS, R.SAME_URL_NOT_SCORED),
                     Status.DUPLICATE)]

    # -- the caption decision ----------------------------------------------------------------

    def decide(self, con, plan: Plan) -> None:
        """``decided``: the image decision, then CapFilt for the images it kept."""
        con.execute(f"CREATE OR REPLACE TABLE caption_candidates AS {self.candidates_sql(plan)}")
        reason = self.candidate_reason_sql(plan)
        rank = captions.judged_rank_sql(plan)
        limit = self.synthetic_limit()
        # Synthetic captions in order, best first: the one most of the K samples agree on,
        # then the judges' rank together, then ITM alone, then generation order
        # (curate.flow.captions). In capfilt mode only the first max_synthetic in that order
        # may be kept, each if it passes: a sample the consensus ranks lower is not taken in
        # place of a better one the filter rejected. caption_only trusts the captioner: the
        # first that pass.
        votes = "votes DESC NULLS LAST, " if "synthetic_votes" in plan.written else ""
        best = f"{votes}rank DESC NULLS LAST, {captions.rank_column(plan)} DESC NULLS LAST, idx"
        order = "ord" if self.cfg.capfilt.mode == "capfilt" else f"""row_number() OVER (
                       PARTITION BY sample_id, source, reason IS NULL ORDER BY {best})"""
        con.execute(f"""
            CREATE OR REPLACE TABLE caption_ranked AS
            SELECT *, reason IS NULL AND (source <> 'synthetic' OR {order} <= {limit}) AS kept
            FROM (SELECT *, CASE WHEN source = 'synthetic' THEN
                                 row_number() OVER (PARTITION BY sample_id, source ORDER BY {best}) END AS ord
                  FROM (SELECT *, {reason} AS reason, {rank} AS rank FROM caption_candidates))
        """)
        con.execute(f"CREATE OR REPLACE TABLE caption_decisions AS {self.decisions_sql(plan)}")
        unit = Rule("c.caption_reason IS NOT NULL", "c.caption_reason", UNIT_CODES)
        status, reason = case_sql([unit], prior="i")
        con.execute(f"""
            CREATE OR REPLACE TABLE decided AS
            SELECT i.sample_id, {status} AS status, {reason} AS reason,
                   c.caption_chosen, c.caption_source, c.original_caption_reason, c.captions,
                   c.chosen_clip_score, c.chosen_itm_prob,
                   c.chosen_clip_score AS caption_clip_score, c.chosen_itm_prob AS caption_itm_prob
            FROM image_decisions i LEFT JOIN caption_decisions c USING (sample_id)
        """)

    def candidates_sql(self, plan: Plan) -> str:
        """One row per candidate caption of every image the image rules kept: ``idx`` 0 is
        the original; alternates (the captions of the other rows with its URL) 1.. in the
        order of their rows; synthetic 1.. in generation order. Each carries the original's
        scores of the run's judges (``original_<judge>``, for consensus_rules)."""
        cols = captions.candidate_columns(plan)
        scores = captions.candidate_scores(plan)
        sources = ["alternate"] + (["synthetic"] if self.cfg.capfilt.mode != "filter_only" else [])
        lists = [captions.LISTS[source][0] for source in sources if captions.LISTS[source][0] in plan.written]
        needed = sorted({c for spec in cols.values() for c in spec if c} | {"caption_text"}
                        | set(captions.token_limits(plan)) | set(lists))
        base = f"""SELECT sample_id, {', '.join(needed)}
                   FROM joined j JOIN image_decisions d USING (sample_id) WHERE d.status = {KEPT}"""
        sql = (f"SELECT sample_id, 0 AS idx, 'original' AS source, caption_text AS text, "
               f"{captions.candidate_select(plan, 0)} FROM base")
        for source in sources:
            if captions.LISTS[source][0] in lists:
                sql += f"""
                UNION ALL{captions.list_rows_sql(plan, "base", source)}"""
        # Every candidate carries the original's judged scores: a synthetic caption replaces
        # the original only if each judge scores it higher (consensus_rules). The original's,
        # not an alternate's: an alternate is no caption a synthetic one would replace.
        judges = ", ".join(f"b.{scores[j][0]} AS original_{j}" for j in self.judges(plan))
        return f"""WITH base AS ({base})
            SELECT c.*{', ' + judges if judges else ''} FROM ({sql}) c JOIN base b USING (sample_id)"""

    def judges(self, plan: Plan) -> list[str]:
        """The caption scores that judge captions in this run (ITM's P(match), CLIP's cosine)."""
        return [j for j in captions.JUDGES if j in plan.written]

    def consensus_rules(self, plan: Plan) -> list[Rule]:
        """capfilt mode: a synthetic caption must beat the original it would replace in the
        eyes of every judge (each scores it higher), not only pass the thresholds: where one
        judge prefers the alt-text, the replacement is as likely a captioner's mistake."""
        if self.cfg.capfilt.mode != "capfilt":
            return []
        return [Rule.fixed(f"source = 'synthetic' AND original_{j} IS NOT NULL AND ({j} IS NULL OR {j} <= original_{j})",
                           R.JUDGED_BELOW_ORIGINAL, j, scope="caption") for j in self.judges(plan)]

    def candidate_reason_sql(self, plan: Plan) -> str:
        """Why each candidate fails (NULL: it passes), from the stages' caption rules."""
        rules = plan.rules("caption") + self.consensus_rules(plan)
        if self.cfg.capfilt.mode == "caption_only":  # trusts the captioner: no score thresholds (text rules stay)
            model_rules = [r for s in plan.batch if s.uses_model for r in s.rules() if r not in s.token_rules()]
            rules = [Rule.fixed("source <> 'synthetic'", R.CAPTION_ONLY_MODE, scope="caption")] + [
                r for r in rules if r not in model_rules]
        return case_sql(rules)[1]

    def synthetic_limit(self) -> int:
        limit = self.cfg.capfilt.max_synthetic
        return max(1, limit) if self.cfg.capfilt.mode == "caption_only" else limit

    def decisions_sql(self, plan: Plan) -> str:
        """Per image: its captions (the original first, then its alternates in the order of
        their rows, then synthetic ones best first), the training caption and the reason when
        no caption was kept."""
        # One GROUP BY, no window and no join: ordered aggregates (list ... ORDER BY) and
        # window partitions per sample_id held over 1 GB at 1M images (bench/driver_memory.py).
        # `position` orders an image's captions (unique per image, so list_sort on a struct
        # led by it is that order).
        group = "CASE source WHEN 'original' THEN 0 WHEN 'alternate' THEN 1 ELSE 2 END"
        position = f"struct_pack(grp := {group}, n := coalesce(ord, idx))"
        best = f"no_rank := rank IS NULL, neg_rank := -rank, pos := {position}"  # rank DESC NULLS LAST, then position
        if self.cfg.capfilt.prefer == "original":
            # The input's captions (the original, the alternates) before any synthetic one; the
            # best of them, on a tie the original, then the first alternate. The sample's own
            # caption is its URL's first row's: which row that is says nothing of the caption.
            # With none kept, the first synthetic caption in the consensus order (`ord`).
            judged = "source <> 'synthetic'"
            choice = (f"struct_pack(synthetic := NOT {judged}, no_rank := {judged} AND rank IS NULL, "
                      f"neg_rank := CASE WHEN {judged} AND rank IS NOT NULL THEN -rank ELSE 0 END, pos := {position})")
        else:  # the best kept; on a tie the original, then the alternates, then the better synthetic
            choice = f"struct_pack({best})"
        if self.cfg.capfilt.mode == "caption_only":
            failure = (f"WHEN n_synthetic > 0 THEN {R.NO_CAPTION_PASSED.sql_with('best_synthetic_reason')} "
                       f"ELSE {R.NO_SYNTHETIC_CAPTION.sql()}")
        else:  # the original alone (no captioner, no alternates): its own reason
            # Else the original's reason, then that of the best-ranked synthetic caption that
            # failed (consensus order; min_by skips NULL reasons): which judge or rule turned
            # each down (docs/capfilt.md, Which judge said no).
            why = "original_reason || coalesce('+synthetic-' || best_synthetic_reason, '')"
            failure = (f"WHEN n_others = 0 THEN original_reason "
                       f"ELSE {R.NO_CAPTION_PASSED.sql_with(why)}")
        struct = captions.caption_struct_sql(plan)
        return f"""
            WITH per_image AS (
                SELECT sample_id,
                       list_transform(list_sort(list(struct_pack(pos := {position}, caption := {struct}))),
                                      x -> x.caption) AS captions,
                       arg_min(struct_pack(text := text, source := source, clip_score := clip_score, itm_prob := itm_prob),
                               {choice}) FILTER (WHERE kept) AS chosen,
                       bool_or(kept) AS any_kept,
                       max(reason) FILTER (WHERE source = 'original') AS original_reason,
                       count(*) FILTER (WHERE source = 'synthetic') AS n_synthetic,
                       count(*) FILTER (WHERE source <> 'original') AS n_others,
                       min_by(reason, ord) FILTER (WHERE source = 'synthetic') AS best_synthetic_reason
                FROM caption_ranked GROUP BY sample_id
            )
            SELECT sample_id, CASE WHEN any_kept THEN NULL {failure} END AS caption_reason,
                   chosen.text AS caption_chosen, chosen.source AS caption_source, original_reason AS original_caption_reason,
                   captions, chosen.clip_score::FLOAT AS chosen_clip_score, chosen.itm_prob::FLOAT AS chosen_itm_prob
            FROM per_image
        """

    # -- the manifest --------------------------------------------------------------------------

    def manifest_schema(self, plan: Plan, kept: pa.Schema = pa.schema([])) -> pa.Schema:
        """The manifest's columns: the head, each stage's, the input's kept columns, the tail."""
        return columns.concat_schemas(columns.PAIRS_MANIFEST_HEAD, *(s.manifest_schema() for s in plan.stages),
                                      kept, columns.MANIFEST_TAIL)

    def manifest_sql(self, plan: Plan, kept: pa.Schema = pa.schema([])) -> str:
        """The manifest's rows from ``joined``, ``decided`` and ``final``, output shards NULL
        (numbered once every partition's kept count is known: curate.pipeline.decide)."""
        head = [f"f.{c}" if c in ("status", "reason") else c for c in columns.PAIRS_MANIFEST_HEAD.names]
        stage_columns = [c for s in plan.stages for c in s.manifest]
        stage_columns += ['"' + name.replace('"', '""') + '"' for name in kept.names]  # input.keep_columns
        attempts = f"CASE WHEN same_url_reason IS NOT NULL THEN 0 ELSE {ATTEMPTS_SQL} END"  # another row fetched it
        return f"""
            SELECT {', '.join(head + stage_columns)}, {attempts} AS attempts, download_shard, key AS download_key,
                   NULL::VARCHAR AS output_shard
            FROM joined JOIN decided d USING (sample_id) JOIN final f USING (sample_id) ORDER BY sample_id
        """

    def write_partition(self, con, plan: Plan, name: str, files, out) -> dict:
        """The partition's manifest part, ``part-<partition>.parquet``, one row per input row."""
        uri = storage.join(out.manifest, f"part-{name}.parquet")
        kept = self.kept_columns(con)
        schema = self.manifest_schema(plan, kept)
        stream = storage.ParquetStream(uri, schema, MANIFEST_ROW_GROUP)
        for batch in con.execute(self.manifest_sql(plan, kept)).to_arrow_reader(MANIFEST_ROW_GROUP):
            for typed in pa.Table.from_batches([batch]).cast(schema).to_batches():
                stream.write(typed)
        stream.commit()
        return {"manifest": [{"uri": uri, "units": stream.rows, "kept": _kept(con, "final")}], **status_counts(con, "final")}

    # -- the shards ----------------------------------------------------------------------------

    def write_shard(self, rows: pa.Table, name: str, out_dir: str, downloaded_dir: str) -> int:
        """One output shard: ``KEY.<image>``, ``KEY.txt`` (the training caption) and
        ``KEY.json`` (the training record, curate.flow.pair_record) per sample, and/or the
        same records as Parquet; then its ``NNNNN_stats.json``."""
        image_col, formats = self.cfg.download.encode_format, self.cfg.output.formats
        started = time.time()
        images = ShardImages(name, rows.select(["sample_id", "download_shard"]), downloaded_dir, image_col)
        fields = pair_record.record_schema(rows.schema)
        schema = pair_record.parquet_schema(fields, image_col)
        with ShardFiles(out_dir, name, formats, schema) as files:
            for chunk in rows.to_batches(max_chunksize=CHUNK_ROWS):
                records = [pair_record.training_record(r, fields) for r in chunk.to_pylist()]
                data = [images[r["sample_id"]] for r in records]
                if files.tar is not None:
                    for record, image in zip(records, data):
                        files.tar.write({
                            "__key__": record["key"],
                            image_col: image,
                            "txt": record["caption"],
                            # default=str: a kept input column of dates or decimals (input.keep_columns)
                            "json": json.dumps(record, ensure_ascii=False, default=str).encode("utf-8"),
                        })
                if files.parquet is not None:
                    table = pa.Table.from_pylist(
                        [{**r, image_col: {"bytes": d, "path": f"{r['key']}.{image_col}"}} for r, d in zip(records, data)],
                        schema=schema)
                    files.parquet.write_table(table)
        write_shard_stats(out_dir, name, rows.num_rows, started)
        return rows.num_rows


# Every code a pair's caption decision can give a sample.
UNIT_CODES = tuple(c for c in R.CODES if c.name.startswith("caption_") and c.scope == "row") + (
    R.CLIP_SCORE_BELOW, R.ITM_PROB_BELOW, R.NO_CAPTION_PASSED, R.NO_SYNTHETIC_CAPTION)


def status_counts(con, table: str) -> dict:
    """Rows of ``table`` per status and per (status, reason code), for the run's summary."""
    statuses = dict(con.execute(f"SELECT status, count(*) FROM {table} GROUP BY ALL").fetchall())
    reasons = con.execute(f"SELECT status, split_part(reason, ':', 1), count(*) FROM {table} "
                          "WHERE reason IS NOT NULL GROUP BY ALL").fetchall()
    return {"statuses": statuses, "reasons": {json.dumps([s, code]): n for s, code, n in reasons}}


def _kept(con, table: str) -> int:
    return con.execute(f"SELECT count(*) FROM {table} WHERE status = {KEPT}").fetchone()[0]
