"""Documents: interleaved web pages (``input.kind: documents``), OBELICS or MMC4 layout.

Every image of a document is an image row of the common flow (download, score, image rules,
dedupe across all documents), carrying its document's texts so CLIP scores it against each.
The kind adds two image rules (``document_has_no_text``; ``sim_below``: best CLIP cosine to
any text below ``interleaved.min_sim``) and decides each document in Python
(curate.flow.interleave): cap, place, document rules; an image dropped there gets its
reason. It writes ``RUN/manifest/`` (one row per input document, its interleaved sequence)
and ``RUN/manifest_images/`` (one row per image of every document).

Output shards (docs/formats.md): Parquet in the OBELICS layout (``texts`` and ``images``
aligned, each position a text or an image's bytes) and WebDataset (``DOC.json`` with the
document's ``sequence``, each image the member ``DOC.<k>.<ext>``).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import TYPE_CHECKING

import pyarrow as pa

from curate.core import duck, storage
from curate.core.config import CurateConfig
from curate.core.inputs import InputPart
from curate.core.rundir import RunDir
from curate.flow import interleave
from curate.flow.decision import ATTEMPTS_SQL
from curate.flow.documents_input import read_documents_part
from curate.flow.kind import Kind
from curate.flow.hf_features import IMAGE_STRUCT, with_image_features
from curate.flow.shards import CHUNK_ROWS, ShardFiles, ShardImages, json_value, write_shard_stats
from curate.schemas import columns
from curate.schemas import reasons as R
from curate.schemas.reasons import fmt_threshold
from curate.schemas.status import Status
from curate.stages.base import Rule

if TYPE_CHECKING:
    from curate.flow.plan import Plan

MANIFEST_ROW_GROUP = 10_000


class DocumentsKind(Kind):
    name = "documents"
    rows_schema = columns.DOCUMENT_IMAGE_ROWS.append(columns.BLOCKED_REASON)
    download_columns = ("sample_id", "url", "caption", "caption_bad_encoding", "doc_texts")
    thresholds = ("interleaved.",)

    def check(self, plan: Plan) -> None:
        from curate.core.config import ConfigError

        if self.cfg.input.format in ("csv", "tsv"):
            raise ConfigError("input.kind documents reads jsonl or parquet (its rows hold lists), not csv/tsv")
        if "sentence_sims" not in plan.written:
            raise ConfigError("input.kind documents places images next to texts by CLIP similarity: set clip.model")
        for stage in plan.unsupported():
            raise ConfigError(
                f"input.kind documents: the {stage.key} stage is built for {', '.join(stage.kinds)} runs only; "
                f"unset {stage.switch} (captioning and ITM filtering of document images are not built yet)"
            )

    def read(self, part: InputPart, run: RunDir) -> pa.Table:
        docs, images = read_documents_part(part, self.cfg.input)
        storage.write_parquet(storage.join(run.documents, f"part-{part.name}.parquet"), docs)
        return images

    def image_rules(self) -> list[Rule]:
        min_sim = self.cfg.interleaved.min_sim
        return [
            Rule.fixed("len(doc_texts) = 0", R.DOCUMENT_HAS_NO_TEXT),
            Rule.fixed(f"clip_score IS NULL OR clip_score < {min_sim!r}", R.SIM_BELOW, fmt_threshold(min_sim)),
        ]

    def decide(self, con, plan: Plan) -> None:
        # Dedupe ranks copies by the score of a sample's text; an image's is its best
        # similarity to its document.
        con.execute("""
            CREATE OR REPLACE TABLE decided AS
            SELECT i.sample_id, i.status, i.reason, j.clip_score AS chosen_clip_score, NULL::FLOAT AS chosen_itm_prob
            FROM image_decisions i JOIN joined j USING (sample_id)
        """)

    def manifest_schema(self, plan: Plan) -> pa.Schema:
        return columns.DOCUMENTS_MANIFEST

    def images_schema(self, plan: Plan) -> pa.Schema:
        return columns.concat_schemas(columns.DOCUMENT_IMAGES_HEAD, *(s.manifest_schema() for s in plan.stages),
                                      columns.MANIFEST_TAIL.remove(columns.MANIFEST_TAIL.get_field_index("output_shard")))

    def _images_table(self, con, plan: Plan) -> None:
        """``images``: every image row with its decision, as placement reads it."""
        stage_columns = "".join(f", {c}" for s in plan.stages for c in s.manifest)
        con.execute(f"""
            CREATE OR REPLACE TABLE images AS
            SELECT sample_id, doc_id, image_index, input_file, input_row, url, original_slot, f.status, f.reason,
                   sentence_sims, CAST(list_position(sentence_sims, list_max(sentence_sims)) - 1 AS INTEGER) AS best_text,
                   width, height, original_width, original_height, sha256, pixel_sha256 {stage_columns},
                   {ATTEMPTS_SQL} AS attempts, download_shard, key AS download_key
            FROM joined JOIN final f USING (sample_id)
        """)

    def write_partition(self, con, plan: Plan, name: str, files, out) -> dict:
        """Each RUN/documents part of the partition -> its manifest and manifest_images parts
        (one row per document, one per image); output shards are numbered later."""
        self._images_table(con, plan)
        schema = self.images_schema(plan)
        written, statuses, reasons, images_by_status = [], Counter(), Counter(), Counter()
        for uri in files.documents:
            docs = storage.read_parquet([uri]).cast(columns.DOCUMENTS)
            manifest, images = decide_part(con, self.cfg, docs, schema)
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


def _document(doc: dict, image_rows: list[dict]) -> interleave.Document:
    images = [
        interleave.Image(r["sample_id"], r["image_index"], r["original_slot"], r["sentence_sims"] or [],
                         r["status"], r["reason"])
        for r in image_rows
    ]
    return interleave.Document(doc["sample_id"], doc["texts"] or [], images, doc["doc_error"])


def _sequence_columns(doc: interleave.Document, rows_by_id: dict[str, dict]) -> dict[str, list | None]:
    """A kept document's sequence as aligned lists, a text or an image per position (all NULL
    for a dropped document)."""
    names = ("texts", "image_ids", "image_urls", "image_download_shards")
    if not doc.sequence:
        return dict.fromkeys(names)
    columns: dict[str, list] = {name: [] for name in names}
    for kind, item in doc.sequence:
        image = rows_by_id[item.sample_id] if kind == "image" else {}
        columns["texts"].append(item if kind == "text" else None)
        columns["image_ids"].append(image.get("sample_id"))
        columns["image_urls"].append(image.get("url"))
        columns["image_download_shards"].append(image.get("download_shard"))
    return columns


def _manifest_row(doc: interleave.Document, source: dict, rows_by_id: dict[str, dict]) -> dict:
    return {
        "sample_id": doc.sample_id, "input_file": source["input_file"], "input_row": source["input_row"],
        "status": doc.status, "reason": doc.reason, "n_texts": len(doc.texts), "n_words": doc.words,
        "n_images_in": source["n_images_in"], "n_images_kept": len(doc.placed), "metadata": source["metadata"],
        **_sequence_columns(doc, rows_by_id), "output_shard": None,
    }


def _image_row(row: dict, image: interleave.Image, schema: pa.Schema) -> dict:
    out = {name: row.get(name) for name in schema.names}
    out.update(status=image.status, reason=image.reason, slot=image.slot)
    return out


def statuses_kept(rows: list[dict]) -> int:
    return sum(r["status"] == Status.KEPT for r in rows)


def decide_part(con, cfg: CurateConfig, docs: pa.Table, images_schema: pa.Schema) -> tuple[pa.Table, pa.Table]:
    """Decide the documents of one RUN/documents part -> (manifest rows, image rows)."""
    prefix = docs.column("sample_id")[0].as_py()[:6] if docs.num_rows else None
    image_rows = [] if prefix is None else duck.fetch_table(
        con, f"SELECT * FROM images WHERE starts_with(sample_id, {duck.sql_string(prefix)}) ORDER BY sample_id"
    ).to_pylist()
    by_doc: dict[str, list[dict]] = {}
    for row in image_rows:
        by_doc.setdefault(row["doc_id"], []).append(row)
    rows_by_id = {row["sample_id"]: row for row in image_rows}
    manifest, images = [], []
    for source in docs.to_pylist():
        doc = interleave.decide_document(_document(source, by_doc.get(source["sample_id"], [])), cfg.interleaved)
        manifest.append(_manifest_row(doc, source, rows_by_id))
        images.extend(_image_row(rows_by_id[im.sample_id], im, images_schema) for im in doc.images)
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
    """The document as a list of items, and member name -> image sample_id."""
    items, members = [], {}
    for text, sample_id, url in zip(record["texts"], record["image_ids"], record["image_urls"]):
        if sample_id is None:
            items.append({"type": "text", "text": text})
            continue
        member = f"{len(members)}.{image_col}"
        members[member] = sample_id
        items.append({"type": "image", "member": member, "sample_id": sample_id, "url": url})
    return items, members


def _tar_sample(record: dict, images: dict[str, bytes], image_col: str) -> dict:
    items, members = _sequence(record, image_col)
    meta = {k: json_value(v) for k, v in record.items() if k not in ("texts", "image_ids", "image_urls")}
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
