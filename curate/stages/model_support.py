"""What the model stages share: device and precision, torch threads, image decoding, and the
texts a model scores: a pair's candidate captions (the original, then the captioner's), a
document image's document texts and synthetic captions."""

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
# tokenization. Cut long before any model's context ends.
MAX_TEXT_CHARS = 2000


def model_text(text: str | None) -> str:
    return (text or "").strip()[:MAX_TEXT_CHARS]


def candidate_texts(batch: pa.Table, rows: list[int]) -> list[list[str]]:
    """For each of ``rows``: its original caption, then the captioner's captions (none where
    the captioner didn't run or is off). CLIP and ITM score exactly these, in this order."""
    captions = batch.column("caption").to_pylist()
    synthetic = (batch.column("synthetic_captions").to_pylist() if "synthetic_captions" in batch.column_names
                 else [None] * batch.num_rows)
    return [[model_text(captions[i])] + (synthetic[i] or []) for i in rows]


def document_texts(batch: pa.Table, rows: list[int]) -> list[tuple[list[str], list[str]]]:
    """For each of ``rows`` of a documents run: (its document's texts, in order; its synthetic
    captions, none where the captioner didn't run). CLIP scores all of them; ITM a shortlist
    of the document's texts and every synthetic caption."""
    doc_texts = batch.column("doc_texts").to_pylist()
    synthetic = (batch.column("synthetic_captions").to_pylist() if "synthetic_captions" in batch.column_names
                 else [None] * batch.num_rows)
    return [([model_text(t) for t in doc_texts[i] or []], list(synthetic[i] or [])) for i in rows]
