"""CLIP stage: L2-normalised image and text embeddings and clip_score = their cosine.

Runs as a Ray actor pool: one model load per actor, batches of ``clip.batch_size``. Rows
whose image failed to download or was rejected by an image rule are passed through
unscored. The image embeddings are stored in RUN/scored/ for dedupe; ``clip_score`` goes
to the manifest and ``clip.min_score`` filters on it (from the stored score, so a
refilter never runs the model).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from curate.pipeline.config import ClipConfig
from curate.schemas.status import fmt_threshold

SCORED_SCHEMA = pa.schema([("clip_score", pa.float32()), ("clip_image_embedding", pa.list_(pa.float32()))])


class ClipScorer:
    def __init__(self, cfg: ClipConfig, image_col: str):
        import torch

        from curate.models import clip
        from curate.stages.model_actor import choose_device, set_threads

        set_threads(cfg)
        self.device, precision = choose_device(cfg.precision)
        self.model, self.preprocess, self.tokenizer = clip.load(clip.resolve(cfg.model, cfg.pretrained), self.device, precision)
        self.dtype = next(self.model.parameters()).dtype
        self.image_col = image_col
        self.torch = torch

    def _embed(self, images, captions) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            pixels = torch.stack([self.preprocess(im) for im in images]).to(self.device, self.dtype)
            tokens = self.tokenizer(captions).to(self.device)
            image_emb = torch.nn.functional.normalize(self.model.encode_image(pixels).float(), dim=-1)
            text_emb = torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)
        return image_emb.cpu().numpy(), text_emb.cpu().numpy()

    def __call__(self, batch: pa.Table) -> pa.Table:
        from curate.stages.model_actor import decode_rgb

        n = batch.num_rows
        scores: list[float | None] = [None] * n
        embeddings: list[list[float] | None] = [None] * n
        rows = batch.select([self.image_col, "caption", "download_reason", "image_reject"]).to_pylist()
        todo = [(i, decode_rgb(r[self.image_col]), r["caption"] or "") for i, r in enumerate(rows)
                if r["download_reason"] is None and r["image_reject"] is None and r[self.image_col]]
        todo = [t for t in todo if t[1] is not None]
        if todo:
            image_emb, text_emb = self._embed([t[1] for t in todo], [t[2] for t in todo])
            for (i, _, _), img, txt in zip(todo, image_emb, text_emb):
                scores[i] = float(np.dot(img, txt))
                embeddings[i] = img.tolist()
        batch = batch.append_column("clip_score", pa.array(scores, pa.float32()))
        return batch.append_column("clip_image_embedding", pa.array(embeddings, pa.list_(pa.float32())))


class ClipStage:
    scored_schema = SCORED_SCHEMA
    manifest_columns = ["clip_score"]

    def __init__(self, cfg: ClipConfig):
        self.cfg = cfg

    def check(self) -> None:
        """Fail at start, naming the reference, if it can't be resolved."""
        from curate.models import clip

        clip.resolve(self.cfg.model, self.cfg.pretrained)

    def apply(self, ds, image_col: str):
        from curate.stages.model_actor import actor_pool_args

        return ds.map_batches(
            ClipScorer, fn_constructor_kwargs={"cfg": self.cfg, "image_col": image_col}, **actor_pool_args(self.cfg)
        )

    def filter_sql(self) -> list[str]:
        t = self.cfg.min_score
        if t is None:
            return []
        return [f"CASE WHEN s.clip_score < {t!r} THEN 'clip_score_below:{fmt_threshold(t)}' END"]
