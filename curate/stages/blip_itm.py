"""ITM stage: BLIP image-text matching for the original caption and every synthetic one.

``itm_prob`` is the softmax of BLIP's ITM head, P(match); ``itm_cosine`` is its ITC
cosine (the ``use_itm_head=False`` score). Both are stored for the original caption and,
as lists, for the captioner's captions; ``itm.min_prob`` is applied in the caption
decision (curate.stages.capfilt) from these stored scores.

The vision tower runs once per image, not once per (image, caption) pair: with K
synthetic captions, calling ``BlipForImageTextRetrieval.forward`` per pair would encode
each image K+1 times. ``ItmScorer.score`` therefore calls the model's own submodules in
the order its ``forward`` does (checked against ``forward`` in tests/test_capfilt.py).
"""

from __future__ import annotations

import pyarrow as pa

from curate.core.config import ItmConfig
from curate.stages.model_actor import ModelStage

SCORED_SCHEMA = pa.schema([
    ("itm_prob", pa.float32()),
    ("itm_cosine", pa.float32()),
    ("synthetic_itm_probs", pa.list_(pa.float32())),
    ("synthetic_itm_cosines", pa.list_(pa.float32())),
])


class ItmScorer:
    def __init__(self, cfg: ItmConfig, image_col: str):
        import torch

        from curate.models import blip
        from curate.stages.model_actor import choose_device, set_threads

        set_threads(cfg)
        self.device, precision = choose_device(cfg.precision)
        self.model, self.processor = blip.load(blip.resolve(cfg.model, "itm.model"), "itm", "itm.model", self.device, precision)
        self.dtype = next(self.model.parameters()).dtype
        self.image_col = image_col
        self.torch = torch

    def score(self, images, texts_per_image: list[list[str]]) -> tuple[list[list[float]], list[list[float]]]:
        """(P(match), ITC cosine) for every caption of every image."""
        torch = self.torch
        model = self.model
        pixels = self.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        owner = torch.tensor([j for j, texts in enumerate(texts_per_image) for _ in texts], device=self.device)
        flat = [t for texts in texts_per_image for t in texts]
        tokens = self.processor.tokenizer(flat, padding=True, truncation=True, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            image_embeds = model.vision_model(pixel_values=pixels.to(self.device, self.dtype)).last_hidden_state
            pair_embeds = image_embeds[owner]
            image_atts = torch.ones(pair_embeds.shape[:-1], dtype=torch.long, device=self.device)
            fused = model.text_encoder(
                input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                encoder_hidden_states=pair_embeds, encoder_attention_mask=image_atts,
            ).last_hidden_state
            probs = model.itm_head(fused[:, 0, :]).float().softmax(-1)[:, 1]
            text_only = model.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
            image_feat = torch.nn.functional.normalize(model.vision_proj(image_embeds[:, 0, :]).float(), dim=-1)
            text_feat = torch.nn.functional.normalize(model.text_proj(text_only[:, 0, :]).float(), dim=-1)
            cosines = (image_feat[owner] * text_feat).sum(-1)
        return _split(probs.cpu().tolist(), texts_per_image), _split(cosines.cpu().tolist(), texts_per_image)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from curate.stages.model_actor import candidate_texts, usable_images

        n = batch.num_rows
        prob, cosine = [None] * n, [None] * n
        synthetic_prob, synthetic_cosine = [None] * n, [None] * n
        todo = usable_images(batch, self.image_col)
        if todo:
            texts = candidate_texts(batch, [i for i, _ in todo])
            probs, cosines = self.score([image for _, image in todo], texts)
            for (i, _), p, c in zip(todo, probs, cosines):
                prob[i], cosine[i], synthetic_prob[i], synthetic_cosine[i] = p[0], c[0], p[1:], c[1:]
        for field, values in zip(SCORED_SCHEMA, (prob, cosine, synthetic_prob, synthetic_cosine)):
            batch = batch.append_column(field, pa.array(values, field.type))
        return batch


def _split(values: list[float], groups: list[list[str]]) -> list[list[float]]:
    out, offset = [], 0
    for group in groups:
        out.append(values[offset : offset + len(group)])
        offset += len(group)
    return out


class ItmStage(ModelStage):
    key = "itm"
    actor = ItmScorer
    scored_schema = SCORED_SCHEMA
    manifest_columns = ["itm_prob", "itm_cosine"]

    def check(self) -> None:
        from curate.models import blip

        blip.check(self.cfg.model, "itm.model", "itm")
