"""Decode a fetched image as a person sees it, within a memory budget, before img2dataset's
resizer (cv2) takes it.

cv2, as img2dataset calls it (``IMREAD_UNCHANGED``), gets four things wrong for web
images: it ignores EXIF orientation (a phone photo is stored sideways, with its sideways
size), it saturates 16-bit images when they are re-encoded to 8 bits (mid-grey becomes
white), it mattes alpha onto white in float64 (about 80 bytes of RAM per pixel: 3 GB for
one 6000x6000 PNG of 150 KB), and nothing bounds what a decode may allocate.

``UprightResizer`` wraps img2dataset's Resizer. From the header alone (Pillow reads no
pixels to open a file) it:

1. refuses an image whose decoded pixels would take more than ``max_decode_bytes``
   (``decoded_bytes``: width x height x channels x bytes per channel), with
   ``image_too_large:max_decode_bytes``; and an image Pillow can't identify as one, with
   img2dataset's own "Image decoding error" (``not_an_image``): its size is unknown;
2. hands a plain image to the Resizer untouched: a JPEG, PNG or WebP of 8-bit grey or
   colour samples, no alpha, upright (``is_plain``), whose cv2 decode is 1 or 3 channels of
   8 bits; cv2 decodes it as before, and the stored bytes, sizes and hashes stay what they
   were;
3. otherwise (any other format, CMYK, extra samples, 16-bit, palette, alpha, EXIF rotation)
   decodes it with Pillow: EXIF orientation applied (``ImageOps.exif_transpose``),
   16-bit samples scaled to 8 bits (the high byte, as libpng's strip-16 and Pillow's own
   16-bit RGB decoding do), alpha composited onto white in uint8 (img2dataset's
   background), and gives the Resizer that image as an uncompressed PPM/PGM, which cv2
   reads without loss. Original sizes are then those of the upright image.

img2dataset hashes (``sha256``) the bytes as fetched, not what this hands on.

Why "plain" is a list of formats and not a list of modes: Pillow's mode says what Pillow
makes of the pixels, not what cv2 will. An RGB TIFF with a fourth "unspecified" sample is
Pillow mode ``RGB`` (raw mode ``RGBX``), a CMYK TIFF is ``CMYK``; cv2 decodes both to 4
channels and img2dataset's float64 alpha matting runs over them (3.4 GB for a 140 KB
6000x6000 TIFF). So only the formats whose cv2 decode of an 8-bit L/RGB image is known to
be 1 or 3 channels of 8 bits go to cv2 as fetched; the budget counts the channels the raw
mode stores (``RGBX``: 4) where they are more than the mode's.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import ExifTags, Image, ImageOps

from curate.schemas.reasons import reason

DECODE_ERROR = "Image decoding error"  # img2dataset's (cv2's) message: reason not_an_image
_WHITE = (255, 255, 255)  # img2dataset mattes alpha onto white
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
_WIDE = {**dict.fromkeys(_SIXTEEN_BIT, 2), "I": 4, "F": 4}  # bytes per channel of wide modes
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
# Formats cv2 decodes (IMREAD_UNCHANGED) to 1 or 3 channels of 8 bits when Pillow opens them
# as 8-bit L or RGB without transparency (a CMYK JPEG too: libjpeg converts it to BGR).
# Every other format (TIFF, BMP, GIF, ICO, ...) is decoded by Pillow first.
_PLAIN_FORMATS = {"JPEG": ("L", "RGB", "CMYK"), "PNG": ("L", "RGB"), "WEBP": ("L", "RGB")}


def _budget_refusal() -> str:
    from curate.download.safe_fetch import FetchRefused  # a signed verdict: how refusals travel through img2dataset

    return str(FetchRefused("image_too_large", "max_decode_bytes"))


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in _ALPHA_MODES or "transparency" in image.info


def _sixteen_bit_samples(image: Image.Image) -> bool:
    # Pillow decodes 16-bit RGB(A) PNGs to 8 bits itself; its raw mode says what was stored.
    return any(";16" in str(tile.args) for tile in getattr(image, "tile", None) or ())


def _stored_channels(image: Image.Image) -> int:
    """Samples per pixel as the file stores them, from the tiles' raw modes (``RGBX``: 4,
    ``CMYK;I``: 4, ``I;16B``: 1); 0 when the decoder names none (GIF, WebP)."""
    most = 0
    for tile in getattr(image, "tile", None) or ():
        args = tile.args if isinstance(tile.args, tuple) else (tile.args,)
        raw = args[0] if args and isinstance(args[0], str) else ""
        # a raw mode's bands are its capitals (Y, Cb, Cr: 3) and 'a' (premultiplied alpha)
        most = max(most, sum(ch.isupper() or ch == "a" for ch in raw.split(";", 1)[0]))
    return most


def decoded_bytes(image: Image.Image) -> int:
    """Bytes the decoded pixels of an opened (not loaded) image take: width x height x
    channels x bytes per channel. Channels: grey 1, grey+alpha 2, colour 3, with alpha (or
    CMYK) 4; a palette counts as the colours it expands to (3, or 4 with transparency); the
    samples the file stores where they are more (an RGB TIFF with an extra sample: 4).
    Bytes per channel: 1 up to 8 bits, 2 for 16-bit samples, 4 for 32-bit ones."""
    width, height = image.size
    if image.mode in ("P", "PA"):
        channels = 4 if _has_alpha(image) else 3
    else:
        channels = max(len(image.getbands()), _stored_channels(image))
    per_channel = _WIDE.get(image.mode, 2 if _sixteen_bit_samples(image) else 1)
    return width * height * channels * per_channel


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1) or 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block: shown as stored, as browsers do
        return 1


def is_plain(image: Image.Image) -> bool:
    """Whether an opened image can go to cv2 as fetched: a JPEG, PNG or WebP (``_PLAIN_FORMATS``)
    of 8-bit grey or colour samples, no alpha or transparency, no extra samples, upright."""
    modes = _PLAIN_FORMATS.get(image.format or "", ())
    return (image.mode in modes and not _has_alpha(image) and not _sixteen_bit_samples(image)
            and _stored_channels(image) <= len(image.getbands()) and _orientation(image) == 1)


def _needs_pillow(image: Image.Image) -> bool:
    return not is_plain(image)


def _to_eight_bit_grey(image: Image.Image) -> Image.Image:
    if image.mode == "F":
        return image.convert("L")  # float samples: Pillow clips them to 0-255
    samples = np.asarray(image)
    if image.mode == "I":  # 32-bit ints holding 16-bit samples (Pillow's older PNG mode)
        samples = np.clip(samples, 0, 0xFFFF)
    return Image.fromarray((samples >> 8).astype(np.uint8), "L")


def _on_white(image: Image.Image) -> Image.Image:
    rgba = image if image.mode == "RGBA" else image.convert("RGBA")
    background = Image.new("RGB", rgba.size, _WHITE)
    background.paste(rgba, mask=rgba.getchannel("A"))  # uint8 blend: a*fg + (255-a)*white
    return background


def upright_eight_bit(image: Image.Image) -> Image.Image:
    """An opened image, decoded: EXIF orientation applied, 8 bits per channel, no alpha
    (composited onto white); mode ``L`` or ``RGB``. Raises what Pillow raises for a
    body it can't decode."""
    image.load()
    ImageOps.exif_transpose(image, in_place=True)  # no copy when already upright
    if image.mode in _WIDE:
        return _to_eight_bit_grey(image)
    if _has_alpha(image):
        return _on_white(image)
    # CMYK, YCbCr, LAB, 1-bit, palette: Pillow's conversions, 8-bit RGB (or L) out
    return image if image.mode in ("L", "RGB") else image.convert("L" if image.mode == "1" else "RGB")


