"""ITM stage: BLIP image-text matching for the original caption and every synthetic one.

``itm_prob`` is the softmax of BLIP's ITM head, P(match); ``itm_cosine`` is its ITC
cosine (the ``use_itm_head=False`` score). Both are stored for the original caption and,
as lists, for the captioner's captions; ``itm.min_prob`` is a rule over each candidate
caption, applied in the decision (curate.flow.pairs) from these stored scores. Each caption
is cut to the text encoder's token limit (``itm_max_tokens``: its position embeddings, or
the tokenizer's ``model_max_length`` when smaller) and its uncut length is stored
(``itm_tokens``), so the manifest records the cut.

The vision tower runs once per image, not once per (image, caption) pair: with K
synthetic captions, calling ``BlipForImageTextRetrieval.forward`` per pair would encode
each image K+1 times. ``ItmStage.score`` therefore calls the model's own submodules in
the order its ``forward`` does (checked against ``forward`` in tests/test_capfilt.py).
"""

from __future__ import annotations

import pyarrow as pa

from curate.core.config import ItmConfig
from curate.schemas import reasons as R
from curate.schemas.reasons import fmt_threshold
from curate.stages.base import IMAGE, BatchStage, Rule


class ItmStage(BatchStage):
    """BLIP image-text matching: P(match) and the ITC cosine of every candidate caption (pairs).

    Source: Li et al. 2022, "BLIP" (the ITM head as CapFilt's filter).
    """

    key = "itm"
    switch = "itm.model"
    reads = (IMAGE, "caption")
    optional_reads = ("alternate_captions", "synthetic_captions")
    writes = pa.schema([
        ("itm_prob", pa.float32()),
        ("itm_cosine", pa.float32()),
        ("synthetic_itm_probs", pa.list_(pa.float32())),
        ("synthetic_itm_cosines", pa.list_(pa.float32())),
        # Each caption's length in the model's tokenizer, and the text encoder's token limit.
        ("itm_tokens", pa.int32()),
        ("synthetic_itm_tokens", pa.list_(pa.int32())),
        ("itm_max_tokens", pa.int32()),
        # The alternates' (the captions of the other rows with the same URL).
        ("alternate_itm_probs", pa.list_(pa.float32())),
        ("alternate_itm_cosines", pa.list_(pa.float32())),
        ("alternate_itm_tokens", pa.list_(pa.int32())),
    ])
    manifest = ("itm_prob", "itm_cosine")
    thresholds = ("itm.min_prob", "capfilt.synthetic_min_prob", "filters.max_caption_tokens")
    kinds = ("pairs",)
    uses_model = True
    scores = {"itm_prob": ("ITM probability", "itm.min_prob")}
    caption_columns = {
        "itm_prob": ("itm_prob", "synthetic_itm_probs", "alternate_itm_probs"),
        "itm_cosine": ("itm_cosine", "synthetic_itm_cosines", "alternate_itm_cosines"),
        "itm_tokens": ("itm_tokens", "synthetic_itm_tokens", "alternate_itm_tokens"),
    }
    token_columns = ("itm_tokens", "itm_max_tokens")

    @property
    def compute(self) -> ItmConfig:
        return self.cfg.itm

    def configured(self) -> bool:
        return self.cfg.itm.model is not None

    def check(self) -> None:
        from curate.models import blip

        blip.check(self.cfg.itm.model, "itm.model", "itm")

    def rules(self) -> list[Rule]:
        """P(match) below ``itm.min_prob``; for synthetic captions below
        ``capfilt.synthetic_min_prob`` when set (a captioner's mistakes are fluent and nearly
        right, the hardest negatives an ITM model sees: a stricter bar is often worth it)."""
        original = self.cfg.itm.min_prob
        synthetic = self.cfg.capfilt.synthetic_min_prob
        synthetic = original if synthetic is None else synthetic
        rules = self.token_rules()
        # The input's captions (the original, the alternates from its URL's other rows) at
        # itm.min_prob: people wrote them all; the captioner's at the synthetic bar.
        for which, t in (("<> 'synthetic'", original), ("= 'synthetic'", synthetic)):
            if t is not None:
                rules.append(Rule.fixed(f"source {which} AND (itm_prob IS NULL OR itm_prob < {t!r})",
                                        R.ITM_PROB_BELOW, fmt_threshold(t), scope="caption"))
        return rules

    def keep_scores(self) -> dict[str, str]:
        return {"itm": "chosen_itm_prob"}

    def setup(self) -> None:
        import torch

        from curate.models import blip
        from curate.stages.model_support import choose_device, set_threads

        cfg = self.cfg.itm
        set_threads(cfg)
        self.device, precision = choose_device(cfg.precision)
        self.model, self.processor = blip.load(blip.resolve(cfg.model, "itm.model"), "itm", "itm.model", self.device,
                                               precision)
        self.dtype = next(self.model.parameters()).dtype
        self.torch = torch
        self.max_tokens = blip.text_token_limit(self.model, self.processor.tokenizer)

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Each text's length in the model's tokenizer ([CLS] and [SEP] included), before the
        cut to ``max_tokens``. (A word over 100 characters is one [UNK] in BERT's WordPiece.)"""
        unique = list(dict.fromkeys(texts))
        encoded = self.processor.tokenizer(unique, truncation=False, verbose=False)["input_ids"]
        counts = dict(zip(unique, map(len, encoded)))
        return [counts[t] for t in texts]

    def score(self, images, texts_per_image: list[list[str]]) -> tuple[list[list[float]], list[list[float]]]:
        """(P(match), ITC cosine) for every caption of every image; each caption is cut to the
        text encoder's ``max_tokens`` (blip.text_token_limit)."""
        torch = self.torch
        model = self.model
        pixels = self.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        owner = torch.tensor([j for j, texts in enumerate(texts_per_image) for _ in texts], device=self.device)
        flat = [t for texts in texts_per_image for t in texts]
        tokens = self.processor.tokenizer(flat, padding=True, truncation=True, max_length=self.max_tokens,
                                          return_tensors="pt").to(self.device)
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
        from curate.stages.model_support import alternate_counts, by_source, candidate_texts, decoded

        n = batch.num_rows
        out = {field.name: [None] * n for field in self.writes}
        todo = decoded(batch, self.todo(batch), self.image_col)
        if todo:
            rows = [i for i, _ in todo]
            texts = candidate_texts(batch, rows, self.cfg.filters.max_caption_chars)
            probs, cosines = self.score([image for _, image in todo], texts)
            counts = _split(self.count_tokens([t for row in texts for t in row]), texts)
            for k, (i, alternates) in enumerate(zip(rows, alternate_counts(batch, rows))):
                for name, values in (("itm_prob", probs[k]), ("itm_cosine", cosines[k]), ("itm_tokens", counts[k])):
                    columns = self.caption_columns[name]  # (original, synthetic, alternate)
                    first, alternate, synthetic = by_source(values, alternates)
                    out[columns[0]][i], out[columns[1]][i], out[columns[2]][i] = first, synthetic, alternate
                out["itm_max_tokens"][i] = self.max_tokens
        return self.append(batch, out)


def _split(values: list[float], groups: list[list[str]]) -> list[list[float]]:
    out, offset = [], 0
    for group in groups:
        out.append(values[offset : offset + len(group)])
        offset += len(group)
    return out
