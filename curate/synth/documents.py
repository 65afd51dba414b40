"""The demo's interleaved web documents, made from the synthetic domain, with ground truth.

A document mixes, in shuffled order, sentences that each describe one of its images
(a true caption of the image's scene) and filler sentences about nothing in the images.
Its images are listed in the input at random positions, not next to their sentences, so
placement has to find where they go. Besides the described images, documents hold:

- ``distractor`` images that no sentence describes (a banner, an unrelated photo);
- ``reused`` images: the same bytes as a described image of an earlier document, and
  described here too (dedupe across documents must catch them);
- ``broken`` image URLs (404);
- ``banner`` images, wide strips (4:1) no sentence describes, as pages carry them.

Some documents have filler text only. A few documents are **galleries**: one line of text
and 6 to 12 images nobody describes, the image dumps OBELICS's document rules drop. Banners
and galleries come from a random stream of their own, so the other documents are the same
with or without them.

The truth table has one row per image: its kind, its scene (``shape``, ``colour``,
``background``, ``size``; NULL for broken links), and for described and reused images the
index of the text that describes it, so the demo can measure placement accuracy and judge
synthetic captions (``domain.caption_is_correct``). ``doc_truth`` has one row per
document: ``page`` or ``gallery``.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

import pyarrow as pa
from PIL import Image

from curate.synth import domain
from curate.synth.http_server import Route

FILLER = (
    "this page was last updated in {month}.",
    "scroll down for more pictures from our collection.",
    "we ship worldwide and returns are free within {days} days.",
    "subscribe to our newsletter for weekly updates.",
    "all rights reserved by the site owner.",
    "the gallery below was put together by our editors.",
    "prices may vary depending on your region.",
    "leave a comment and tell us what you think.",
)
MONTHS = ("january", "march", "june", "october")
GALLERY_LINES = ("photo gallery from our {month} trip.", "more pictures from the {month} market below.",
                 "our {month} collection, in pictures.")
GALLERY_RATE = 0.04  # share of documents that are galleries
BANNER_RATE = 0.1  # share of pages with a banner image


@dataclass
class DocumentsCorpus:
    routes: dict[str, Route]
    documents: list[dict]  # texts, image paths and their input positions
    truth: pa.Table  # one row per image: input_row, image_index, kind, true_text, its scene
    doc_truth: pa.Table  # one row per document: input_row, kind (page | gallery)

    def obelics_table(self, base_url: str) -> pa.Table:
        """OBELICS layout: aligned ``texts`` / ``images`` lists, images at their input positions."""
        rows = []
        for doc in self.documents:
            texts: list[str | None] = []
            images: list[str | None] = []
            by_slot: dict[int, list[str]] = {}
            for path, slot in zip(doc["image_paths"], doc["input_slots"]):
                by_slot.setdefault(slot, []).append(path)
            for j in range(len(doc["texts"]) + 1):
                for path in by_slot.get(j, []):
                    texts.append(None)
                    images.append(base_url + path)
                if j < len(doc["texts"]):
                    texts.append(doc["texts"][j])
                    images.append(None)
            rows.append({"texts": texts, "images": images, "url": f"https://example.test/page/{len(rows)}"})
        return pa.Table.from_pylist(rows)

    def input_table(self, base_url: str) -> pa.Table:
        """The demo's input: the OBELICS layout."""
        return self.obelics_table(base_url)


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def _filler(rng: random.Random) -> str:
    return rng.choice(FILLER).format(month=rng.choice(MONTHS), days=rng.choice((14, 30)))


def _distinct_scenes(rng: random.Random, n: int) -> list[domain.Scene]:
    """Scenes of different shapes: two images of one document are never the same kind of thing."""
    shapes = rng.sample(domain.SHAPES, n)
    scenes = []
    for shape in shapes:
        scene = domain.sample_scene(rng)
        scenes.append(domain.Scene(shape, scene.colour, scene.background, scene.size))
    return scenes


