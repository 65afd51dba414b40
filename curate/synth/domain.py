"""A deterministic synthetic image-text domain: one coloured shape on a plain background.

Why a synthetic domain: the project trains its own tiny CLIP and BLIP models on it
(``scripts/train_tiny_models.py``), so the demo and the tests run offline with real
models, and every caption -- an alt-text, a captioner's output -- can be judged against
ground truth (:func:`caption_is_correct`) instead of by eye.

A :class:`Scene` is four attributes: a size, a colour, a shape and a background colour.
:func:`render` draws it with random position, rotation, colour jitter and pixel noise,
so no two renders are identical but all of them show the same scene. Captions come in
three kinds, as on the web: true paraphrases (:func:`true_caption`), fluent but wrong
captions (:func:`wrong_caption`) and junk alt-text (:func:`junk_caption`).

Everything is driven by an explicit ``random.Random``: the same seed gives the same
scenes, images and captions.
"""

from __future__ import annotations

import io
import math
import random
import re
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")
SIZES: tuple[str, ...] = ("small", "large")
# Saturated object colours, far apart in RGB so a 64 px image is unambiguous.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 215, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (240, 240, 240),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
    "blue": (40, 80, 220),  # shared with COLOURS on purpose: captions must get word order right
}

# Object extent as a fraction of the image side (the "radius" of the shape).
_RADIUS = {"small": (0.13, 0.18), "large": (0.28, 0.36)}
# Tiny ViTs have no translation equivariance: with shapes anywhere in the frame they
# need many times more steps to learn the shapes, so objects stay near the centre.
_MAX_OFFSET = 0.08
_MAX_ROTATION = 15.0  # degrees; more would turn a square into a diamond
_COLOUR_JITTER = 12  # per channel, either way
_NOISE_SIGMA = 4.0  # Gaussian pixel noise, in 0..255 units


