"""Baseline TIFF files written tag by tag (TIFF 6.0), for images Pillow won't write: RGB with
extra samples, CMYK, 16-bit RGB. One strip, Adobe-deflate compressed (a 6000x6000 image of
one colour is a few hundred KB, as the attack's was)."""

from __future__ import annotations

import struct
import zlib

import numpy as np

_SHORT, _LONG = 3, 4
PHOTOMETRIC = {"grey": 1, "rgb": 2, "cmyk": 5}


def tiff_bytes(pixels: np.ndarray, photometric: str = "rgb", extra_samples: tuple[int, ...] = ()) -> bytes:
    """A little-endian TIFF of ``pixels`` (height x width x samples, uint8 or uint16).
    ``extra_samples``: the ExtraSamples values of the samples beyond the photometric's (0:
    unspecified, 1: associated alpha, 2: unassociated alpha)."""
    pixels = pixels if pixels.ndim == 3 else pixels[:, :, None]
    height, width, samples = pixels.shape
    bits = pixels.dtype.itemsize * 8
    strip = zlib.compress(pixels.astype(f"<u{pixels.dtype.itemsize}").tobytes(), 9)
    tags = [(256, _LONG, [width]), (257, _LONG, [height]), (258, _SHORT, [bits] * samples),
            (259, _SHORT, [8]), (262, _SHORT, [PHOTOMETRIC[photometric]]), (273, _LONG, [0]),
            (277, _SHORT, [samples]), (278, _LONG, [height]), (279, _LONG, [len(strip)]), (284, _SHORT, [1])]
    if extra_samples:
        tags.append((338, _SHORT, list(extra_samples)))
    ifd_at = 8
    ifd_size = 2 + 12 * len(tags) + 4
    extra_at = ifd_at + ifd_size  # values longer than 4 bytes, then the strip
    extra, entries = b"", []
    for tag, kind, values in tags:
        packed = struct.pack("<" + ("H" if kind == _SHORT else "I") * len(values), *values)
        entries.append((tag, kind, len(values), packed))
        if len(packed) > 4:
            extra += packed + b"\0" * (len(packed) % 2)
    strip_at = extra_at + len(extra)
    out, extra_offset = [struct.pack("<2sHI", b"II", 42, ifd_at), struct.pack("<H", len(tags))], extra_at
    for tag, kind, count, packed in entries:
        if tag == 273:
            packed = struct.pack("<I", strip_at)
        if len(packed) > 4:
            out.append(struct.pack("<HHII", tag, kind, count, extra_offset))
            extra_offset += len(packed) + len(packed) % 2
        else:
            out.append(struct.pack("<HHI", tag, kind, count) + packed.ljust(4, b"\0"))
    out.append(struct.pack("<I", 0))
    return b"".join(out) + extra + strip
