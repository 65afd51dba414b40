"""Documents runs: which images stay in a document, where they go, and which documents stay.

Runs in the manifest step from stored results only (each image's CLIP cosine to every
text of its document, ``sentence_sims``), so ``curate refilter`` can change any
``interleaved.*`` key without a model. For one document, in order:

1. Its images that passed the download, the image rules, ``interleaved.min_sim`` and
   dedupe are the candidates.
2. At most ``interleaved.max_images`` stay: the most similar to some text first.
3. Placement. ``assignment``: maximum-weight bipartite matching of images to texts on
   CLIP similarity, one image per text at most, as MMC4 does
   (``scipy.optimize.linear_sum_assignment``); an image left without a text is dropped
   (``no_free_text``). ``original``: every image stays where the input had it.
4. The document is dropped when fewer than ``min_images`` images or ``min_words`` words
   are left; its images are then recorded ``document_dropped``.

An image placed at slot ``j`` comes right before text ``j`` (slot ``len(texts)``: after the
last text), so a trainer reads ``<image> text`` pairs, as in MMC4-style training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from curate.core.config import InterleavedConfig
from curate.schemas import reasons as R
from curate.schemas.status import Status
from curate.stages.cheap_filters import count_words


@dataclass
class Image:
    sample_id: str
    index: int
    original_slot: int
    sims: list[float]
    status: str  # before this step: kept, or why not
    reason: str | None
    slot: int | None = None

    @property
    def best(self) -> float:
        return max(self.sims) if self.sims else float("-inf")


@dataclass
class Document:
    sample_id: str
    texts: list[str]
    images: list[Image]
    doc_error: str | None = None
    status: str = Status.KEPT
    reason: str | None = None
    sequence: list[tuple[str, object]] = field(default_factory=list)  # ("text", str) | ("image", Image)

    @property
    def words(self) -> int:
        return sum(count_words(t) for t in self.texts)

    @property
    def placed(self) -> list[Image]:
        return [im for im in self.images if im.status == Status.KEPT]


def _drop(image: Image, why: str) -> None:
    image.status, image.reason, image.slot = Status.FILTERED, why, None


def assignment_slots(sims: np.ndarray) -> list[int | None]:
    """The text each image goes to under maximum-weight matching (None: no text left)."""
    slots: list[int | None] = [None] * sims.shape[0]
    if sims.size:
        rows, cols = linear_sum_assignment(sims, maximize=True)
        for r, c in zip(rows, cols):
            slots[r] = int(c)
    return slots


def place(doc: Document, cfg: InterleavedConfig) -> None:
    candidates = sorted(doc.placed, key=lambda im: (-im.best, im.index))
    if cfg.max_images is not None:
        for image in candidates[cfg.max_images:]:
            _drop(image, R.OVER_MAX_IMAGES(cfg.max_images))
        candidates = candidates[: cfg.max_images]
    if not candidates:
        return
    if cfg.placement == "original":
        for image in candidates:
            image.slot = image.original_slot
        return
    slots = assignment_slots(np.array([im.sims for im in candidates], np.float64))
    for image, slot in zip(candidates, slots):
        if slot is None:
            _drop(image, R.NO_FREE_TEXT())
        else:
            image.slot = slot


def document_reason(doc: Document, cfg: InterleavedConfig) -> str | None:
    if doc.doc_error:
        return doc.doc_error
    if doc.words < cfg.min_words:
        return R.TOO_FEW_WORDS(cfg.min_words)
    if len(doc.placed) < cfg.min_images:
        return R.TOO_FEW_IMAGES(cfg.min_images)
    return None


def sequence(doc: Document) -> list[tuple[str, object]]:
    """Texts in order with each placed image right before its slot's text (input order among
    images sharing a slot)."""
    by_slot: dict[int, list[Image]] = {}
    for image in sorted(doc.placed, key=lambda im: (im.slot, im.index)):
        by_slot.setdefault(image.slot, []).append(image)
    out: list[tuple[str, object]] = []
    for j in range(len(doc.texts) + 1):
        out.extend(("image", im) for im in by_slot.get(j, []))
        if j < len(doc.texts):
            out.append(("text", doc.texts[j]))
    return out


def decide_document(doc: Document, cfg: InterleavedConfig) -> Document:
    """Place the document's images and apply the document rules, in place; returns ``doc``."""
    place(doc, cfg)
    why = document_reason(doc, cfg)
    if why is not None:
        doc.status, doc.reason = Status.FILTERED, why
        for image in doc.placed:
            _drop(image, R.DOCUMENT_DROPPED(why.split(":", 1)[0]))
    doc.sequence = sequence(doc) if doc.status == Status.KEPT else []
    return doc
