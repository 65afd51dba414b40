"""What the model stages share: device and precision, torch threads, image decoding, and the
texts a model scores: a pair's candidate captions (the original, its alternates, then the
captioner's), a document image's document texts and synthetic captions."""

from __future__ import annotations

import io

import pyarrow as pa
from PIL import Image

from curate.stages.base import Pool


def choose_device(precision: str) -> tuple[str, str]:
    """(device, precision) inside an actor: fp16 on a GPU when 'auto', fp32 on the CPU."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if precision == "auto":
        precision = "fp16" if device == "cuda" else "fp32"
    return device, precision


def set_threads(pool: Pool | None) -> None:
    """torch's intra-op threads for an actor of ``pool`` (curate.pipeline.pools sized it)."""
    import torch

    torch.set_num_threads(pool.threads if pool else 1)


def decode_rgb(data: bytes) -> Image.Image | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except Exception:  # noqa: BLE001 - an undecodable image is scored as missing, never fatal
        return None


def decoded(batch: pa.Table, rows: list[int], image_col: str) -> list[tuple[int, Image.Image]]:
    """(row index, RGB image) for ``rows`` whose bytes decode."""
    data = batch.column(image_col).to_pylist()
    out = []
    for i in rows:
        image = decode_rgb(data[i]) if data[i] else None
        if image is not None:
            out.append((i, image))
    return out


# Models read at most a few hundred tokens; a multi-MB caption must not cost a multi-MB
# tokenization. The cut is filters.max_caption_chars: a caption longer than that is filtered
# whatever its scores (caption_too_long:<n>_chars), and every caption that can pass reaches
# the tokenizer whole, so the token counts the stages record are the caption's own.
MAX_TEXT_CHARS = 4096


def model_text(text: str | None, max_chars: int = MAX_TEXT_CHARS) -> str:
    """``text`` as a model stage hands it to its tokenizer: trimmed, cut at ``max_chars`` characters."""
    return (text or "").strip()[:max_chars]


def _lists(batch: pa.Table, name: str) -> list[list | None]:
    return batch.column(name).to_pylist() if name in batch.column_names else [None] * batch.num_rows


def candidate_texts(batch: pa.Table, rows: list[int], max_chars: int = MAX_TEXT_CHARS) -> list[list[str]]:
    """For each of ``rows``: its original caption, then its alternates (the captions of the
    other rows with its URL, curate.pipeline.same_url), then the captioner's captions (none
    where there are none). CLIP and ITM score exactly these, in this order; ``by_source``
    splits what they give back."""
    captions = batch.column("caption").to_pylist()
    alternates, synthetic = _lists(batch, "alternate_captions"), _lists(batch, "synthetic_captions")
    return [[model_text(captions[i], max_chars)] + [model_text(a, max_chars) for a in alternates[i] or []]
            + (synthetic[i] or []) for i in rows]


def alternate_counts(batch: pa.Table, rows: list[int]) -> list[int]:
    """For each of ``rows``: how many alternates follow its original in ``candidate_texts``."""
    alternates = _lists(batch, "alternate_captions")
    return [len(alternates[i] or []) for i in rows]


def by_source(values: list, alternates: int) -> tuple[object, list, list]:
    """One row's values in ``candidate_texts`` order -> (the original's, the alternates', the
    synthetic captions')."""
    return values[0], values[1 : 1 + alternates], values[1 + alternates :]


def document_texts(batch: pa.Table, rows: list[int],
                   max_chars: int = MAX_TEXT_CHARS) -> list[tuple[list[str], list[str]]]:
    """For each of ``rows`` of a documents run: (its document's texts, in order, each cut at
    ``max_chars``; its synthetic captions, none where the captioner didn't run). CLIP scores
    all of them; ITM a shortlist of the document's texts and every synthetic caption."""
    doc_texts, synthetic = batch.column("doc_texts").to_pylist(), _lists(batch, "synthetic_captions")
    return [([model_text(t, max_chars) for t in doc_texts[i] or []], list(synthetic[i] or [])) for i in rows]
