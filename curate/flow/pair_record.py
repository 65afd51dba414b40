"""A kept pair as a trainer reads it: the record of one shard sample, its key and its uid.

The record is the same in both output formats (``KEY.json`` in the tar, the columns of the
Parquet shard) and is laid out for the loaders people train with (docs/ecosystem.md):

- ``key``: the sample_id's digits (``00000-0000000012`` -> ``000000000000012``), numeric as
  img2dataset's keys are, so tools that parse keys as integers (NeMo Curator) accept it, and
  derived from the sample, so a refilter that moves samples between shards keeps their keys;
- ``uid``: DataComp's 128-bit hex id, the md5 of the URL and the alt-text as given: the same
  sample has the same uid in any run, so a uid subset selects across runs (DataComp's
  resharder reads it from the json);
- ``caption``: the training caption (the ``.txt``), as img2dataset's ``caption`` is the
  ``.txt``; the input's alt-text is ``alt_text``, with the reason it was not used
  (``alt_text_reason``, ``""`` when it was used or passed);
- ``clip_score``, ``itm_prob``, ``itm_cosine``: of the training caption; the alt-text's own
  under ``alt_text_<score>``;
- every field is present in every record with one type: strings are ``""`` rather than
  NULL, so loaders that infer types from the first samples (``datasets``) never see a NULL
  column turn into a string. A score is NULL only when its stage was off for the whole run.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

from curate.flow.hf_features import IMAGE_STRUCT, with_image_features
from curate.flow.shards import json_value

# Scores each candidate caption carries (the manifest's ``captions`` structs).
CAPTION_SCORES = ("clip_score", "itm_prob", "itm_cosine")
# Its length in each text model's tokenizer, and which models read only part of it: the
# manifest's record of how it was scored, not part of a training record.
CAPTION_TOKENS = ("clip_tokens", "itm_tokens")
SCORING_ONLY = ("kept", "reason", *CAPTION_TOKENS, "truncated")
# Manifest columns that say where the bytes are or why, not what the sample is; and the
# dedupe stage's duplicate_kind, NULL for every kept sample.
LEFT_OUT = ("attempts", "download_shard", "download_key", "output_shard", "status", "reason", "duplicate_kind")


def output_key(sample_id: str) -> str:
    """The shard key of a sample: its sample_id's digits."""
    return sample_id.replace("-", "")


def sample_uid(url: str | None, alt_text: str | None) -> str:
    """DataComp-style uid: 32 hex digits, the md5 of the URL and the alt-text as given."""
    text = f"{url or ''}\n{alt_text or ''}"
    return hashlib.md5(text.encode("utf-8", errors="surrogatepass")).hexdigest()


def record_schema(manifest: pa.Schema) -> pa.Schema:
    """The record's fields and types, from the run's manifest schema (its stages' columns)."""
    caption_item = manifest.field("captions").type.value_type
    scores = [s for s in CAPTION_SCORES if s in manifest.names]
    fields = [
        pa.field("key", pa.string()), pa.field("uid", pa.string()), pa.field("sample_id", pa.string()),
        pa.field("url", pa.string()), pa.field("caption", pa.string()), pa.field("caption_source", pa.string()),
        *[pa.field(s, pa.float32()) for s in scores],
        pa.field("alt_text", pa.string()), pa.field("alt_text_reason", pa.string()),
        *[pa.field(f"alt_text_{s}", pa.float32()) for s in scores],
        pa.field("captions", pa.list_(pa.struct([f for f in caption_item if f.name not in SCORING_ONLY]))),
    ]
    handled = {"sample_id", "url", "caption", "caption_chosen", "caption_source", "original_caption_reason",
               "captions", "caption_clip_score", "caption_itm_prob", *scores, *LEFT_OUT}
    fields += [f for f in manifest if f.name not in handled]
    return pa.schema(fields)


def training_record(row: dict, schema: pa.Schema) -> dict:
    """One kept manifest row as the record of ``schema`` (record_schema): every field, in order."""
    kept = [c for c in row.get("captions") or [] if c["kept"]]
    chosen = next((c for c in kept if c["text"] == row["caption_chosen"] and c["source"] == row["caption_source"]),
                  {})
    out = {
        "key": output_key(row["sample_id"]),
        "uid": sample_uid(row["url"], row["caption"]),
        "caption": row["caption_chosen"] or "",
        "caption_source": row["caption_source"] or "",
        "alt_text": row["caption"] or "",
        "alt_text_reason": row["original_caption_reason"] or "",
        "captions": [{k: json_value(v) for k, v in c.items() if k not in SCORING_ONLY} for c in kept],
    }
    for score in CAPTION_SCORES:
        out[score] = json_value(chosen.get(score))
        out[f"alt_text_{score}"] = json_value(row.get(score))
    record = {}
    for field in schema:
        value = out[field.name] if field.name in out else json_value(row.get(field.name))
        if value is None and pa.types.is_string(field.type):
            value = ""
        record[field.name] = value
    return record


def parquet_schema(record: pa.Schema, image_col: str) -> pa.Schema:
    """The Parquet shard: the record's columns and the image, in HF datasets' Image() layout,
    with the feature in the schema metadata (curate.flow.hf_features)."""
    return with_image_features(record.append(pa.field(image_col, IMAGE_STRUCT)), {image_col: "image"})
