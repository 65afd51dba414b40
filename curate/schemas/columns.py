"""Arrow schemas at every step boundary of a run (docs/run-directory.md, docs/manifest.md).

prepare writes ``ROWS`` (+ ``blocked_reason``: ``PREPARED_ROWS``) to RUN/rows/ and the
download list to RUN/download_list/; img2dataset writes ``DOWNLOADED`` (+ the image column,
named after ``download.encode_format``) to RUN/downloaded/; the score step adds each
stage's ``writes`` to ``SCORED_BASE`` in RUN/scored/; the decision writes the manifest of
the run's kind (``PAIRS_MANIFEST_BASE`` + each enabled stage's manifest columns, or
``DOCUMENTS_MANIFEST`` and ``DOCUMENT_IMAGES_MANIFEST``).
"""

from __future__ import annotations

import pyarrow as pa

ROWS = pa.schema([
    ("sample_id", pa.string()),
    ("input_file", pa.string()),
    ("input_row", pa.int64()),
    ("url", pa.string()),
    ("caption", pa.string()),
    ("caption_bad_encoding", pa.bool_()),
])
# Documents runs: every image of a document is a row, carrying its document's texts.
DOCUMENT_IMAGE_ROWS = ROWS.append(pa.field("doc_id", pa.string())).append(
    pa.field("image_index", pa.int32())).append(pa.field("original_slot", pa.int32())).append(
    pa.field("doc_texts", pa.list_(pa.string())))
DOCUMENTS = pa.schema([
    ("sample_id", pa.string()),
    ("input_file", pa.string()),
    ("input_row", pa.int64()),
    ("texts", pa.list_(pa.string())),
    ("n_images_in", pa.int32()),
    ("doc_error", pa.string()),
    ("metadata", pa.string()),  # input.documents.keep_columns, as a JSON object
])
BLOCKED_REASON = pa.field("blocked_reason", pa.string())
PREPARED_ROWS = ROWS.append(BLOCKED_REASON)
# Pairs: a row whose URL another row fetches (same_url_as:<sample_id>, curate.pipeline.same_url).
SAME_URL_REASON = pa.field("same_url_reason", pa.string())
PAIRS_ROWS = PREPARED_ROWS.append(SAME_URL_REASON)
# Pairs: what a fetched row carries into RUN/downloaded/ and RUN/scored/ besides its own
# caption: the captions of the rows with its URL (NULL when there are none).
ALTERNATES = pa.schema([
    ("alternate_captions", pa.list_(pa.string())),
    ("alternate_caption_bad_encoding", pa.list_(pa.bool_())),
])

# What img2dataset writes per row (plus the image bytes, named after download.encode_format);
# curate's shard writer adds fetch_reason.
DOWNLOADED = pa.schema([
    ("sample_id", pa.string()),
    ("caption_bad_encoding", pa.bool_()),
    ("caption", pa.string()),
    ("url", pa.string()),
    ("key", pa.string()),
    ("status", pa.string()),
    ("error_message", pa.string()),
    ("fetch_reason", pa.string()),  # the verdict the fetching worker verified (curate.download.safe_downloader)
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("original_width", pa.int32()),
    ("original_height", pa.int32()),
    ("sha256", pa.string()),
])
# Per-host figures of one download shard (RUN/downloaded/NNNNN_hosts.parquet, written by
# curate.download.polite_fetch; summed over the run by the `hosts` query view).
DOWNLOAD_HOSTS = pa.schema([
    ("host", pa.string()),
    ("requests", pa.int64()),  # HTTP requests started (retries and Retry-After waits included)
    ("fetched", pa.int64()),  # rows whose body arrived
    ("failed", pa.int64()),  # rows that failed to download (any reason)
    ("http_429", pa.int64()),  # 429 answers
    ("http_5xx", pa.int64()),  # 5xx answers
    ("retry_after_waits", pa.int64()),  # times a row waited out a Retry-After instead of failing
    ("waited_seconds", pa.float64()),  # time rows waited for a start slot (limits) or a Retry-After pause
    ("shard_timeout", pa.int64()),  # rows ended by their shard's deadline
])

# Columns only the score step's batches carry: the image bytes stay in RUN/downloaded/, a
# document's texts in RUN/documents/; `_live` is the score step's own row mask.
NOT_STORED = ("doc_texts", "_live")