def _banner(scene: domain.Scene, image_size: int, rng: random.Random) -> bytes:
    """A 4:1 strip: the scene's render in the middle of its background colour."""
    side = image_size // 2
    strip = Image.new("RGB", (4 * side, side), domain.BACKGROUNDS[scene.background])
    strip.paste(domain.render(scene, side, rng), (3 * side // 2, 0))
    return _jpeg(strip)


def _scene_truth(scene: domain.Scene | None) -> dict:
    keys = ("shape", "colour", "background", "size")
    return {k: getattr(scene, k) for k in keys} if scene is not None else dict.fromkeys(keys)


def _gallery(d: int, rng: random.Random, image_size: int, routes: dict[str, Route], truth: list[dict]) -> dict:
    """A gallery page: one line of text, 6-12 images no text describes."""
    text = rng.choice(GALLERY_LINES).format(month=rng.choice(MONTHS))
    paths = []
    for k in range(rng.randint(6, 12)):
        scene = domain.sample_scene(rng)
        path = f"/doc/{d:05d}/{k}.jpg"
        routes[path] = Route(_jpeg(domain.render(scene, image_size, rng)))
        paths.append(path)
        truth.append({"input_row": d, "image_index": k, "kind": "gallery", "true_text": None, **_scene_truth(scene)})
    return {"texts": [text], "image_paths": paths, "input_slots": sorted(rng.randint(0, 1) for _ in paths)}


def make_documents(n: int, seed: int = 0, image_size: int = 96) -> DocumentsCorpus:
    rng = random.Random(seed)
    planted = random.Random(f"planted-{seed}")  # galleries and banners: their own stream
    routes: dict[str, Route] = {}
    documents, truth, doc_truth = [], [], []
    described_so_far: list[tuple[domain.Scene, bytes]] = []
    for d in range(n):
        if planted.random() < GALLERY_RATE:
            documents.append(_gallery(d, planted, image_size, routes, truth))
            doc_truth.append({"input_row": d, "kind": "gallery"})
            continue
        doc_truth.append({"input_row": d, "kind": "page"})
        filler_only = rng.random() < 0.08
        n_described = 0 if filler_only else rng.randint(1, 3)
        scenes = _distinct_scenes(rng, n_described + 1)
        images = []  # (kind, scene, body or None)
        for scene in scenes[:n_described]:
            if described_so_far and rng.random() < 0.1:
                scene, body = rng.choice(described_so_far)
                images.append(("reused", scene, body))
            else:
                body = _jpeg(domain.render(scene, image_size, rng))
                described_so_far.append((scene, body))
                images.append(("described", scene, body))
        if rng.random() < 0.5 or filler_only:
            images.append(("distractor", scenes[-1], _jpeg(domain.render(scenes[-1], image_size, rng))))
        if rng.random() < 0.1:
            images.append(("broken", None, None))
        sentences = [(domain.true_caption(scene, rng), i) for i, (kind, scene, _) in enumerate(images)
                     if kind in ("described", "reused")]
        sentences += [(_filler(rng), None) for _ in range(rng.randint(1, 3))]
        rng.shuffle(sentences)
        order = list(range(len(images)))
        rng.shuffle(order)
        images = [images[i] for i in order]
        true_text = {order.index(i): j for j, (_, i) in enumerate(sentences) if i is not None}
        # Input positions are random, in image order (image k never comes after image k+1).
        slots = sorted(rng.randint(0, len(sentences)) for _ in images)
        if planted.random() < BANNER_RATE:  # last, so the shuffles above don't see it
            scene = domain.sample_scene(planted)
            images.append(("banner", scene, _banner(scene, image_size, planted)))
            slots.append(planted.randint(slots[-1] if slots else 0, len(sentences)))
        paths = []
        for k, (kind, scene, body) in enumerate(images):
            path = f"/doc/{d:05d}/{k}.jpg"
            if body is not None:
                routes[path] = Route(body)
            paths.append(path)
            truth.append({"input_row": d, "image_index": k, "kind": kind, "true_text": true_text.get(k),
                          **_scene_truth(scene)})
        documents.append({"texts": [s for s, _ in sentences], "image_paths": paths, "input_slots": slots})
    return DocumentsCorpus(routes, documents, pa.Table.from_pylist(truth), pa.Table.from_pylist(doc_truth))