def prepare(data: bytes, max_decode_bytes: int) -> tuple[bytes | None, str | None]:
    """(bytes for the Resizer, or None to give it ``data`` as fetched; error message or None)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: the caps here decide
            image = Image.open(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - not an image Pillow knows: no size, no budget
        return None, DECODE_ERROR
    with image:
        if decoded_bytes(image) > max_decode_bytes:
            return None, _budget_refusal()
        if not _needs_pillow(image):
            return None, None
        try:
            upright = upright_eight_bit(image)
            out = io.BytesIO()
            upright.save(out, format="PPM")  # P5 (grey) or P6 (RGB): cv2 reads both, losslessly
        except Exception:  # noqa: BLE001 - truncated or corrupt pixels
            return None, DECODE_ERROR
    return out.getvalue(), None


class UprightResizer:
    """img2dataset's Resizer behind ``prepare``: same call, same return tuple."""

    def __init__(self, resizer, max_decode_bytes: int):
        self.resizer, self.max_decode_bytes = resizer, max_decode_bytes

    def __call__(self, img_stream, blurring_bbox_list=None):
        img_stream.seek(0)
        prepared, error = prepare(img_stream.read(), self.max_decode_bytes)
        if error is not None:
            return None, None, None, None, None, error
        if prepared is None:
            img_stream.seek(0)
            return self.resizer(img_stream, blurring_bbox_list)
        return self.resizer(io.BytesIO(prepared), blurring_bbox_list)
