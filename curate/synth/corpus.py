"""The demo's noisy web corpus, made from the synthetic domain, with its ground truth.

Each row is one of these kinds, as web alt-text data mixes them:
``true`` (a correct caption), ``wrong`` (another scene's caption), ``junk`` (file names,
boilerplate), ``exact_dup`` (the same bytes as an earlier image), ``near_dup`` (a
re-encoded / resized / cropped / watermarked copy of an earlier image), ``broken_url``
(404) and ``corrupt`` (bytes that are not an image). The ground truth records the scene,
whether the caption is correct, and which row a duplicate copies, so the demo can score
what curation did. Also used as a test fixture.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

import pyarrow as pa
from PIL import Image

from curate.synth import domain
from curate.synth.http_server import Route

KIND_WEIGHTS = {
    "true": 0.52,
    "wrong": 0.14,
    "junk": 0.12,
    "exact_dup": 0.06,
    "near_dup": 0.06,
    "broken_url": 0.05,
    "corrupt": 0.05,
}


@dataclass
class DemoCorpus:
    routes: dict[str, Route]
    rows: list[dict]  # url path + caption, in input order
    truth: pa.Table  # one row per input row: kind, scene, caption_correct, dup_of_row

    def input_table(self, base_url: str) -> pa.Table:
        return pa.table({
            "url": [base_url + r["path"] for r in self.rows],
            "caption": [r["caption"] for r in self.rows],
        })


def _jpeg(image: Image.Image, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _pick_kind(rng: random.Random, have_originals: bool) -> str:
    kinds, weights = zip(*KIND_WEIGHTS.items())
    while True:
        kind = rng.choices(kinds, weights)[0]
        if have_originals or kind not in ("exact_dup", "near_dup"):
            return kind


def make_corpus(n: int, seed: int = 0, image_size: int = 96) -> DemoCorpus:
    rng = random.Random(seed)
    routes: dict[str, Route] = {}
    rows, truth = [], []
    originals: list[tuple[int, domain.Scene, Image.Image, bytes]] = []  # rows a duplicate can copy
    for i in range(n):
        kind = _pick_kind(rng, bool(originals))
        path = f"/img/{i:06d}.jpg"
        scene, dup_of, body = None, None, None
        if kind in ("exact_dup", "near_dup"):
            dup_of, scene, image, original_bytes = rng.choice(originals)
            body = original_bytes if kind == "exact_dup" else _jpeg(domain.near_duplicate(image, rng), quality=85)
            caption = domain.true_caption(scene, rng)
        elif kind == "broken_url":
            scene = domain.sample_scene(rng)
            caption = domain.true_caption(scene, rng)
        elif kind == "corrupt":
            scene = domain.sample_scene(rng)
            caption = domain.true_caption(scene, rng)
            body = rng.randbytes(1500) if rng.random() < 0.5 else _jpeg(domain.render(scene, image_size, rng))[:400]
        else:
            scene = domain.sample_scene(rng)
            image = domain.render(scene, image_size, rng)
            body = _jpeg(image)
            caption = {
                "true": domain.true_caption, "wrong": domain.wrong_caption,
            }.get(kind, lambda s, r: domain.junk_caption(r))(scene, rng)
            originals.append((i, scene, image, body))
        if body is not None:
            routes[path] = Route(body)
        rows.append({"path": path, "caption": caption})
        truth.append({
            "input_row": i,
            "kind": kind,
            "shape": scene.shape, "colour": scene.colour, "background": scene.background, "size": scene.size,
            "caption_correct": bool(scene and domain.caption_is_correct(caption, scene)),
            "image_ok": kind not in ("broken_url", "corrupt"),
            "dup_of_row": dup_of,
        })
    return DemoCorpus(routes, rows, pa.Table.from_pylist(truth))
