"""Documents runs: which images stay in a document, where they go, and which documents stay.

Runs in the manifest step from stored results only (each image's CLIP cosine to every
text of its document, ``sentence_sims``; its ITM P(match) to a shortlist of them,
``sentence_itm_probs``), so ``curate refilter`` can change any ``interleaved.*`` key without
a model. For one document, in order:

1. Its images that passed the download, the image rules, the match rules (a text of the
   document describes it: ``min_sim``, ``min_itm``) and dedupe are the candidates, and so
   are the images no text describes that a synthetic caption rescued
   (``caption_unmatched``; curate.flow.documents decides both).
2. At most ``interleaved.max_images`` stay: described images before rescued ones, the most
   similar to some text first.
3. Placement of the described images. ``assignment``: maximum-weight bipartite matching of
   images to texts, one image per text at most, as MMC4 does
   (``scipy.optimize.linear_sum_assignment``; Zhu et al. 2023, "Multimodal C4"). The weights
   are ``interleaved.placement_by``: the CLIP cosine; the cosine plus ``tie_margin`` times
   the ITM P(match), so ITM decides only between texts whose cosines differ by less than the
   margin; or the ITM P(match) alone over the CLIP shortlist (BLIP's ITC-shortlist, ITM
   re-rank). With ``min_itm`` a pair whose P(match) is lower (or was not scored) can't be
   matched. An image left without a text is dropped (``no_free_text``). ``original``:
   every image stays where the input had it. A rescued image stays where the input had it,
   its synthetic caption right after it.
4. The document rules (curate.flow.document_rules) over the document's facts; a dropped
   document's images are recorded ``document_dropped:<why>``.

An image placed at slot ``j`` comes right before text ``j`` (slot ``len(texts)``: after the
last text), so a trainer reads ``<image> text`` pairs, as in MMC4-style training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from curate.core.config import InterleavedConfig
from curate.flow import document_rules
from curate.schemas import reasons as R
from curate.schemas.status import Status
from curate.stages.base import Rule
from curate.stages.cheap_filters import count_words

# The weight of a pair the matching must not use: far below any real weight (cosines and
# probabilities are within [-1, 1] and [0, 1]), so the solver takes it only when an image
# has nothing else left, and such an assignment is then undone.
FORBIDDEN = -1e6


@dataclass
class Image:
    """One image of a document, as placement sees it.

    ``sims``: CLIP cosine to each text of the document, in text order; ``itm``: ITM P(match)
    to each text (None outside the ITM shortlist; the list is None when ITM did not run);
    ``status``/``reason``: the decision before placement; ``valid``: it downloaded and passed
    the image rules; ``caption``: the synthetic caption that rescued it (with its CLIP cosine
    and ITM P(match)), None for an image a document text describes. ``slot`` is set by
    placement."""

    sample_id: str
    index: int
    original_slot: int
    sims: list[float]
    status: str  # before this step: kept, or why not
    reason: str | None
    slot: int | None = None
    itm: list[float | None] | None = None
    valid: bool = True
    caption: str | None = None
    caption_clip: float | None = None
    caption_itm: float | None = None

    @property
    def best(self) -> float:
        return max(self.sims) if self.sims else float("-inf")

    @property
    def rescued(self) -> bool:
        return self.caption is not None

    def placed_scores(self, n_texts: int) -> tuple[float | None, float | None]:
        """(CLIP cosine, ITM P(match)) of the image and the text that follows it: its synthetic
        caption, or the document text at its slot (None after the last text)."""
        if self.rescued:
            return self.caption_clip, self.caption_itm
        if self.slot is None or self.slot >= n_texts:
            return None, None
        itm = self.itm[self.slot] if self.itm and self.slot < len(self.itm) else None
        return (self.sims[self.slot] if self.slot < len(self.sims) else None), itm


@dataclass
class Document:
    sample_id: str
    texts: list[str]
    images: list[Image]
    doc_error: str | None = None
    status: str = Status.KEPT
    reason: str | None = None
    # ("text", str): a text of the document; ("image", Image); ("caption", str): the synthetic
    # caption of the image right before it.
    sequence: list[tuple[str, object]] = field(default_factory=list)

    @property
    def words(self) -> int:
        return sum(count_words(t) for t in self.texts)

    @property
    def placed(self) -> list[Image]:
        return [im for im in self.images if im.status == Status.KEPT]

    def facts(self) -> dict:
        """The document rules' facts (curate.flow.document_rules.FACTS)."""
        placed = self.placed
        return {
            "sample_id": self.sample_id, "doc_error": self.doc_error, "n_texts": len(self.texts),
            "n_words": self.words, "n_images_in": len(self.images),
            "n_images_valid": sum(im.valid for im in self.images), "n_images_kept": len(placed),
            "n_synthetic_texts": sum(im.rescued for im in placed),
        }