@dataclass(frozen=True)
class Scene:
    """What an image shows. Its canonical caption names all four attributes."""

    shape: str
    colour: str
    background: str
    size: str

    def __post_init__(self) -> None:
        if self.shape not in SHAPES or self.colour not in COLOURS or self.size not in SIZES:
            raise ValueError(f"not a scene of this domain: {self}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"not a scene of this domain: {self}")
        if self.colour == self.background:
            raise ValueError(f"a {self.colour} shape on a {self.background} background is invisible")

    @property
    def color(self) -> str:  # US spelling, for callers who guess it
        return self.colour

    def caption(self) -> str:
        """The canonical true caption, e.g. "a large red circle on a blue background"."""
        return f"a {self.size} {self.colour} {self.shape} on a {self.background} background"


def all_scenes() -> list[Scene]:
    """Every valid scene, in a fixed order (276 of them)."""
    return [
        Scene(shape, colour, background, size)
        for size in SIZES
        for colour in COLOURS
        for shape in SHAPES
        for background in BACKGROUNDS
        if colour != background
    ]


def sample_scene(rng: random.Random) -> Scene:
    """A uniformly random valid scene."""
    while True:
        colour, background = rng.choice(list(COLOURS)), rng.choice(list(BACKGROUNDS))
        if colour != background:
            return Scene(rng.choice(SHAPES), colour, background, rng.choice(SIZES))


def change_one_attribute(scene: Scene, rng: random.Random, attribute: str | None = None) -> Scene:
    """A valid scene that differs from ``scene`` in exactly one attribute (a hard negative)."""
    choices = {"shape": SHAPES, "colour": tuple(COLOURS), "background": tuple(BACKGROUNDS), "size": SIZES}
    attribute = attribute or rng.choice(list(choices))
    while True:
        value = rng.choice([v for v in choices[attribute] if v != getattr(scene, attribute)])
        candidate = {**scene.__dict__, attribute: value}
        if candidate["colour"] != candidate["background"]:
            return replace(scene, **{attribute: value})


# --------------------------------------------------------------------------- rendering


def render(scene: Scene, size: int = 64, rng: random.Random | None = None) -> Image.Image:
    """Draw ``scene`` as a ``size`` x ``size`` RGB image.

    With ``rng`` the position, extent, rotation, colours and noise vary; without it the
    render is canonical (centred, upright, exact colours, no noise) and deterministic.
    """
    return render_with_mask(scene, size, rng)[0]


def render_with_mask(scene: Scene, size: int = 64, rng: random.Random | None = None) -> tuple[Image.Image, Image.Image]:
    """:func:`render`, plus the object's coverage as an "L" image (255 = object).

    The mask is ground truth for training (the script uses it to teach the tiny ViTs
    where the object is); it consumes no extra randomness, so the RGB image is the one
    :func:`render` returns for the same ``rng`` state.
    """
    # Draw at >= 256 px and downsample: anti-aliased edges, so small shapes stay recognisable.
    supersample = max(2, math.ceil(256 / size))
    side = size * supersample
    if rng is None:
        lo, hi = _RADIUS[scene.size]
        radius, angle = side * (lo + hi) / 2, 0.0
        centre = (side / 2, side / 2)
        fg, bg = COLOURS[scene.colour], BACKGROUNDS[scene.background]
    else:
        radius = side * rng.uniform(*_RADIUS[scene.size])
        angle = rng.uniform(-_MAX_ROTATION, _MAX_ROTATION)
        # Off-centre by up to _MAX_OFFSET of the side, and never out of the frame.
        room = min(side * _MAX_OFFSET, max(0.0, side / 2 - radius * 1.15 - side * 0.02))
        centre = (side / 2 + rng.uniform(-room, room), side / 2 + rng.uniform(-room, room))
        fg = _jitter(COLOURS[scene.colour], rng)
        bg = _jitter(BACKGROUNDS[scene.background], rng)

    canvas = Image.new("RGB", (side, side), bg)
    _draw_shape(ImageDraw.Draw(canvas), scene.shape, centre, radius, angle, fg)
    mask = Image.new("L", (side, side), 0)
    _draw_shape(ImageDraw.Draw(mask), scene.shape, centre, radius, angle, 255)
    image = canvas.resize((size, size), Image.Resampling.LANCZOS)
    if rng is not None:
        image = _add_noise(image, rng)
    return image, mask.resize((size, size), Image.Resampling.BOX)


def _jitter(rgb: tuple[int, int, int], rng: random.Random) -> tuple[int, int, int]:
    return tuple(min(255, max(0, c + rng.randint(-_COLOUR_JITTER, _COLOUR_JITTER))) for c in rgb)


def _add_noise(image: Image.Image, rng: random.Random) -> Image.Image:
    noise_rng = np.random.default_rng(rng.getrandbits(32))  # seeded from rng: still deterministic
    pixels = np.asarray(image, dtype=np.float32) + noise_rng.normal(0.0, _NOISE_SIGMA, (image.height, image.width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), "RGB")


def _polygon(centre: tuple[float, float], radii: list[float], angle: float, start: float) -> list[tuple[float, float]]:
    """Points at equal angular steps from ``start`` degrees, each at its own radius."""
    cx, cy = centre
    step = 360.0 / len(radii)
    points = []
    for i, r in enumerate(radii):
        theta = math.radians(start + angle + i * step)
        points.append((cx + r * math.cos(theta), cy + r * math.sin(theta)))
    return points


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, centre, radius: float, angle: float, fill) -> None:
    cx, cy = centre
    if shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    elif shape == "ring":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), outline=fill, width=round(radius * 0.35))
    elif shape == "square":  # half-side 0.85 r: about the same visual weight as the circle
        draw.polygon(_polygon(centre, [radius * 0.85 * math.sqrt(2)] * 4, angle, 45.0), fill=fill)
    elif shape == "triangle":  # pointing up; centroid a little low so it looks centred
        draw.polygon(_polygon((cx, cy + radius * 0.15), [radius * 1.1] * 3, angle, -90.0), fill=fill)
    elif shape == "star":
        draw.polygon(_polygon(centre, [radius * 1.05, radius * 0.45] * 5, angle, -90.0), fill=fill)
    elif shape == "cross":  # a plus sign: 12 corners, arms 0.32 r wide each side
        w, r = radius * 0.32, radius
        corners = [(w, r), (w, w), (r, w), (r, -w), (w, -w), (w, -r), (-w, -r), (-w, -w), (-r, -w), (-r, w), (-w, w), (-w, r)]
        cos_a, sin_a = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        draw.polygon([(cx + x * cos_a - y * sin_a, cy + x * sin_a + y * cos_a) for x, y in corners], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


# --------------------------------------------------------------------------- captions

# Paraphrase templates. Each names the shape and the colour; some also the size and/or
# the background. {a} is the article for the word after it ("an orange ...").
_TEMPLATES: tuple[str, ...] = (
    "{a} {size} {colour} {shape} on a {background} background",
    "{a} {colour} {shape} on a {background} background",
    "{colour} {shape}, {background} background",
    "{size} {colour} {shape}",
    "{colour} {shape}",
    "{a} {colour} {shape}",
    "photo of a {size} {colour} {shape}",
    "a photo of {a} {colour} {shape} on a {background} background",
    "a picture of {a} {colour} {shape}",
    "an image of a {size} {colour} {shape} on a {background} background",
    "a drawing of {a} {colour} {shape}",
    "the {colour} {shape} on a {background} background",
)

_JUNK_WORDS = ("image", "photo", "untitled", "click here", "thumbnail", "logo", "banner", "placeholder", "download", "picture", "")
_JUNK_PHRASES = ("buy now 50% off", "free shipping on all orders", "sale!!!", "click to enlarge", "product image",
                 "stock photo", "see more", "no description available", "image not found", "view larger")


def _fill(template: str, scene: Scene) -> str:
    text = template.format(a="{a}", size=scene.size, colour=scene.colour, shape=scene.shape, background=scene.background)
    # The article agrees with the word that follows it.
    return re.sub(r"\{a\} (\w)", lambda m: ("an " if m.group(1) in "aeiou" else "a ") + m.group(1), text)


def true_caption(scene: Scene, rng: random.Random) -> str:
    """A random paraphrase of the scene's caption; always correct for ``scene``."""
    return _fill(rng.choice(_TEMPLATES), scene)


def wrong_caption(scene: Scene, rng: random.Random, *, hard: bool | None = None, attribute: str | None = None) -> str:
    """A fluent caption of another scene that is wrong for ``scene``.

    ``hard=True``: the other scene differs in exactly one attribute that the caption
    mentions (the hard negative a filter must catch), ``attribute`` if given;
    ``hard=False``: any other scene; ``None``: either, at random.
    """
    if hard is None:
        hard = attribute is not None or rng.random() < 0.5
    while True:  # a template may not mention the changed attribute: then draw again
        other = change_one_attribute(scene, rng, attribute) if hard else sample_scene(rng)
        caption = _fill(rng.choice(_TEMPLATES), other)
        if not caption_is_correct(caption, scene):
            return caption


def junk_caption(rng: random.Random) -> str:
    """Web junk alt-text: file names, boilerplate, URLs, or nothing at all."""
    kind = rng.randrange(6)
    if kind == 0:
        return f"IMG_{rng.randrange(10000):04d}.{rng.choice(['JPG', 'jpg', 'jpeg', 'PNG'])}"
    if kind == 1:
        return f"{rng.choice(['DSC', 'DSC_', 'P', 'DCIM'])}{rng.randrange(100000):05d}.{rng.choice(['jpg', 'JPG'])}"
    if kind == 2:
        return rng.choice(_JUNK_WORDS)
    if kind == 3:
        return rng.choice(_JUNK_PHRASES)
    if kind == 4:
        host = rng.choice(["www.example.com", "cdn.shop.example", "img.example.org", "static.example.net"])
        return f"https://{host}/{rng.choice(['img', 'uploads', 'media'])}/{rng.getrandbits(32):08x}.{rng.choice(['jpg', 'png', 'webp'])}"
    return rng.choice(["Untitled-1", "banner_728x90.gif", f"Screenshot 2021-0{rng.randint(1, 9)}-1{rng.randint(0, 9)} at 10.22.31",
                       f"product-{rng.randrange(1000)}-main", "image001.png", "spacer.gif"])


# The words of every caption in the domain: true and wrong captions, and the captioner's
# outputs (which are canonical captions, optionally after the prompt "a picture of").
VOCABULARY: list[str] = sorted(
    set(SHAPES) | set(SIZES) | set(COLOURS) | set(BACKGROUNDS)
    | {"a", "an", "the", "on", "of", "background", "photo", "picture", "image", "drawing"}
)


def parse_caption(caption: str) -> dict[str, set[str]]:
    """Which shapes, sizes, object colours and background colours a caption mentions.

    A colour word is a background when "background" follows it or "on" (+ article)
    precedes it ("on a blue background", "red circle, blue background"); otherwise it
    is the object's colour.
    """
    words = re.findall(r"[a-z]+", caption.lower())
    found: dict[str, set[str]] = {"shape": set(), "size": set(), "colour": set(), "background": set()}
    for i, word in enumerate(words):
        if word in SHAPES:
            found["shape"].add(word)
        elif word in SIZES:
            found["size"].add(word)
        elif word in COLOURS or word in BACKGROUNDS:
            after = words[i + 1] if i + 1 < len(words) else ""
            before = words[max(0, i - 2):i]
            is_background = after == "background" or (before and (before[-1] == "on" or before[0] == "on"))
            found["background" if is_background else "colour"].add(word)
    return found


def caption_is_correct(caption: str, scene: Scene) -> bool:
    """True iff the caption names the scene's shape and colour, and gets the background
    and the size right if it mentions them. A caption naming two shapes or two object
    colours is wrong; one that names no shape or no colour (junk) is wrong.
    """
    found = parse_caption(caption)
    return (
        found["shape"] == {scene.shape}
        and found["colour"] == {scene.colour}
        and found["background"] <= {scene.background}
        and found["size"] <= {scene.size}
    )


# --------------------------------------------------------------------------- near duplicates


def near_duplicate(image: Image.Image, rng: random.Random) -> Image.Image:
    """A near-duplicate of ``image``, as the web makes them: two to four of re-encoding at
    another JPEG quality, a slight resize, a small crop, a tiny watermark and a
    brightness change. The output may differ in size by a few pixels.
    """
    edits = [_reencode, _resize, _crop, _watermark, _brighten]
    out = image.convert("RGB")
    for edit in rng.sample(edits, rng.randint(2, 4)):
        out = edit(out, rng)
    return out


def _reencode(image: Image.Image, rng: random.Random) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=rng.randint(40, 90))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _resize(image: Image.Image, rng: random.Random) -> Image.Image:
    factor = rng.uniform(0.85, 1.15)
    return image.resize((max(8, round(image.width * factor)), max(8, round(image.height * factor))), Image.Resampling.BICUBIC)


