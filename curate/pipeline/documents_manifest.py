"""Step 4 of a documents run: decide every image and every document from stored results.

Images first, in SQL, first match wins: blocked -> download_failed -> filtered (image
rules; ``document_has_no_text``; ``sim_below`` interleaved.min_sim) -> duplicate (the
dedupe stage, across all documents) -> kept. Then each document, in Python
(curate.stages.interleave): cap, place, document rules; an image dropped there gets its
reason. Writes ``RUN/manifest/`` (one row per input document, its interleaved sequence)
and ``RUN/manifest_images/`` (one row per image of every document). No model runs, so a
refilter can re-decide at new ``interleaved.*`` thresholds.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from curate.core import duck, storage
from curate.core.config import CurateConfig
from curate.pipeline.documents_input import DOCUMENTS_SCHEMA
from curate.pipeline.manifest import MANIFEST_ROW_GROUP
from curate.core.rundir import RunDir
from curate.schemas.status import fmt_threshold
from curate.stages import interleave
from curate.stages.download import BLOCKED_AT_DOWNLOAD

MANIFEST_SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("input_file", pa.string()),
    ("input_row", pa.int64()),
    ("status", pa.string()),
    ("reason", pa.string()),
    ("n_texts", pa.int32()),
    ("n_words", pa.int32()),
    ("n_images_in", pa.int32()),
    ("n_images_kept", pa.int32()),
    # The kept document in the OBELICS layout: aligned lists, a text or an image per position.
    ("texts", pa.list_(pa.string())),
    ("image_ids", pa.list_(pa.string())),
    ("image_urls", pa.list_(pa.string())),
    ("metadata", pa.string()),
    ("image_download_shards", pa.list_(pa.string())),  # where each image's bytes are (output step)
    ("output_shard", pa.string()),
])
IMAGES_SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("doc_id", pa.string()),
    ("image_index", pa.int32()),
    ("input_file", pa.string()),
    ("input_row", pa.int64()),
    ("url", pa.string()),
    ("status", pa.string()),
    ("reason", pa.string()),
    ("clip_score", pa.float32()),  # best cosine to any text of the document
    ("best_text", pa.int32()),  # the text it is most similar to
    ("original_slot", pa.int32()),
    ("slot", pa.int32()),  # kept images: placed right before this text (len(texts): at the end)
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("original_width", pa.int32()),
    ("original_height", pa.int32()),
    ("sha256", pa.string()),
    ("pixel_sha256", pa.string()),
    ("download_shard", pa.string()),
    ("download_key", pa.string()),
])


def images_decided_sql(cfg: CurateConfig) -> str:
    min_sim = cfg.interleaved.min_sim
    return f"""
        SELECT r.sample_id, r.doc_id, r.image_index, r.input_file, r.input_row, r.url, r.original_slot,
               CASE WHEN r.blocked_reason IS NOT NULL THEN 'blocked'
                    WHEN split_part(s.download_reason, ':', 1) IN {BLOCKED_AT_DOWNLOAD} THEN 'blocked'
                    WHEN s.sample_id IS NULL OR s.download_reason IS NOT NULL THEN 'download_failed'
                    WHEN s.image_reject IS NOT NULL OR len(r.doc_texts) = 0
                         OR s.clip_score IS NULL OR s.clip_score < {min_sim} THEN 'filtered'
                    ELSE 'kept' END AS status,
               CASE WHEN r.blocked_reason IS NOT NULL THEN r.blocked_reason
                    WHEN s.sample_id IS NULL THEN 'missing_from_downloader'
                    WHEN s.download_reason IS NOT NULL THEN s.download_reason
                    WHEN s.image_reject IS NOT NULL THEN s.image_reject
                    WHEN len(r.doc_texts) = 0 THEN 'document_has_no_text'
                    WHEN s.clip_score IS NULL OR s.clip_score < {min_sim}
                         THEN 'sim_below:{fmt_threshold(min_sim)}' END AS reason,
               s.clip_score, s.sentence_sims,
               CAST(list_position(s.sentence_sims, list_max(s.sentence_sims)) - 1 AS INTEGER) AS best_text,
               s.width, s.height, s.original_width, s.original_height, s.sha256, s.pixel_sha256,
               substr(s.key, 1, 5) AS download_shard, s.key AS download_key
        FROM rows r LEFT JOIN scored s USING (sample_id)
    """


def decide_images(cfg: CurateConfig, run: RunDir, progress=None):
    """A DuckDB connection with ``images``: every image decided up to and including dedupe
    (``progress``, when given, gets the ``dedupe`` entry)."""
    from curate.pipeline.manifest import open_run_views, with_duplicates_sql
    from curate.stages.dedupe_stage import find_duplicates

    con = open_run_views(run, cfg)
    con.execute(f"CREATE OR REPLACE TABLE decided AS {images_decided_sql(cfg)}")
    # The dedupe stage ranks copies by the score of a sample's caption; an image's is its best
    # similarity to its document.
    con.execute("CREATE OR REPLACE VIEW captions_decided AS SELECT sample_id, clip_score AS chosen_clip_score, "
                "NULL::FLOAT AS chosen_itm_prob FROM decided")
    con.register("duplicates", find_duplicates(con, cfg, run, progress))
    con.execute(f"CREATE OR REPLACE TABLE images AS {with_duplicates_sql()}")
    return con


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


def _image_row(row: dict, image: interleave.Image) -> dict:
    out = {name: row.get(name) for name in IMAGES_SCHEMA.names}
    out.update(status=image.status, reason=image.reason, slot=image.slot)
    return out


class _ShardCounter:
    """Kept documents go to output shards of ``samples_per_shard``, in sample_id order."""

    def __init__(self, per_shard: int):
        self.per_shard, self.kept = per_shard, 0

    def next(self) -> str:
        shard = f"{self.kept // self.per_shard:05d}"
        self.kept += 1
        return shard


def decide_part(con, cfg: CurateConfig, docs: pa.Table, counter: _ShardCounter) -> tuple[pa.Table, pa.Table]:
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
        row = _manifest_row(doc, source, rows_by_id)
        if doc.status == "kept":
            row["output_shard"] = counter.next()
        manifest.append(row)
        images.extend(_image_row(rows_by_id[im.sample_id], im) for im in doc.images)
    return (pa.Table.from_pylist(manifest, schema=MANIFEST_SCHEMA),
            pa.Table.from_pylist(images, schema=IMAGES_SCHEMA))


def _decided_parts(con, cfg: CurateConfig, run: RunDir):
    """(part name, manifest rows, image rows) per RUN/documents part, in sample_id order."""
    counter = _ShardCounter(cfg.output.samples_per_shard)
    for uri in storage.list_files(run.documents, ".parquet"):
        manifest, images = decide_part(con, cfg, storage.read_parquet([uri]).cast(DOCUMENTS_SCHEMA), counter)
        yield uri.rsplit("/", 1)[-1], manifest, images


def preview_documents(cfg: CurateConfig, run: RunDir) -> tuple[pa.Table, pa.Table]:
    """(manifest, manifest_images) that ``cfg`` would give for a scored run; nothing is written."""
    con = decide_images(cfg, run)
    try:
        parts = list(_decided_parts(con, cfg, run))
    finally:
        con.close()
    return (pa.concat_tables([m for _, m, _ in parts] or [MANIFEST_SCHEMA.empty_table()]),
            pa.concat_tables([i for _, _, i in parts] or [IMAGES_SCHEMA.empty_table()]))


def build_documents_manifest(cfg: CurateConfig, run: RunDir, progress=None) -> int:
    """Write RUN/manifest/ and RUN/manifest_images/ (one part per input file); returns documents."""
    from curate.stages.dedupe_stage import save_kept_index

    con = decide_images(cfg, run, progress)
    for directory in (run.manifest, run.manifest_images):
        storage.remove_tree(directory)
    total = 0
    for name, manifest, images in _decided_parts(con, cfg, run):
        storage.write_parquet(storage.join(run.manifest, name), manifest, MANIFEST_ROW_GROUP)
        storage.write_parquet(storage.join(run.manifest_images, name), images)
        total += manifest.num_rows
    if total == 0:  # no input document at all: still a readable, empty manifest
        storage.write_parquet(storage.join(run.manifest, "part-00000.parquet"), MANIFEST_SCHEMA.empty_table())
    image_files = storage.list_files(run.manifest_images, ".parquet")
    duck.create_parquet_view(con, "manifest_final", image_files, IMAGES_SCHEMA)  # kept images -> dedupe_index/
    save_kept_index(con, run)
    con.close()
    return total


def document_summary(run: RunDir) -> dict:
    """Statuses of the images of a documents run (the summary's ``images`` entry)."""
    files = storage.list_files(run.manifest_images, ".parquet")
    if not files:
        return {}
    statuses = storage.read_parquet(files, columns=["status"]).column("status").to_pylist()
    return dict(Counter(statuses).most_common())
