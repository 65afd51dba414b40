"""The default near-duplicate threshold, and where it comes from."""

from __future__ import annotations

DEFAULT_THRESHOLD: float = 0.95
"""Default cosine similarity of (L2-normalised) CLIP image embeddings at or above which two
images count as near-duplicates.

Literature:

* SemDeDup (Abbas et al. 2023, "SemDeDup: Data-efficient learning at web-scale through
  semantic deduplication", arXiv:2303.09540) calls two items semantic duplicates when the
  cosine of their CLIP image embeddings is >= 1 - eps. eps is the knob: a very small eps
  removes only re-encodes and resizes of one image, a larger eps also removes different shots
  of the same content; with a large enough eps they remove 50% of LAION-440M with minimal
  loss of zero-shot accuracy. Reference configs (e.g. NVIDIA NeMo Curator's SemDeDup
  ``eps_thresholds: [0.1, 0.01]``) use eps in 0.01..0.1, i.e. cosine 0.90..0.99.
* Webster et al. 2023 ("On the De-duplication of LAION-2B", arXiv:2303.12733) found that
  roughly 700 million (~30%) of LAION-2B's images are likely duplicates, detected by nearest
  neighbour search on compressed CLIP image features: byte-level (exact) dedupe alone misses
  most of them.

Why 0.95 (eps = 0.05): the middle of that range. It is well above the similarity of unrelated
images and keeps clear of "same topic, different photo", while catching re-encodes, resizes,
small crops, watermarks and colour changes. Move towards 0.98..0.99 to remove only
near-identical copies, or towards 0.90 for aggressive semantic dedupe, and check a sample of
the removed pairs when changing it: similarity scales differ between CLIP models (the tiny
test models in particular), so the value must match the embedding model.
"""

# Embedding models whose similarity scale needs another default. The shipped tiny CLIP
# (curate:tiny-clip) is trained to tell copies of one image from other renders of the same
# scene only so far: at 0.95 it merges a yellow circle, square and triangle (issue #30);
# 0.99, the demo's value (curate/assets/demo.yaml), keeps different renders apart.
MODEL_THRESHOLDS: dict[str, float] = {"curate:tiny-clip": 0.99}


def default_threshold(clip_model: str | None) -> float:
    """The near-duplicate threshold when ``dedupe.threshold`` is unset: the embedding model's
    own (MODEL_THRESHOLDS) or DEFAULT_THRESHOLD."""
    return MODEL_THRESHOLDS.get(clip_model or "", DEFAULT_THRESHOLD)
