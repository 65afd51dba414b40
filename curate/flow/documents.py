"""Documents: interleaved web pages (``input.kind: documents``), OBELICS or MMC4 layout.

Every image of a document is an image row of the common flow (download, score, image rules,
dedupe across all documents), carrying its document's texts so CLIP scores it against each
(and ITM against a shortlist of them). The kind decides, from stored scores:

1. **Match rules** (:meth:`DocumentsKind.match_rules`), for each image the image rules
   kept: does a text of its document describe it? (``document_has_no_text``;
   ``sim_below``: best CLIP cosine below ``interleaved.min_sim``; ``itm_below``: no
   shortlisted text reaches ``interleaved.min_itm``.)
2. **Synthetic captions** (``interleaved.caption_unmatched``): an image no text describes
   is kept instead when one of its synthetic captions passes the filter (the stages'
   caption rules: caption text rules, ``clip.min_score``, ``itm.min_prob`` /
   ``capfilt.synthetic_min_prob``; then the kind's :meth:`DocumentsKind.caption_rules`: the
   caption must meet ``min_sim`` and ``min_itm`` as a document's text must). The best one
   (by ITM, else CLIP) becomes its text; if none passes: ``no_caption_passed:<why>``.
3. Dedupe (the global stage), then per document in Python (curate.flow.interleave): cap,
   place, and the **document rules** (curate.flow.document_rules, SQL over each document's
   facts); an image dropped there gets its reason.

It writes ``RUN/manifest/`` (one row per input document, its interleaved sequence) and
``RUN/manifest_images/`` (one row per image of every document).

Output shards (docs/formats.md): Parquet in the OBELICS layout (``texts`` and ``images``
aligned, each position a text or an image's bytes, ``text_sources`` saying which texts are
synthetic captions) and WebDataset (``DOC.json`` with the document's ``sequence``, each
image the member ``DOC.<k>.<ext>``).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import TYPE_CHECKING

import pyarrow as pa

from curate.core import commits, duck, storage
from curate.core.config import ConfigError, CurateConfig
from curate.core.inputs import InputPart
from curate.core.rundir import RunDir
from curate.flow import captions, document_rules, interleave
from curate.flow.decision import ATTEMPTS_SQL, KEPT, case_sql
from curate.flow.documents_input import read_documents_part
from curate.flow.kind import Kind
from curate.flow.hf_features import IMAGE_STRUCT, with_image_features
from curate.flow.shards import CHUNK_ROWS, ShardFiles, ShardImages, json_value, write_shard_stats
from curate.schemas import columns
from curate.schemas import reasons as R
from curate.schemas.reasons import fmt_threshold
from curate.schemas.status import Status
from curate.stages.base import Rule, Score

if TYPE_CHECKING:
    from curate.flow.kind import Plan

MANIFEST_ROW_GROUP = 10_000
ORIGINAL, SYNTHETIC = "original", "synthetic"  # where the text next to an image comes from


# A kept image's scores against the text it was placed at (manifest_images; NULL for the rest).
PLACED_SCORES = {
    "placed_clip_score": Score("CLIP cosine to the text that follows it (kept images)", low=-1.0, high=1.0),
    "placed_itm_prob": Score("ITM P(match) to the text that follows it (kept images)", low=0.0, high=1.0),
}


class DocumentsKind(Kind):
    name = "documents"
    rows_schema = columns.DOCUMENT_IMAGE_ROWS.append(columns.BLOCKED_REASON)
    download_columns = ("sample_id", "url", "caption", "caption_bad_encoding", "doc_texts")
    thresholds = ("interleaved.",)
    reads_text_scores = True
    # An image's scores in manifest_images: what the text scores mean once the kind has
    # chosen the best text (clip_score, itm_prob), and where the image was placed.
    scores = {
        "clip_score": Score("best CLIP cosine to a text of its document", "interleaved.min_sim", R.SIM_BELOW,
                            low=-1.0, high=1.0),
        "itm_prob": Score("best ITM P(match) to a text of its shortlist", "interleaved.min_itm", R.ITM_BELOW,
                          low=0.0, high=1.0),
        **PLACED_SCORES,
    }

    def check(self, plan: Plan) -> None:
        cfg = self.cfg.interleaved
        if self.cfg.input.format in ("csv", "tsv"):
            raise ConfigError("input.kind documents reads jsonl or parquet (its rows hold lists), not csv/tsv")
        if "sentence_sims" not in plan.written:
            raise ConfigError("input.kind documents places images next to texts by CLIP similarity: set clip.model")
        for stage in plan.unsupported():
            raise ConfigError(f"input.kind documents: the {stage.key} stage is built for {', '.join(stage.kinds)} "
                              f"runs only; unset {stage.switch}")
        itm = "sentence_itm_probs" in plan.written
        if cfg.min_itm is not None and not itm:
            raise ConfigError("interleaved.min_itm needs ITM scores: set itm.model (or unset interleaved.min_itm)")
        if cfg.placement_by != "clip" and not itm:
            raise ConfigError(f"interleaved.placement_by {cfg.placement_by} needs ITM scores: set itm.model "
                              "(or interleaved.placement_by: clip)")
        if cfg.caption_unmatched and "synthetic_captions" not in plan.written:
            raise ConfigError("interleaved.caption_unmatched needs synthetic captions: set caption.model "
                              "(and capfilt.mode capfilt)")
        if self.cfg.capfilt.mode == "caption_only":
            raise ConfigError("capfilt.mode caption_only replaces a pair's alt-text; a document keeps its own texts: "
                              "use interleaved.caption_unmatched for images no text describes")

    def read(self, part: InputPart, run: RunDir) -> pa.Table:
        docs, images = read_documents_part(part, self.cfg.input)
        commits.write_parquet(storage.join(run.documents, f"part-{part.name}.parquet"), docs)  # + record
        return images

    # -- the rules ----------------------------------------------------------------------------

    def match_rules(self) -> list[Rule]:
        """Whether a text of its document describes an image (over its stored scores)."""
        cfg = self.cfg.interleaved
        rules = [
            Rule.fixed("len(doc_texts) = 0", R.DOCUMENT_HAS_NO_TEXT),
            Rule.fixed(f"clip_score IS NULL OR clip_score < {cfg.min_sim!r}", R.SIM_BELOW, fmt_threshold(cfg.min_sim)),
        ]
        if cfg.min_itm is not None:  # itm_prob: the best P(match) of its shortlisted texts
            rules.append(Rule.fixed(f"itm_prob IS NULL OR itm_prob < {cfg.min_itm!r}", R.ITM_BELOW,
                                    fmt_threshold(cfg.min_itm)))
        return rules

    def caption_rules(self) -> list[Rule]:
        """A synthetic caption written as an image's text must match it as a text of the
        document must (after the stages' caption rules)."""
        cfg = self.cfg.interleaved
        rules = [Rule.fixed(f"clip_score IS NULL OR clip_score < {cfg.min_sim!r}", R.SIM_BELOW,
                            fmt_threshold(cfg.min_sim), scope="caption")]
        if cfg.min_itm is not None:
            rules.append(Rule.fixed(f"itm_prob IS NULL OR itm_prob < {cfg.min_itm!r}", R.ITM_BELOW,
                                    fmt_threshold(cfg.min_itm), scope="caption"))
        return rules

    def document_rules(self) -> list[Rule]:
        return document_rules.document_rules(self.cfg.interleaved)

    def decision_rules(self, plan: Plan) -> dict[str, list[Rule]]:
        out = {"match rules (each image the image rules kept: does a text of its document describe it?)":
               self.match_rules()}
        if self.cfg.interleaved.caption_unmatched:
            out["synthetic captions of an image no text describes (interleaved.caption_unmatched), "
                "after the caption rules above"] = self.caption_rules()
        return out

    def final_rules(self, plan: Plan) -> dict[str, list[Rule]]:
        return {"document rules (each document, after dedupe and placement)": self.document_rules()}

    # -- the image decision -------------------------------------------------------------------

    def decide(self, con, plan: Plan) -> None:
        """``decided``: the image decision, the match rules, and the synthetic captions that
        rescue images no text describes (``interleaved.caption_unmatched``)."""
        status, reason = case_sql(self.match_rules())
        con.execute(f"""
            CREATE OR REPLACE TABLE match_decisions AS
            SELECT sample_id, {status} AS status, {reason} AS reason
            FROM joined JOIN image_decisions d USING (sample_id) WHERE d.status = {KEPT}
        """)
        self._rescues(con, plan)
        itm = "j.itm_prob" if "itm_prob" in plan.written else "NULL::FLOAT"
        rescued = f"(m.status <> {KEPT} AND r.caption IS NOT NULL)"
        con.execute(f"""
            CREATE OR REPLACE TABLE decided AS
            SELECT i.sample_id,
                   CASE WHEN i.status <> {KEPT} THEN i.status WHEN m.status = {KEPT} OR {rescued} THEN {KEPT}
                        ELSE m.status END AS status,
                   CASE WHEN i.status <> {KEPT} THEN i.reason WHEN m.status = {KEPT} OR {rescued} THEN NULL
                        WHEN r.sample_id IS NOT NULL THEN {R.NO_CAPTION_PASSED.sql_with('m.reason')}
                        ELSE m.reason END AS reason,
                   i.status = {KEPT} AS valid,
                   CASE WHEN {rescued} THEN r.caption END AS synthetic_caption,
                   CASE WHEN {rescued} THEN r.caption_clip_score END AS caption_clip_score,
                   CASE WHEN {rescued} THEN r.caption_itm_prob END AS caption_itm_prob,
                   r.captions,
                   CASE WHEN {rescued} THEN r.caption_clip_score ELSE j.clip_score END AS chosen_clip_score,
                   CASE WHEN {rescued} THEN r.caption_itm_prob ELSE {itm} END AS chosen_itm_prob
            FROM image_decisions i JOIN joined j USING (sample_id)
                 LEFT JOIN match_decisions m USING (sample_id) LEFT JOIN rescues r USING (sample_id)
        """)

    def _rescues(self, con, plan: Plan) -> None:
        """``rescues``: per image no text describes, its synthetic captions judged as candidate
        captions (``captions``) and the best that passed (``caption``, with its scores)."""
        if not (self.cfg.interleaved.caption_unmatched and "synthetic_captions" in plan.written):
            con.execute("""CREATE OR REPLACE TABLE rescues (sample_id VARCHAR, caption VARCHAR,
                           caption_clip_score FLOAT, caption_itm_prob FLOAT, captions STRUCT(text VARCHAR,
                           source VARCHAR, clip_score FLOAT, itm_prob FLOAT, itm_cosine FLOAT, clip_tokens INTEGER,
                           itm_tokens INTEGER, truncated VARCHAR, kept BOOLEAN, reason VARCHAR)[])""")
            return
        unmatched = f"(SELECT * FROM joined WHERE sample_id IN (SELECT sample_id FROM match_decisions WHERE status <> {KEPT}))"
        reason = case_sql(plan.rules("caption") + self.caption_rules())[1]
        con.execute(f"""
            CREATE OR REPLACE TABLE rescue_candidates AS
            SELECT *, reason IS NULL AND row_number() OVER (
                       PARTITION BY sample_id ORDER BY reason IS NULL DESC, rank DESC NULLS LAST, idx) = 1 AS kept
            FROM (SELECT *, {reason} AS reason, {captions.rank_column(plan)} AS rank
                  FROM ({captions.synthetic_rows_sql(plan, unmatched)}))
        """)
        con.execute(f"""
            CREATE OR REPLACE TABLE rescues AS
            SELECT sample_id, max(text) FILTER (WHERE kept) AS caption,
                   CAST(max(clip_score) FILTER (WHERE kept) AS FLOAT) AS caption_clip_score,
                   CAST(max(itm_prob) FILTER (WHERE kept) AS FLOAT) AS caption_itm_prob,
                   list({captions.caption_struct_sql(plan)} ORDER BY NOT kept, rank DESC NULLS LAST, idx) AS captions
            FROM rescue_candidates GROUP BY sample_id
        """)

    # -- the manifest ---------------------------------------------------------------------------

    def text_columns(self, plan: Plan) -> dict[str, str]:
        """Score name -> the list column of an image's scores against each text (clip_score:
        sentence_sims, itm_prob: sentence_itm_probs), from the enabled stages."""
        out: dict[str, str] = {}
        for stage in plan.batch:
            out.update(stage.text_columns)
        return out

    def manifest_schema(self, plan: Plan) -> pa.Schema:
        return columns.DOCUMENTS_MANIFEST

    def images_schema(self, plan: Plan) -> pa.Schema:
        lists = [stage.writes.field(c) for stage in plan.batch for c in stage.text_columns.values()]
        return columns.concat_schemas(
            columns.DOCUMENT_IMAGES_HEAD, *(s.manifest_schema() for s in plan.stages), pa.schema(lists),
            pa.schema([("captions", pa.list_(columns.CAPTION_STRUCT))]),
            columns.MANIFEST_TAIL.remove(columns.MANIFEST_TAIL.get_field_index("output_shard")))

    def _images_table(self, con, plan: Plan) -> None:
        """``images``: every image row with its decision, as placement reads it."""
        stage_columns = "".join(f", {c}" for s in plan.stages for c in s.manifest)
        lists = "".join(f", {c}" for c in self.text_columns(plan).values())
        con.execute(f"""
            CREATE OR REPLACE TABLE images AS
            SELECT sample_id, doc_id, image_index, input_file, input_row, url, original_slot, f.status, f.reason,
                   d.valid, d.synthetic_caption, d.caption_clip_score, d.caption_itm_prob, d.captions {lists},
                   CAST(list_position(sentence_sims, list_max(sentence_sims)) - 1 AS INTEGER) AS best_text,
                   width, height, original_width, original_height, sha256, pixel_sha256 {stage_columns},
                   {ATTEMPTS_SQL} AS attempts, download_shard, key AS download_key
            FROM joined JOIN decided d USING (sample_id) JOIN final f USING (sample_id)
        """)

    def write_partition(self, con, plan: Plan, name: str, files, out) -> dict:
        """Each RUN/documents part of the partition -> its manifest and manifest_images parts
        (one row per document, one per image); output shards are numbered later."""
        self._images_table(con, plan)
        schema = self.images_schema(plan)
        rules, texts = self.document_rules(), self.text_columns(plan)
        written, statuses, reasons, images_by_status = [], Counter(), Counter(), Counter()
        for uri in files.documents:
            docs = storage.read_parquet([uri]).cast(columns.DOCUMENTS)
            manifest, images = decide_part(con, self.cfg, docs, schema, rules, texts)
            part = uri.rsplit("/", 1)[-1]
            target = storage.join(out.manifest, part)
            storage.write_parquet(target, manifest, MANIFEST_ROW_GROUP)
            storage.write_parquet(storage.join(out.manifest_images, part), images)
            rows = manifest.select(["status", "reason"]).to_pylist()
            statuses.update(r["status"] for r in rows)
            reasons.update(json.dumps([r["status"], r["reason"].split(":", 1)[0]]) for r in rows if r["reason"])
            images_by_status.update(images.column("status").to_pylist())
            written.append({"uri": target, "units": manifest.num_rows, "kept": statuses_kept(rows)})
        return {"manifest": written, "statuses": dict(statuses), "reasons": dict(reasons),
                "extra": {"images": dict(images_by_status)}}

    def image_manifest_parts(self, written: dict, out) -> list[str]:
        """The manifest_images parts, named as the manifest parts."""
        return [storage.join(out.manifest_images, part["uri"].rsplit("/", 1)[-1]) for part in written["manifest"]]

    def write_shard(self, rows: pa.Table, name: str, out_dir: str, downloaded_dir: str) -> int:
        return write_document_shard(rows, name, out_dir, downloaded_dir, self.cfg.download.encode_format,
                                    self.cfg.output.formats)

    def summary(self, counts: dict) -> dict:
        images = counts.get("extra", {}).get("images", {})
        return {"kind": "documents", "images": dict(sorted(images.items(), key=lambda kv: (-kv[1], kv[0])))}


def _document(doc: dict, image_rows: list[dict], text_columns: dict[str, str]) -> interleave.Document:
    sims, itm = text_columns.get("clip_score"), text_columns.get("itm_prob")
    images = [
        interleave.Image(r["sample_id"], r["image_index"], r["original_slot"], (r.get(sims) if sims else None) or [],
                         r["status"], r["reason"], itm=r.get(itm) if itm else None, valid=bool(r["valid"]),
                         caption=r["synthetic_caption"], caption_clip=r["caption_clip_score"],
                         caption_itm=r["caption_itm_prob"])
        for r in image_rows
    ]
    return interleave.Document(doc["sample_id"], doc["texts"] or [], images, doc["doc_error"])


_SEQUENCE = ("texts", "image_ids", "image_urls", "text_sources", "image_download_shards")


def _sequence_columns(doc: interleave.Document, rows_by_id: dict[str, dict]) -> dict[str, list | None]:
    """A kept document's sequence as aligned lists, a text or an image per position (all NULL
    for a dropped document)."""
    if not doc.sequence:
        return dict.fromkeys(_SEQUENCE)
    out: dict[str, list] = {name: [] for name in _SEQUENCE}
    for kind, item in doc.sequence:
        image = rows_by_id[item.sample_id] if kind == "image" else {}
        out["texts"].append(None if kind == "image" else item)
        out["text_sources"].append({"text": ORIGINAL, "caption": SYNTHETIC}.get(kind))
        out["image_ids"].append(image.get("sample_id"))
        out["image_urls"].append(image.get("url"))
        out["image_download_shards"].append(image.get("download_shard"))
    return out


def _manifest_row(doc: interleave.Document, source: dict, rows_by_id: dict[str, dict]) -> dict:
    facts = doc.facts()
    return {
        "sample_id": doc.sample_id, "input_file": source["input_file"], "input_row": source["input_row"],
        "status": doc.status, "reason": doc.reason, "n_texts": facts["n_texts"], "n_words": facts["n_words"],
        "n_images_in": source["n_images_in"], "n_images_kept": facts["n_images_kept"],
        "n_images_valid": facts["n_images_valid"], "n_synthetic_texts": facts["n_synthetic_texts"],
        "metadata": source["metadata"], **_sequence_columns(doc, rows_by_id), "output_shard": None,
    }


def _image_row(row: dict, image: interleave.Image, n_texts: int, schema: pa.Schema) -> dict:
    out = {name: row.get(name) for name in schema.names}
    out.update(status=image.status, reason=image.reason, slot=image.slot, text_source=None, synthetic_caption=None)
    if image.status == Status.KEPT:
        out["text_source"] = SYNTHETIC if image.rescued else ORIGINAL
        out["synthetic_caption"] = image.caption
        out["placed_clip_score"], out["placed_itm_prob"] = image.placed_scores(n_texts)
    return out


def statuses_kept(rows: list[dict]) -> int:
    return sum(r["status"] == Status.KEPT for r in rows)


def decide_part(con, cfg: CurateConfig, docs: pa.Table, images_schema: pa.Schema, rules: list[Rule],
                text_columns: dict[str, str]) -> tuple[pa.Table, pa.Table]:
    """Decide the documents of one RUN/documents part -> (manifest rows, image rows): place
    each document's images, then evaluate the document rules over all of them in one query;
    output shards are numbered later (curate.pipeline.decide)."""
    prefix = docs.column("sample_id")[0].as_py()[:6] if docs.num_rows else None
    image_rows = [] if prefix is None else duck.fetch_table(
        con, f"SELECT * FROM images WHERE starts_with(sample_id, {duck.sql_string(prefix)}) ORDER BY sample_id"
    ).to_pylist()
    by_doc: dict[str, list[dict]] = {}
    for row in image_rows:
        by_doc.setdefault(row["doc_id"], []).append(row)
    rows_by_id = {row["sample_id"]: row for row in image_rows}
    sources = docs.to_pylist()
    decided = [_document(source, by_doc.get(source["sample_id"], []), text_columns) for source in sources]
    for doc in decided:
        interleave.place(doc, cfg.interleaved)
    verdicts = document_rules.evaluate([doc.facts() for doc in decided], rules, con)
    manifest, images = [], []
    for source, doc, why in zip(sources, decided, verdicts):
        interleave.finish(doc, why)
        manifest.append(_manifest_row(doc, source, rows_by_id))
        images.extend(_image_row(rows_by_id[im.sample_id], im, len(doc.texts), images_schema) for im in doc.images)
    return (pa.Table.from_pylist(manifest, schema=columns.DOCUMENTS_MANIFEST),
            pa.Table.from_pylist(images, schema=images_schema))



# -- output shards --

# Manifest columns about where the bytes are or why, not what the document is.
_LOCATION_COLUMNS = ("image_download_shards", "output_shard", "status", "reason")


def _image_locations(rows: pa.Table) -> pa.Table:
    ids, shards = [], []
    for doc_ids, doc_shards in zip(rows.column("image_ids").to_pylist(), rows.column("image_download_shards").to_pylist()):
        for sample_id, shard in zip(doc_ids, doc_shards):
            if sample_id is not None:
                ids.append(sample_id)
                shards.append(shard)
    return pa.table({"sample_id": pa.array(ids, pa.string()), "download_shard": pa.array(shards, pa.string())})


def _sequence(record: dict, image_col: str) -> tuple[list[dict], dict[str, str]]:
    """The document as a list of items, and member name -> image sample_id. A text item says
    its ``source``: ``original`` (the document's) or ``synthetic`` (the caption of the image
    before it)."""
    items, members = [], {}
    sources = record.get("text_sources") or [None] * len(record["texts"])
    for text, sample_id, url, source in zip(record["texts"], record["image_ids"], record["image_urls"], sources):
        if sample_id is None:
            items.append({"type": "text", "text": text, "source": source or ORIGINAL})
            continue
        member = f"{len(members)}.{image_col}"
        members[member] = sample_id
        items.append({"type": "image", "member": member, "sample_id": sample_id, "url": url})
    return items, members


def _tar_sample(record: dict, images: dict[str, bytes], image_col: str) -> dict:
    items, members = _sequence(record, image_col)
    meta = {k: json_value(v) for k, v in record.items() if k not in ("texts", "image_ids", "image_urls", "text_sources")}
    if meta.get("metadata"):  # the input's own columns, as an object rather than a string
        meta["metadata"] = json.loads(meta["metadata"])
    sample = {"__key__": record["sample_id"],
              "json": json.dumps({**meta, "sequence": items}, ensure_ascii=False).encode("utf-8")}
    sample.update({member: images[sample_id] for member, sample_id in members.items()})
    return sample


def _parquet_chunk(meta: pa.RecordBatch, images: dict[str, bytes], schema: pa.Schema, image_col: str) -> pa.Table:
    """The OBELICS layout: ``images`` aligned with ``texts``, each image in HF datasets' Image()
    layout (its bytes, and its image id as the path), NULL at a text's position."""
    items = [[None if i is None else {"bytes": images[i], "path": f"{i}.{image_col}"} for i in ids]
             for ids in meta.column("image_ids").to_pylist()]
    column = pa.array(items, pa.list_(IMAGE_STRUCT))
    return pa.Table.from_batches([meta]).append_column("images", column).cast(schema)


def write_document_shard(rows: pa.Table, name: str, out_dir: str, downloaded_dir: str, image_col: str,
                         formats: list[str]) -> int:
    """Write one output shard of documents in every format, CHUNK_ROWS documents at a time;
    returns its document count."""
    started = time.time()
    images = ShardImages(name, _image_locations(rows), downloaded_dir, image_col)
    meta = rows.drop_columns([c for c in _LOCATION_COLUMNS if c in rows.column_names])
    # datasets.load_dataset("parquet") decodes `images` as a list of Image(); the source URLs
    # stay beside them in `image_urls`.
    schema = with_image_features(meta.schema.append(pa.field("images", pa.list_(IMAGE_STRUCT))),
                                 {"images": "image_list"})
    with ShardFiles(out_dir, name, formats, schema) as files:
        for chunk in meta.to_batches(max_chunksize=CHUNK_ROWS):
            records = chunk.to_pylist()
            # Read each image once for both formats, in document order (see ShardImages).
            data = {i: images[i] for r in records for i in r["image_ids"] if i is not None}
            if files.tar is not None:
                for record in records:
                    files.tar.write(_tar_sample(record, data, image_col))
            if files.parquet is not None:
                files.parquet.write_table(_parquet_chunk(chunk, data, schema, image_col))
    write_shard_stats(out_dir, name, rows.num_rows, started)
    return rows.num_rows
