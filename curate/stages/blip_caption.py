"""Captioner stage: K synthetic captions per image from a BLIP captioner (CapFilt's "Cap").

Batched ``generate()``: nucleus sampling (``caption.top_p``, 0.9 as in BLIP) with K
return sequences per image, or beam search keeping the K best beams. An optional
``caption.prompt`` ("a picture of") conditions the decoder and is stripped from the
result. Runs before the CLIP and ITM stages, which score every synthetic caption.

Only images that passed the image rules are captioned (``caption.rejected_images``
widens that): captioning is the most expensive stage, and a rejected image's sample is
filtered whatever its caption.

Sampling is seeded per batch from ``caption.seed`` and the batch's sample_ids, so a
batch gets the same captions every time it runs.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

from curate.core.config import CaptionConfig
from curate.stages.base import IMAGE, BatchStage


def clean_captions(texts: list[str], prompt: str | None) -> list[str]:
    """Strip the prompt and whitespace; drop empty and repeated captions, keeping order."""
    out: list[str] = []
    for text in texts:
        text = " ".join(text.split())
        if prompt and text.lower().startswith(prompt.lower()):
            text = text[len(prompt):].strip()
        if text and text not in out:
            out.append(text)
    return out


def generation_kwargs(cfg: CaptionConfig) -> dict:
    common = {"max_new_tokens": cfg.max_new_tokens, "num_return_sequences": cfg.num_captions}
    if cfg.mode == "beam":
        return {**common, "num_beams": cfg.num_beams, "do_sample": False}
    # top_k=0: pure nucleus sampling as BLIP does (generate() would otherwise also apply top_k=50).
    return {**common, "do_sample": True, "top_p": cfg.top_p, "top_k": 0}


class CaptionStage(BatchStage):
    """BLIP captioner: K synthetic captions per live image (CapFilt's "Cap"; Li et al. 2022, "BLIP")."""

    key = "caption"
    switch = "caption.model"
    reads = (IMAGE,)
    writes = pa.schema([("synthetic_captions", pa.list_(pa.string()))])
    kinds = ("pairs",)
    uses_model = True

    @property
    def compute(self) -> CaptionConfig:
        return self.cfg.caption

    @property
    def rows(self) -> str:  # type: ignore[override]
        # Captioning is the most expensive stage: rejected images only when asked for.
        return "downloaded" if self.cfg.caption.rejected_images else "live"

    def configured(self) -> bool:
        return self.cfg.captioning

    def check(self) -> None:
        from curate.models import blip

        blip.check(self.cfg.caption.model, "caption.model", "caption")

    def setup(self) -> None:
        import torch

        from curate.models import blip
        from curate.stages.model_support import choose_device, set_threads

        cfg = self.cfg.caption
        set_threads(cfg)
        self.device, precision = choose_device(cfg.precision)
        self.model, self.processor = blip.load(
            blip.resolve(cfg.model, "caption.model"), "caption", "caption.model", self.device, precision
        )
        self.dtype = next(self.model.parameters()).dtype
        self.torch = torch

    def generate(self, images, seed: int) -> list[list[str]]:
        torch = self.torch
        cfg = self.cfg.caption
        prompt = cfg.prompt
        inputs = self.processor(images=images, text=[prompt] * len(images) if prompt else None, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        torch.manual_seed(seed)
        with torch.inference_mode():
            ids = self.model.generate(**inputs, **generation_kwargs(cfg))
        texts = self.processor.batch_decode(ids, skip_special_tokens=True)
        k = cfg.num_captions
        return [clean_captions(texts[j * k : (j + 1) * k], prompt) for j in range(len(images))]

    def __call__(self, batch: pa.Table) -> pa.Table:
        from curate.stages.model_support import decoded

        captions: list[list[str] | None] = [None] * batch.num_rows
        todo = decoded(batch, self.todo(batch), self.image_col)
        if todo:
            generated = self.generate([image for _, image in todo], self._seed(batch))
            for (i, _), texts in zip(todo, generated):
                captions[i] = texts
        return self.append(batch, {"synthetic_captions": captions})

    def _seed(self, batch: pa.Table) -> int:
        ids = "\n".join(sorted(batch.column("sample_id").to_pylist()))
        return (self.cfg.caption.seed * 1_000_003 + int(hashlib.sha1(ids.encode()).hexdigest()[:8], 16)) % 2**31