def _crop(image: Image.Image, rng: random.Random) -> Image.Image:
    w, h = image.size
    dx, dy = max(1, w // 20), max(1, h // 20)  # at most 5 % off each side
    left, top = rng.randint(0, dx), rng.randint(0, dy)
    return image.crop((left, top, w - rng.randint(0, dx), h - rng.randint(0, dy)))


def _watermark(image: Image.Image, rng: random.Random) -> Image.Image:
    out = image.copy()
    font = ImageFont.load_default(size=max(6, image.width // 10))
    text = rng.choice(["©", "© stock", "sample", "www", "©2023"])
    x = rng.choice([1, image.width // 2])
    y = image.height - max(6, image.width // 10) - 2
    draw = ImageDraw.Draw(out, "RGBA")
    draw.text((x, y), text, font=font, fill=(255, 255, 255, 110) if rng.random() < 0.5 else (0, 0, 0, 110))
    return out


def _brighten(image: Image.Image, rng: random.Random) -> Image.Image:
    return ImageEnhance.Brightness(image).enhance(rng.uniform(0.88, 1.12))


# -- visual quality: the target of the tiny aesthetic head ----------------------------------

FULL_CONTRAST = 0.7  # luminance difference (0..1) that earns the whole contrast half
FULL_FRAMING = 0.35  # fraction of the frame the object covers that earns the whole framing half


def luminance(rgb: tuple[int, int, int]) -> float:
    """Relative luminance 0..1 of an sRGB colour, ITU-R BT.709 weights (no gamma)."""
    return (0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]) / 255


def visual_quality(scene: Scene, mask: Image.Image) -> float:
    """The domain's stand-in for aesthetics, on the 1..10 scale of the aesthetic predictors
    (AVA's): half figure-ground contrast (the luminance difference of the object's colour and
    the background's, full at FULL_CONTRAST), half framing (the share of the frame the object
    fills, from ``render_with_mask``'s mask, full at FULL_FRAMING). A yellow dot on white
    scores low, a large blue star on black high: composition, not content, the way a
    photographer's rating rewards a clear, well-framed subject."""
    contrast = abs(luminance(COLOURS[scene.colour]) - luminance(BACKGROUNDS[scene.background]))
    framing = float(np.asarray(mask, np.float32).mean()) / 255
    score = 0.5 * min(contrast / FULL_CONTRAST, 1.0) + 0.5 * min(framing / FULL_FRAMING, 1.0)
    return 1.0 + 9.0 * score
