"""Read interleaved web documents (``input.kind: documents``) into documents and image rows.

Two layouts are read (docs/formats.md), from jsonl or Parquet, local or in a bucket:

- ``obelics``: ``texts`` and ``images``, two aligned lists; each position holds a text
  paragraph or an image URL (the other one null).
- ``mmc4``: ``text_list`` (sentences) and ``image_info`` (structs with the URL in
  ``raw_url`` and the sentence the image sits at in ``matched_text_index``).

Both become one normalised document: its ``texts`` in order and, per image, the slot it
had in the input (``original_slot`` = the index of the text it came before; ``len(texts)``
means after the last text). A document's sample_id is ``FFFFF-RRRRRRRRRR`` as for pairs;
its images are ``FFFFF-RRRRRRRRRR-IIIII``, so they sort under their document. The images
become ordinary rows for the download and CLIP stages, each carrying its document's texts
(``doc_texts``) so CLIP can score it against every one of them.

A row that isn't a document (lists of different lengths, a URL that isn't a string) is
recorded with ``doc_error`` and never reaches a model: nothing is dropped silently.
"""

from __future__ import annotations

import json
import re

import pyarrow as pa

from curate.core.config import DocumentsInputConfig, InputConfig
from curate.core.input_decoding import open_input
from curate.core.inputs import InputError, InputFile, read_raw, sample_id
from curate.schemas import reasons as R
from curate.schemas.columns import DOCUMENT_IMAGE_ROWS, DOCUMENTS

# A row beyond these is not a web page (OBELICS keeps pages of at most 30 images): it is
# recorded as malformed before anything is downloaded or scored, so one hostile row can't
# make the run fetch millions of URLs or score one image against millions of texts.
MAX_IMAGES_PER_DOCUMENT = 1_000
MAX_TEXTS_PER_DOCUMENT = 10_000

def image_id(doc_id: str, index: int) -> str:
    return f"{doc_id}-{index:05d}"


def _text(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, default=str)  # a number or object where text belongs: keep its text form


def _url(value):
    if value is not None and not isinstance(value, str):
        raise ValueError("image_url_not_a_string")
    return value.strip() if value else value


def parse_obelics(row: dict, cfg: DocumentsInputConfig) -> tuple[list[str], list[tuple[str | None, int]]]:
    """-> (texts, [(url, original_slot)]) of one OBELICS-style row; ValueError names what's wrong."""
    texts, images = row.get(cfg.texts_col), row.get(cfg.images_col)
    if not isinstance(texts, list) or not isinstance(images, list):
        raise ValueError("texts_or_images_not_a_list")
    if len(texts) != len(images):
        raise ValueError("texts_and_images_differ_in_length")
    out_texts, out_images = [], []
    for text, url in zip(texts, images):
        if text is not None and url is not None:
            raise ValueError("text_and_image_at_one_position")
        if url is not None:
            out_images.append((_url(url), len(out_texts)))
        elif text is not None:
            out_texts.append(_text(text))
    return out_texts, out_images


def parse_mmc4(row: dict, cfg: DocumentsInputConfig) -> tuple[list[str], list[tuple[str | None, int]]]:
    texts, info = row.get(cfg.text_list_col), row.get(cfg.image_info_col)
    if not isinstance(texts, list) or not isinstance(info, list):
        raise ValueError("text_list_or_image_info_not_a_list")
    out_texts = [_text(t) for t in texts if t is not None]
    out_images = []
    for entry in info:
        if not isinstance(entry, dict):
            raise ValueError("image_info_entry_not_an_object")
        position = entry.get(cfg.position_field) if cfg.position_field else None
        slot = position if isinstance(position, int) and 0 <= position < len(out_texts) else len(out_texts)
        out_images.append((_url(entry.get(cfg.url_field)), slot))
    return out_texts, out_images


PARSERS = {"obelics": parse_obelics, "mmc4": parse_mmc4}


def _metadata(row: dict | ValueError, keep: list[str]) -> str | None:
    if not keep or not isinstance(row, dict):
        return None
    return json.dumps({c: row.get(c) for c in keep}, default=str, ensure_ascii=False)


