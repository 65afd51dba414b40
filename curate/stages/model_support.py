"""What the model stages share: device and precision, torch threads, image decoding, and the
candidate texts of a pair (the original caption, then the captioner's)."""

from __future__ import annotations

import io

import pyarrow as pa
from PIL import Image

from curate.core.config import ModelComputeConfig


def choose_device(precision: str) -> tuple[str, str]:
    """(device, precision) inside an actor: fp16 on a GPU when 'auto', fp32 on the CPU."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if precision == "auto":
        precision = "fp16" if device == "cuda" else "fp32"
    return device, precision


def set_threads(cfg: ModelComputeConfig) -> None:
    import torch

    torch.set_num_threads(cfg.threads or max(1, int(cfg.num_cpus)))


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


def candidate_texts(batch: pa.Table, rows: list[int], max_chars: int = MAX_TEXT_CHARS) -> list[list[str]]:
    """For each of ``rows``: its original caption, then the captioner's captions (none where
    the captioner didn't run or is off). CLIP and ITM score exactly these, in this order."""
    captions = batch.column("caption").to_pylist()
    synthetic = (batch.column("synthetic_captions").to_pylist() if "synthetic_captions" in batch.column_names
                 else [None] * batch.num_rows)
    return [[model_text(captions[i], max_chars)] + (synthetic[i] or []) for i in rows]

