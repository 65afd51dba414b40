"""Captioner stage: K synthetic captions per image from a BLIP captioner (CapFilt's "Cap").

Batched ``generate()``: nucleus sampling (``caption.top_p``, 0.9 as in BLIP) with K
return sequences per image, or beam search keeping the K best beams. An optional
``caption.prompt`` ("a picture of") conditions the decoder and is stripped from the
result. Runs before the CLIP and ITM stages, which score every synthetic caption.

Only images that passed the image rules are captioned (``caption.rejected_images``
widens that): captioning is the most expensive stage, and a rejected image's sample is
filtered whatever its caption.

Documents runs: every live image is captioned, described by a sentence of its document or
not. Which images no sentence describes is known only once CLIP has scored them, and CLIP
scores the synthetic captions in the same pass, so the captioner runs first; and with the
captions stored, ``curate refilter`` can change ``interleaved.min_sim`` or
``interleaved.caption_unmatched`` without a model (curate.flow.documents decides which
images get theirs).

Sampling is seeded per caption from ``caption.seed``, the image's sample_id and the
caption's index (curate.models.seeded_sampling): an image gets the same captions in any
batch, on any actor, in a resumed run as in an uninterrupted one.
"""

from __future__ import annotations

import pyarrow as pa

from curate.core.config import CaptionConfig
from curate.stages.base import IMAGE, BatchStage


def caption_votes(texts: list[str], prompt: str | None) -> tuple[list[str], list[int]]:
    """(the distinct captions in first-seen order, how many of ``texts`` gave each): the
    prompt and whitespace stripped, empty ones dropped. The votes are the K samples'
    agreement, which CapFilt's ranking prefers (curate.flow.pairs)."""
    votes: dict[str, int] = {}
    for text in texts:
        text = " ".join(text.split())
        if prompt and text.lower().startswith(prompt.lower()):
            text = text[len(prompt):].strip()
        if text:
            votes[text] = votes.get(text, 0) + 1
    return list(votes), list(votes.values())


def clean_captions(texts: list[str], prompt: str | None) -> list[str]:
    """Strip the prompt and whitespace; drop empty and repeated captions, keeping order."""
    return caption_votes(texts, prompt)[0]


def generation_kwargs(cfg: CaptionConfig, sample_ids: list[str], device="cpu") -> dict:
    """``generate()`` arguments for the images ``sample_ids``: K beams, or K nucleus samples
    drawn per caption from its own seeded stream (top_k=0: pure nucleus sampling as in BLIP;
    generate()'s own top_p is off because the sampler applies it)."""
    common = {"max_new_tokens": cfg.max_new_tokens, "num_return_sequences": cfg.num_captions}
    if cfg.mode == "beam":
        return {**common, "num_beams": cfg.num_beams, "do_sample": False}
    from transformers import LogitsProcessorList

    from curate.models.seeded_sampling import SeededNucleusSampler, sequence_seed

    seeds = [sequence_seed(cfg.seed, sample_id, k) for sample_id in sample_ids for k in range(cfg.num_captions)]
    sampler = SeededNucleusSampler(seeds, cfg.top_p, device)
    return {**common, "do_sample": True, "top_p": 1.0, "top_k": 0, "temperature": 1.0,
            "logits_processor": LogitsProcessorList([sampler])}


class CaptionStage(BatchStage):
    """BLIP captioner: K synthetic captions per live image, pairs and documents (CapFilt's "Cap";
    Li et al. 2022, "BLIP")."""

    key = "caption"
    label = "captioner"
    switch = "caption.model"
    reads = (IMAGE,)
    writes = pa.schema([("synthetic_captions", pa.list_(pa.string())), ("synthetic_votes", pa.list_(pa.int16()))])
    # Per candidate caption: how many of the K samples produced it (the original has none).
    caption_columns = {"votes": (None, "synthetic_votes", None)}
    uses_model = True
    relative_cost = 8.0  # BLIP captioner, K sampled captions: ~8x CLIP (docs/scaling.md)

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
        set_threads(self.pool)
        self.device, precision = choose_device(cfg.precision)
        self.model, self.processor = blip.load(
            blip.resolve(cfg.model, "caption.model"), "caption", "caption.model", self.device, precision
        )
        self.dtype = next(self.model.parameters()).dtype
        self.torch = torch

    def generate(self, images, sample_ids: list[str]) -> list[tuple[list[str], list[int]]]:
        """Per image, its distinct cleaned captions (at most K) and how many of the K samples
        gave each (curate.stages.blip_caption.caption_votes)."""
        torch = self.torch
        cfg = self.cfg.caption
        prompt = cfg.prompt
        inputs = self.processor(images=images, text=[prompt] * len(images) if prompt else None, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            ids = self.model.generate(**inputs, **generation_kwargs(cfg, sample_ids, self.device))
        texts = self.processor.batch_decode(ids, skip_special_tokens=True)
        k = cfg.num_captions
        return [caption_votes(texts[j * k : (j + 1) * k], prompt) for j in range(len(images))]

    def __call__(self, batch: pa.Table) -> pa.Table:
        from curate.stages.model_support import decoded

        captions: list[list[str] | None] = [None] * batch.num_rows
        votes: list[list[int] | None] = [None] * batch.num_rows
        todo = decoded(batch, self.todo(batch), self.image_col)
        if todo:
            ids = batch.column("sample_id").to_pylist()
            generated = self.generate([image for _, image in todo], [ids[i] for i, _ in todo])
            for (i, _), (texts, counts) in zip(todo, generated):
                captions[i], votes[i] = texts, counts
        return self.append(batch, {"synthetic_captions": captions, "synthetic_votes": votes})