def _required_columns(cfg: DocumentsInputConfig) -> list[tuple[str, str]]:
    if cfg.layout == "obelics":
        pairs = [("input.documents.texts_col", cfg.texts_col), ("input.documents.images_col", cfg.images_col)]
    else:
        pairs = [("input.documents.text_list_col", cfg.text_list_col),
                 ("input.documents.image_info_col", cfg.image_info_col)]
    return pairs + [("input.documents.keep_columns", c) for c in cfg.keep_columns]


def _jsonl_rows(uri: str, encoding: str = "utf-8") -> list[dict | ValueError]:
    """Each line of a jsonl file as a dict, or the ValueError that says why it isn't one.

    Parsed with the json module, not pyarrow's JSON reader: that reader corrupts list columns
    whose lists start with null (apache/arrow#51305), common in OBELICS rows, and one odd
    row would otherwise fail the type inference of the whole file.
    """
    rows: list[dict | ValueError] = []
    with open_input(uri, encoding) as handle:  # decompressed, UTF-8
        for line in handle:
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError:
                rows.append(ValueError("invalid_json"))
                continue
            rows.append(value if isinstance(value, dict) else ValueError("not_a_json_object"))
    return rows


def _read_rows(item: InputFile, cfg: InputConfig) -> list[dict | ValueError]:
    try:
        rows = _jsonl_rows(item.uri, cfg.encoding) if cfg.format == "jsonl" else read_raw(item.uri, cfg).to_pylist()
    except (pa.ArrowInvalid, OSError, ValueError) as error:
        raise InputError(f"input file {item.uri} is not valid {cfg.format}: {error}") from None
    columns = {c for row in rows if isinstance(row, dict) for c in row}
    for role, col in _required_columns(cfg.documents):
        if rows and col not in columns:
            raise InputError(f"{role}: column {col!r} not found in {item.uri}; its columns are {sorted(columns)}")
    return rows


def _problem_code(problem: ValueError) -> str:
    """The parsers raise fixed codes (``texts_and_images_differ_in_length``); any other
    ValueError's text is not a reason: it becomes ``unreadable_row``."""
    text = str(problem)
    return text if re.fullmatch(r"[a-z0-9_]{1,80}", text) else "unreadable_row"


def read_documents_file(item: InputFile, cfg: InputConfig) -> tuple[pa.Table, pa.Table]:
    """One input file -> (documents, image rows)."""
    parse = PARSERS[cfg.documents.layout]
    keep = cfg.documents.keep_columns
    docs, images = [], []
    for r, row in enumerate(_read_rows(item, cfg)):
        doc_id = sample_id(item.index, r)
        texts, found, error = [], [], None
        try:
            if isinstance(row, ValueError):
                raise row
            texts, found = parse(row, cfg.documents)
            if len(found) > MAX_IMAGES_PER_DOCUMENT:
                raise ValueError(f"more_than_{MAX_IMAGES_PER_DOCUMENT}_images")
            if len(texts) > MAX_TEXTS_PER_DOCUMENT:
                raise ValueError(f"more_than_{MAX_TEXTS_PER_DOCUMENT}_texts")
        except ValueError as problem:
            texts, found, error = [], [], R.MALFORMED_DOCUMENT(_problem_code(problem))
        docs.append({
            "sample_id": doc_id, "input_file": item.uri, "input_row": r, "texts": texts,
            "n_images_in": len(found), "doc_error": error,
            "metadata": _metadata(row, keep),
        })
        for k, (url, slot) in enumerate(found):
            images.append({
                "sample_id": image_id(doc_id, k), "input_file": item.uri, "input_row": r, "url": url,
                "caption": None, "caption_bad_encoding": False, "doc_id": doc_id, "image_index": k,
                "original_slot": slot, "doc_texts": texts,
            })
    return (pa.Table.from_pylist(docs, schema=DOCUMENTS),
            pa.Table.from_pylist(images, schema=DOCUMENT_IMAGE_ROWS))