# The columns of RUN/scored/ that every run has (the inspect stage's writes included), so a
# view over scored/ has them even when no shard was scored (every row blocked).
# download_shard: the RUN/downloaded/ shard of the row (its scored parts are in
# RUN/scored/<download_shard>/). attempt: which download of the row this is (1 the first,
# k + 1 from the k-th `curate retry`; only retried rows carry it in their files, the views
# over scored/ give every row one: curate.core.duck.create_latest_copy_view).
SCORED_BASE = DOWNLOADED.append(pa.field("download_shard", pa.string())).append(
    pa.field("download_reason", pa.string())).append(pa.field("pixel_sha256", pa.string())).append(
    pa.field("attempt", pa.int32()))

# The pairs manifest, before the columns each enabled stage adds (clip_score, itm_prob, ...).
CAPTION_STRUCT = pa.struct([
    ("text", pa.string()),
    ("source", pa.string()),  # original | alternate | synthetic
    ("clip_score", pa.float32()),
    ("itm_prob", pa.float32()),
    ("itm_cosine", pa.float32()),
    ("clip_tokens", pa.int32()),  # its length in each text model's tokenizer, before truncation
    ("itm_tokens", pa.int32()),
    ("truncated", pa.string()),  # models that read only its first tokens: "clip:77", "clip:77,itm:512"; NULL: none
    ("kept", pa.bool_()),
    ("reason", pa.string()),  # why it failed the filter; NULL when it passed
])
PAIRS_MANIFEST_HEAD = pa.schema([
    ("sample_id", pa.string()),
    ("input_file", pa.string()),
    ("input_row", pa.int64()),
    ("url", pa.string()),
    ("caption", pa.string()),
    ("status", pa.string()),
    ("reason", pa.string()),
    ("caption_chosen", pa.string()),
    ("caption_source", pa.string()),
    ("original_caption_reason", pa.string()),
    ("captions", pa.list_(CAPTION_STRUCT)),
    # The training caption's (caption_chosen's) scores; the original's are clip_score, itm_prob.
    ("caption_clip_score", pa.float32()),
    ("caption_itm_prob", pa.float32()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("original_width", pa.int32()),
    ("original_height", pa.int32()),
    ("sha256", pa.string()),
    ("pixel_sha256", pa.string()),
])
# ... then the stages' manifest columns, then these.
MANIFEST_TAIL = pa.schema([
    ("attempts", pa.int32()),  # downloads of the row: 0 never fetched (blocked), 1, then +1 per `curate retry`
    ("download_shard", pa.string()),
    ("download_key", pa.string()),
    ("output_shard", pa.string()),
])

DOCUMENTS_MANIFEST = pa.schema([
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
    ("text_sources", pa.list_(pa.string())),  # per text position: original | synthetic (an image's caption)
    ("n_images_valid", pa.int32()),  # downloaded and passed the image rules (document_rules.FACTS)
    ("n_synthetic_texts", pa.int32()),
    ("metadata", pa.string()),
    ("image_download_shards", pa.list_(pa.string())),  # where each image's bytes are (output step)
    ("output_shard", pa.string()),
])
DOCUMENT_IMAGES_HEAD = pa.schema([
    ("sample_id", pa.string()),
    ("doc_id", pa.string()),
    ("image_index", pa.int32()),
    ("input_file", pa.string()),
    ("input_row", pa.int64()),
    ("url", pa.string()),
    ("status", pa.string()),
    ("reason", pa.string()),
    ("best_text", pa.int32()),  # the text it is most similar to
    ("original_slot", pa.int32()),
    ("slot", pa.int32()),  # kept images: placed right before this text (len(texts): at the end)
    ("text_source", pa.string()),  # kept images: original (a text of the document) | synthetic (its caption)
    ("synthetic_caption", pa.string()),  # kept images with text_source synthetic: the caption written after it
    ("placed_clip_score", pa.float32()),  # kept images: CLIP cosine to the text that follows it
    ("placed_itm_prob", pa.float32()),  # ... and its ITM P(match) (NULL outside the ITM shortlist)
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("original_width", pa.int32()),
    ("original_height", pa.int32()),
    ("sha256", pa.string()),
    ("pixel_sha256", pa.string()),
])


def concat_schemas(*schemas: pa.Schema) -> pa.Schema:
    """Fields of ``schemas`` in order, a name's first occurrence winning."""
    fields: dict[str, pa.Field] = {}
    for schema in schemas:
        for field in schema:
            fields.setdefault(field.name, field)
    return pa.schema(list(fields.values()))
