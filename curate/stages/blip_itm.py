"""ITM stage: BLIP image-text matching, for a pair's captions and a document image's texts.

``itm_prob`` is the softmax of BLIP's ITM head, P(match); ``itm_cosine`` is its ITC
cosine (the ``use_itm_head=False`` score).

- Pairs: both are stored for the original caption and, as lists, for its alternates (the
  captions of the other rows with its URL, curate.pipeline.same_url) and the captioner's
  captions; ``itm.min_prob`` is a rule over each candidate caption, applied in the decision
  (curate.flow.pairs) from these stored scores. Each caption's uncut length in the model's
  tokenizer is stored (``itm_tokens``, with the limit ``itm_max_tokens``), so the manifest
  records the cut and ``filters.max_caption_tokens`` can filter on it.
- Documents: each image is scored against a **shortlist** of its document's texts, the
  ``itm.document_texts`` (default 3) that CLIP finds most similar (``sentence_sims``), and
  against its synthetic captions. ``sentence_itm_probs`` is aligned with ``sentence_sims``
  (NULL for a text outside the shortlist); ``itm_prob`` is the best of them and
  ``itm_cosine`` the ITC cosine of that same text. Why a shortlist: ITM is a cross-encoder,
  one text-encoder pass with cross-attention per (image, text), where CLIP embeds each text
  once per document; a page of 30 images and 200 paragraphs would cost 6,000 ITM passes.
  BLIP's image-text retrieval (Li et al. 2022, following ALBEF) works the same way: the
  image-text feature similarity picks k candidates, ITM re-ranks them. Placement
  (curate.flow.interleave) reads the stored scores (``interleaved.min_itm``,
  ``interleaved.placement_by``), so a refilter re-decides without the model. No token
  counts are recorded for documents.

Every text is cut to the text encoder's token limit (``blip.text_token_limit``: its
position embeddings, or the tokenizer's ``model_max_length`` when smaller).

The vision tower runs once per image, not once per (image, caption) pair: with K
synthetic captions, calling ``BlipForImageTextRetrieval.forward`` per pair would encode
each image K+1 times. ``ItmStage.score`` therefore calls the model's own submodules in
the order its ``forward`` does (checked against ``forward`` in tests/test_capfilt.py).
"""

from __future__ import annotations

import pyarrow as pa

from curate.core.config import AUTO, ItmConfig
from curate.schemas import reasons as R
from curate.schemas.reasons import fmt_threshold
from curate.stages.base import IMAGE, BatchStage, Rule, Score


def shortlist(sims: list[float] | None, n_texts: int, k: int | None) -> list[int]:
    """The indices (in text order) of the ``k`` texts with the highest CLIP cosine in ``sims``
    (ties: the earlier text); every text when ``k`` is None or covers them all, the first
    ``k`` when there are no similarities."""
    if k is None or k >= n_texts:
        return list(range(n_texts))
    if not sims or len(sims) != n_texts:
        return list(range(k))
    best = sorted(range(n_texts), key=lambda j: (-(sims[j] if sims[j] is not None else float("-inf")), j))[:k]
    return sorted(best)