def _drop(image: Image, why: str) -> None:
    image.status, image.reason, image.slot = Status.FILTERED, why, None


def assignment_slots(weights: np.ndarray, allowed: np.ndarray | None = None) -> list[int | None]:
    """The text each image goes to under maximum-weight matching (None: no text left for it).
    ``weights``: (images, texts); ``allowed``: a same-shaped mask of the pairs that may be
    matched (all when None)."""
    slots: list[int | None] = [None] * weights.shape[0]
    if not weights.size:
        return slots
    if allowed is not None:
        weights = np.where(allowed, weights, FORBIDDEN)
    rows, cols = linear_sum_assignment(weights, maximize=True)
    for r, c in zip(rows, cols):
        if allowed is None or allowed[r, c]:
            slots[r] = int(c)
    return slots


def placement_weights(images: list[Image], n_texts: int, cfg: InterleavedConfig) -> tuple[np.ndarray, np.ndarray]:
    """(weights, allowed), both (len(images), n_texts): the matching's weight of every
    (image, text) pair by ``cfg.placement_by``, and which pairs may be matched
    (``cfg.min_itm``; for ``itm``, the pairs ITM scored)."""
    sims = np.array([im.sims for im in images], np.float64).reshape(len(images), n_texts)
    itm = np.array([[np.nan if v is None else v for v in (im.itm or [None] * n_texts)] for im in images],
                   np.float64).reshape(len(images), n_texts)
    if cfg.placement_by == "itm":
        weights = np.nan_to_num(itm, nan=0.0)
        allowed = ~np.isnan(itm)
    elif cfg.placement_by == "tiebreak":  # a text outside the ITM shortlist gets no bonus
        weights = sims + cfg.tie_margin * np.nan_to_num(itm, nan=0.0)
        allowed = np.ones_like(sims, dtype=bool)
    else:
        weights, allowed = sims, np.ones_like(sims, dtype=bool)
    if cfg.min_itm is not None:
        allowed &= np.nan_to_num(itm, nan=-1.0) >= cfg.min_itm
    return weights, allowed


def place(doc: Document, cfg: InterleavedConfig) -> None:
    """Cap and place the document's candidate images (steps 2 and 3), in place."""
    candidates = sorted(doc.placed, key=lambda im: (im.rescued, -im.best, im.index))
    if cfg.max_images is not None:
        for image in candidates[cfg.max_images:]:
            _drop(image, R.OVER_MAX_IMAGES(cfg.max_images))
        candidates = candidates[: cfg.max_images]
    for image in candidates:
        if image.rescued:  # no text of the document describes it: where the input had it
            image.slot = image.original_slot
    described = [im for im in candidates if not im.rescued]
    if not described:
        return
    if cfg.placement == "original":
        for image in described:
            image.slot = image.original_slot
        return
    slots = assignment_slots(*placement_weights(described, len(doc.texts), cfg))
    for image, slot in zip(described, slots):
        if slot is None:
            _drop(image, R.NO_FREE_TEXT())
        else:
            image.slot = slot


def sequence(doc: Document) -> list[tuple[str, object]]:
    """Texts in order with each placed image right before its slot's text (input order among
    images sharing a slot), a rescued image's synthetic caption right after it."""
    by_slot: dict[int, list[Image]] = {}
    for image in sorted(doc.placed, key=lambda im: (im.slot, im.index)):
        by_slot.setdefault(image.slot, []).append(image)
    out: list[tuple[str, object]] = []
    for j in range(len(doc.texts) + 1):
        for image in by_slot.get(j, []):
            out.append(("image", image))
            if image.rescued:
                out.append(("caption", image.caption))
        if j < len(doc.texts):
            out.append(("text", doc.texts[j]))
    return out


def finish(doc: Document, why: str | None) -> Document:
    """Apply the document rules' verdict ``why`` (None: kept) and build the sequence."""
    if why is not None:
        doc.status, doc.reason = Status.FILTERED, why
        for image in doc.placed:
            _drop(image, R.DOCUMENT_DROPPED(why.split(":", 1)[0]))
    doc.sequence = sequence(doc) if doc.status == Status.KEPT else []
    return doc


def decide_document(doc: Document, cfg: InterleavedConfig, rules: list[Rule] | None = None) -> Document:
    """Place the document's images and apply the document rules (``rules``, default: those
    ``cfg`` turns on), in place; returns ``doc``. The manifest step does the same for a whole
    part of documents at once (curate.flow.documents.decide_part)."""
    place(doc, cfg)
    rules = document_rules.document_rules(cfg) if rules is None else rules
    return finish(doc, document_rules.evaluate([doc.facts()], rules)[0])
