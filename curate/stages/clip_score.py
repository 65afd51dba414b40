"""CLIP stage: L2-normalised image and text embeddings and clip_score = their cosine.

Runs as a Ray actor pool: one model load per actor, batches of ``clip.batch_size``. Only
live rows are scored (downloaded, not rejected by an image rule). Synthetic captions (when
the captioner ran before) are scored too, in the same text pass. The image embeddings are
stored in RUN/scored/ for dedupe and the aesthetic stage; ``clip_score`` goes to the
manifest, and ``clip.min_score`` is a rule over each candidate caption's score, applied in
the decision from the stored scores (a refilter never runs the model).

The text tower reads a caption's first ``context_length`` tokens (77 for CLIP ViT models):
each caption's length in the model's tokenizer is stored (``clip_tokens``, with the limit
``clip_max_tokens``), so the manifest says which captions CLIP scored on their beginning only
and ``filters.max_caption_tokens`` can filter them (docs/manifest.md, Truncated captions).

Documents runs: an image row carries its document's texts (``doc_texts``) instead of a
caption; the image is scored against each (``sentence_sims``, in text order) and
``clip_score`` is the best of them. Its synthetic captions (when the captioner ran) are
scored in the same text pass (``synthetic_clip_scores``). Placement
(curate.flow.interleave) reads the stored similarities, so it too can be redone by a refilter.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from curate.core.config import AUTO, ClipConfig
from curate.models.clip import context_length as clip_context_length
from curate.schemas import reasons as R
from curate.schemas.reasons import fmt_threshold
from curate.stages.base import IMAGE, BatchStage, Rule, Score

TEXT_CHUNK = 512  # texts per text-tower call


class ClipStage(BatchStage):
    """open_clip: image embeddings and the cosine to each candidate text; ``clip.min_score`` per caption.

    Source: Radford et al. 2021 (CLIP); thresholds as in LAION-5B (Schuhmann et al. 2022).
    """

    key = "clip"
    label = "CLIP"
    switch = "clip.model"
    reads = (IMAGE,)
    optional_reads = ("caption", "alternate_captions", "synthetic_captions", "doc_texts")
    writes = pa.schema([
        ("clip_score", pa.float32()),
        ("clip_image_embedding", pa.list_(pa.float32())),
        ("synthetic_clip_scores", pa.list_(pa.float32())),
        ("sentence_sims", pa.list_(pa.float32())),
        # Pairs: each caption's length in the model's tokenizer, and the model's context length.
        ("clip_tokens", pa.int32()),
        ("synthetic_clip_tokens", pa.list_(pa.int32())),
        ("clip_max_tokens", pa.int32()),
        # Pairs: the alternates' (the captions of the other rows with the same URL).
        ("alternate_clip_scores", pa.list_(pa.float32())),
        ("alternate_clip_tokens", pa.list_(pa.int32())),
    ])
    manifest = ("clip_score",)
    thresholds = ("clip.min_score", "clip.keep_fraction", "filters.max_caption_tokens")
    keep_fractions = {"clip.keep_fraction": "clip.min_score"}
    calibration = ("clip.min_score", "clip_score", None)  # a cosine's scale is the model's: no fallback value
    uses_model = True
    relative_cost = 1.0  # ViT-B/32: an image and its captions (docs/scaling.md)
    scores = {"clip_score": Score("CLIP score", "clip.min_score", R.CLIP_SCORE_BELOW, low=-1.0, high=1.0)}  # a cosine
    caption_columns = {"clip_score": ("clip_score", "synthetic_clip_scores", "alternate_clip_scores"),
                       "clip_tokens": ("clip_tokens", "synthetic_clip_tokens", "alternate_clip_tokens")}
    text_columns = {"clip_score": "sentence_sims"}
    token_columns = ("clip_tokens", "clip_max_tokens")

    @property
    def compute(self) -> ClipConfig:
        return self.cfg.clip

    def configured(self) -> bool:
        return self.cfg.clip.model is not None

    def check(self) -> None:
        """Fail at start, naming the reference, if it can't be resolved."""
        from curate.models import clip

        clip.resolve(self.cfg.clip.model, self.cfg.clip.pretrained)

    def rules(self) -> list[Rule]:
        t = self.cfg.clip.min_score
        if t is None or t == AUTO:  # auto: resolved before the decision (curate.pipeline.calibration)
            return self.token_rules()
        return self.token_rules() + [Rule.fixed(f"clip_score IS NULL OR clip_score < {t!r}", R.CLIP_SCORE_BELOW,
                                                fmt_threshold(t), scope="caption")]

    def keep_scores(self) -> dict[str, str]:
        return {"clip_score": "chosen_clip_score"}

    def setup(self) -> None:
        import torch

        from curate.models import clip
        from curate.stages.model_support import choose_device, set_threads

        cfg = self.cfg.clip
        set_threads(self.pool)
        self.device, precision = choose_device(cfg.precision)
        self.model, self.preprocess, self.tokenizer = clip.load(clip.resolve(cfg.model, cfg.pretrained), self.device,
                                                                precision)
        self.dtype = next(self.model.parameters()).dtype
        self.torch = torch

    def _embed_images(self, images) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            pixels = torch.stack([self.preprocess(im) for im in images]).to(self.device, self.dtype)
            return torch.nn.functional.normalize(self.model.encode_image(pixels).float(), dim=-1).cpu().numpy()

    def _count_tokens(self, texts: list[str]) -> list[int]:
        """Each text's length in the model's tokenizer, before it is cut to the context length."""
        from curate.models import clip

        unique = list(dict.fromkeys(texts))
        counts = dict(zip(unique, clip.token_counts(self.tokenizer, unique)))
        return [counts[t] for t in texts]

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        """Embeddings of ``texts``; each distinct text is encoded once (the images of one
        document share its texts, and web captions repeat)."""
        torch = self.torch
        unique = list(dict.fromkeys(texts))
        if not unique:
            return np.zeros((0, 0), np.float32)
        chunks = []
        with torch.inference_mode():
            # In chunks: one long document's texts must not become one giant model call.
            for start in range(0, len(unique), TEXT_CHUNK):
                tokens = self.tokenizer(unique[start : start + TEXT_CHUNK]).to(self.device)
                chunks.append(torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu().numpy())
        emb = np.concatenate(chunks)
        where = {text: i for i, text in enumerate(unique)}
        return emb[[where[t] for t in texts]]

    def _texts(self, batch: pa.Table, rows: list[int]) -> list[list[str]]:
        """Per row, the texts it is scored against: a pair's original caption, its alternates,
        then its synthetic captions; a document image's document texts, then its synthetic
        captions. Each input text cut at ``filters.max_caption_chars``."""
        from curate.stages.model_support import candidate_texts, document_texts

        max_chars = self.cfg.filters.max_caption_chars
        if "doc_texts" in batch.column_names:
            return [texts + synthetic for texts, synthetic in document_texts(batch, rows, max_chars)]
        return candidate_texts(batch, rows, max_chars)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from curate.stages.model_support import alternate_counts, by_source, decoded

        n = batch.num_rows
        documents = "doc_texts" in batch.column_names
        out: dict[str, list] = {field.name: [None] * n for field in self.writes}
        todo = decoded(batch, self.todo(batch), self.image_col)
        if todo:
            # One text pass for every text of the batch: captions (original, alternates,
            # synthetic) or, for documents, each image's document texts and its synthetic captions.
            texts = self._texts(batch, [i for i, _ in todo])
            alternates = alternate_counts(batch, [i for i, _ in todo])
            flat = [t for row in texts for t in row]
            image_emb = self._embed_images([image for _, image in todo])
            text_emb = self._embed_texts(flat)
            n_doc = [len(t or []) for t in batch.column("doc_texts").to_pylist()] if documents else None
            tokens = [] if documents else self._count_tokens(flat)  # pairs only (docs/manifest.md)
            limit = clip_context_length(self.tokenizer)
            offset = 0
            for (i, _), img, row, n_alternates in zip(todo, image_emb, texts, alternates):
                cosines = [float(c) for c in text_emb[offset : offset + len(row)] @ img] if row else []
                out["clip_image_embedding"][i] = img.tolist()
                if documents:  # the document's texts first, then the image's synthetic captions
                    k = n_doc[i]
                    out["sentence_sims"][i], out["synthetic_clip_scores"][i] = cosines[:k], cosines[k:]
                    out["clip_score"][i] = max(cosines[:k]) if k else None
                else:
                    for name, values in (("clip_score", cosines), ("clip_tokens", tokens[offset : offset + len(row)])):
                        columns = self.caption_columns[name]  # (original, synthetic, alternate)
                        first, alternate, synthetic = by_source(values, n_alternates)
                        out[columns[0]][i], out[columns[1]][i], out[columns[2]][i] = first, synthetic, alternate
                    out["clip_max_tokens"][i] = limit
                offset += len(row)
        return self.append(batch, out)