class ItmStage(BatchStage):
    """BLIP image-text matching: P(match) and the ITC cosine of every candidate caption of a
    pair, or of a document image against a CLIP shortlist of its document's texts and its
    synthetic captions.

    Source: Li et al. 2022, "BLIP" (the ITM head as CapFilt's filter; the ITC-shortlist,
    ITM-rerank retrieval it takes from ALBEF, Li et al. 2021).
    """

    key = "itm"
    label = "ITM"
    switch = "itm.model"
    reads = (IMAGE, "caption")
    optional_reads = ("alternate_captions", "synthetic_captions", "doc_texts", "sentence_sims")
    writes = pa.schema([
        ("itm_prob", pa.float32()),
        ("itm_cosine", pa.float32()),
        ("synthetic_itm_probs", pa.list_(pa.float32())),
        ("synthetic_itm_cosines", pa.list_(pa.float32())),
        ("sentence_itm_probs", pa.list_(pa.float32())),
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
    thresholds = ("itm.min_prob", "itm.keep_fraction", "capfilt.synthetic_min_prob", "filters.max_caption_tokens")
    keep_fractions = {"itm.keep_fraction": "itm.min_prob"}
    calibration = ("itm.min_prob", "itm_prob", 0.5)  # fallback: BLIP's decision rule (section 3.3)
    uses_model = True
    relative_cost = 5.0  # BLIP ITM at 384 px: ~5x CLIP's work per image (docs/scaling.md)
    scores = {"itm_prob": Score("ITM probability", "itm.min_prob", R.ITM_PROB_BELOW, low=0.0, high=1.0)}
    caption_columns = {
        "itm_prob": ("itm_prob", "synthetic_itm_probs", "alternate_itm_probs"),
        "itm_cosine": ("itm_cosine", "synthetic_itm_cosines", "alternate_itm_cosines"),
        "itm_tokens": ("itm_tokens", "synthetic_itm_tokens", "alternate_itm_tokens"),
    }
    text_columns = {"itm_prob": "sentence_itm_probs"}
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
        """``filters.max_caption_tokens`` in ITM's tokenizer (pairs, when set); P(match) below
        ``itm.min_prob``; for synthetic captions below ``capfilt.synthetic_min_prob`` when set
        (a captioner's mistakes are fluent and nearly right, the hardest negatives an ITM
        model sees: a stricter bar is often worth it)."""
        original = self.cfg.itm.min_prob
        synthetic = self.cfg.capfilt.synthetic_min_prob
        synthetic = original if synthetic is None else synthetic
        rules = self.token_rules()
        # The input's captions (the original, the alternates from its URL's other rows) at
        # itm.min_prob: people wrote them all; the captioner's at the synthetic bar.
        for which, t in (("<> 'synthetic'", original), ("= 'synthetic'", synthetic)):
            if t is not None and t != AUTO:  # auto: resolved before the decision (curate.pipeline.calibration)
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
        set_threads(self.pool)
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
        if todo and "doc_texts" in batch.column_names:
            self._score_documents(batch, todo, out)
        elif todo:
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

    def _score_documents(self, batch: pa.Table, todo: list, out: dict[str, list]) -> None:
        """Documents: each image against its shortlist of document texts, then its synthetic
        captions; ``itm_prob``/``itm_cosine`` of the shortlisted text ITM matches best."""
        from curate.stages.model_support import document_texts

        sims = (batch.column("sentence_sims").to_pylist() if "sentence_sims" in batch.column_names
                else [None] * batch.num_rows)
        rows, images, texts, picked = [], [], [], []
        max_chars = self.cfg.filters.max_caption_chars
        for (i, image), (doc, synthetic) in zip(todo, document_texts(batch, [i for i, _ in todo], max_chars)):
            chosen = shortlist(sims[i], len(doc), self.cfg.itm.document_texts)
            out["sentence_itm_probs"][i] = [None] * len(doc)
            if not chosen and not synthetic:
                continue  # nothing to match: the image keeps NULL scores
            rows.append(i)
            images.append(image)
            texts.append([doc[j] for j in chosen] + synthetic)
            picked.append(chosen)
        if not rows:
            return
        probs, cosines = self.score(images, texts)
        for i, chosen, p, c in zip(rows, picked, probs, cosines):
            k = len(chosen)
            for j, prob in zip(chosen, p[:k]):
                out["sentence_itm_probs"][i][j] = prob
            if k:
                best = max(range(k), key=lambda m: p[m])
                out["itm_prob"][i], out["itm_cosine"][i] = p[best], c[best]
            out["synthetic_itm_probs"][i], out["synthetic_itm_cosines"][i] = p[k:], c[k:]


def _split(values: list[float], groups: list[list[str]]) -> list[list[float]]:
    out, offset = [], 0
    for group in groups:
        out.append(values[offset : offset + len(group)])
        offset += len(group)
    return out
