"""A mixed web corpus for tests: real image bytes of every common kind plus every failure.

``mixed_corpus()`` returns the HTTP routes and the input rows, each row with the status
and reason-code the pipeline must record for it.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

from PIL import Image

from curate.synth.http_server import Route


def image_bytes(fmt: str, size=(96, 80), mode="RGB", seed=0) -> bytes:
    rng = random.Random(seed)
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    for _ in range(6):  # a few blocks so images differ and aren't trivially compressible
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        image.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, min(size[0], x + 20), min(size[1], y + 20)))
    if mode == "CMYK":
        image = image.convert("CMYK")
    elif mode == "P":
        image = image.convert("P", palette=Image.ADAPTIVE, colors=16)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@dataclass(frozen=True)
class Case:
    path: str
    route: Route | None  # None: not served (404)
    caption: str
    status: str
    reason: str | None  # reason code (the part before ':'), None for kept


def mixed_corpus(seed: int = 0) -> list[Case]:
    good = "a photo of a red bicycle leaning on a wall"
    jpeg = image_bytes("JPEG", seed=seed + 1)
    cases = [
        Case("/ok/jpeg.jpg", Route(jpeg), good, "kept", None),
        Case("/ok/png.png", Route(image_bytes("PNG", seed=seed + 2), content_type="image/png"), "a green field under a blue sky", "kept", None),
        Case("/ok/webp.webp", Route(image_bytes("WEBP", seed=seed + 3), content_type="image/webp"), "a cat sleeping on a sofa", "kept", None),
        Case("/ok/cmyk.jpg", Route(image_bytes("JPEG", mode="CMYK", seed=seed + 4)), "a printed poster of a mountain", "kept", None),
        Case("/ok/palette.png", Route(image_bytes("PNG", mode="P", seed=seed + 5), content_type="image/png"), "a small flat icon of a house", "kept", None),
        Case("/missing.jpg", None, good, "download_failed", "http_404"),
        Case("/server-error.jpg", Route(b"oops", status=500, content_type="text/plain"), good, "download_failed", "http_500"),
        Case("/corrupt.jpg", Route(bytes(random.Random(seed).randrange(256) for _ in range(2048))), good, "download_failed", "not_an_image"),
        Case("/truncated.jpg", Route(jpeg[: len(jpeg) // 3]), good, "download_failed", "not_an_image"),
        Case("/page.jpg", Route(b"<html><body>not an image</body></html>", content_type="text/html"), good, "download_failed", "not_an_image"),
        Case("/slow.jpg", Route(jpeg, delay=6.0), good, "download_failed", "timeout"),
        Case("/small.jpg", Route(image_bytes("JPEG", size=(20, 20), seed=seed + 6)), good, "filtered", "image_too_small"),
        Case("/wide.jpg", Route(image_bytes("JPEG", size=(400, 70), seed=seed + 7)), good, "filtered", "aspect_ratio_above"),
        Case("/junk-file.jpg", Route(image_bytes("JPEG", seed=seed + 8)), "IMG_1234.JPG", "filtered", "caption_junk"),
        Case("/junk-click.jpg", Route(image_bytes("JPEG", seed=seed + 9)), "click here", "filtered", "caption_junk"),
        Case("/empty-caption.jpg", Route(image_bytes("JPEG", seed=seed + 10)), "   ", "filtered", "caption_empty"),
        Case("/short-caption.jpg", Route(image_bytes("JPEG", seed=seed + 11)), "bicycle", "filtered", "caption_too_short"),
    ]
    return cases


def blocked_rows() -> list[dict]:
    """Rows the pre-download check must block (url, caption, reason code)."""
    return [
        {"url": None, "caption": "no url at all", "reason": "url_missing"},
        {"url": "", "caption": "empty url", "reason": "url_missing"},
        {"url": "ftp://example.com/a.jpg", "caption": "an ftp url", "reason": "scheme_not_allowed"},
        {"url": "file:///etc/passwd", "caption": "a local file", "reason": "scheme_not_allowed"},
        {"url": "http://169.254.169.254/latest/meta-data/", "caption": "cloud metadata", "reason": "private_host"},
        {"url": "http://[::1]/x.jpg", "caption": "ipv6 loopback", "reason": "private_host"},
        {"url": "http://2130706433/x.jpg", "caption": "decimal loopback", "reason": "private_host"},
        {"url": "http://10.0.0.8/x.jpg", "caption": "a private address", "reason": "private_host"},
        {"url": "not a url", "caption": "garbage", "reason": "scheme_not_allowed"},
    ]
