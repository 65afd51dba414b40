"""The synthetic image-text domain: deterministic from a seed, and its captions judged right."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
from PIL import Image

from curate.synth import domain
from curate.synth.domain import Scene


def _pixels(image: Image.Image, side: int = 32) -> np.ndarray:
    return np.asarray(image.convert("RGB").resize((side, side), Image.Resampling.BILINEAR), dtype=np.float32)


def _sample(seed: int, n: int = 20):
    """Scenes, renders and captions of every kind, all from one seed."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        scene = domain.sample_scene(rng)
        image = domain.render(scene, 64, rng)
        out.append((scene, image.tobytes(), domain.true_caption(scene, rng), domain.wrong_caption(scene, rng),
                    domain.junk_caption(rng), domain.near_duplicate(image, rng).tobytes()))
    return out


def test_same_seed_same_data_other_seed_other_data():
    assert _sample(7) == _sample(7)
    assert _sample(7) != _sample(8)


def test_renders_of_one_scene_differ_but_canonical_render_is_fixed():
    scene = Scene("star", "red", "blue", "large")
    rng = random.Random(0)
    first, second = domain.render(scene, 64, rng), domain.render(scene, 64, rng)
    assert first.mode == "RGB" and first.size == (64, 64)
    assert first.tobytes() != second.tobytes()
    assert domain.render(scene).tobytes() == domain.render(scene).tobytes()
    assert domain.render(scene, size=128).size == (128, 128)


def test_render_shows_the_colours():
    image = _pixels(domain.render(Scene("square", "red", "white", "large")), 64)
    assert np.allclose(image[0, 0], domain.BACKGROUNDS["white"], atol=2)  # corner: background
    assert np.allclose(image[32, 32], domain.COLOURS["red"], atol=2)  # centre: the object


def test_scenes():
    scenes = domain.all_scenes()
    assert len(scenes) == len(set(scenes)) == 276
    with pytest.raises(ValueError):
        Scene("circle", "blue", "blue", "small")  # invisible
    with pytest.raises(ValueError):
        Scene("hexagon", "red", "white", "small")
    scene = Scene("circle", "red", "blue", "large")
    assert scene.caption() == "a large red circle on a blue background"
    assert scene.color == "red"
    rng = random.Random(0)
    assert {domain.sample_scene(rng) for _ in range(3000)} == set(scenes)


@pytest.mark.parametrize(
    ("caption", "correct"),
    [
        ("a large red circle on a blue background", True),
        ("red circle, blue background", True),
        ("photo of a large red circle", True),
        ("A Red Circle.", True),
        ("a picture of a red circle", True),
        ("a small red circle", False),  # wrong size
        ("a blue circle on a red background", False),  # colours swapped
        ("a red circle on a white background", False),
        ("a red ring on a blue background", False),
        ("a red circle and a red square", False),  # two shapes
        ("a red and green circle", False),  # two object colours
        ("a circle", False),  # no colour
        ("red", False),  # no shape
        ("IMG_1234.JPG", False),
        ("", False),
    ],
)
def test_caption_is_correct_examples(caption, correct):
    assert domain.caption_is_correct(caption, Scene("circle", "red", "blue", "large")) is correct


def test_generated_captions_are_judged_by_ground_truth():
    rng = random.Random(3)
    for _ in range(500):
        scene = domain.sample_scene(rng)
        assert domain.caption_is_correct(scene.caption(), scene)
        assert domain.caption_is_correct(domain.true_caption(scene, rng), scene)
        assert not domain.caption_is_correct(domain.wrong_caption(scene, rng, hard=True), scene)
        assert not domain.caption_is_correct(domain.wrong_caption(scene, rng, hard=False), scene)
        assert not domain.caption_is_correct(domain.junk_caption(rng), scene)


def test_hard_negatives_change_one_attribute():
    rng = random.Random(4)
    for _ in range(200):
        scene = domain.sample_scene(rng)
        other = domain.change_one_attribute(scene, rng)
        changed = [a for a in ("shape", "colour", "background", "size") if getattr(scene, a) != getattr(other, a)]
        assert len(changed) == 1


def test_vocabulary_covers_every_domain_caption():
    rng = random.Random(5)
    words = set()
    for _ in range(500):
        scene = domain.sample_scene(rng)
        for caption in (scene.caption(), "a picture of " + scene.caption(), domain.true_caption(scene, rng),
                        domain.wrong_caption(scene, rng)):
            words |= set(re.findall(r"[a-z]+", caption))
    assert words <= set(domain.VOCABULARY)


def test_junk_captions_look_like_web_junk():
    rng = random.Random(6)
    junk = {domain.junk_caption(rng) for _ in range(300)}
    assert "" in junk
    assert any(re.fullmatch(r"IMG_\d{4}\.\w+", j) for j in junk)
    assert any(j.startswith("https://") for j in junk)


def test_near_duplicate_stays_close():
    rng = random.Random(8)
    to_copy, to_other_render = [], []
    for _ in range(50):
        scene = domain.sample_scene(rng)
        image = domain.render(scene, 64, rng)
        copy = domain.near_duplicate(image, rng)
        assert copy.mode == "RGB" and copy.tobytes() != image.tobytes()
        assert all(abs(c - o) <= 0.2 * o for c, o in zip(copy.size, image.size))
        to_copy.append(np.abs(_pixels(image) - _pixels(copy)).mean())
        to_other_render.append(np.abs(_pixels(image) - _pixels(domain.render(scene, 64, rng))).mean())
    assert max(to_copy) < 30  # of 255
    assert np.mean(to_copy) < np.mean(to_other_render)
