"""Issue 31, item 1: a non-plain image (extra samples, CMYK, 16-bit, palette with alpha) costs
a download worker about what a plain image of the same size costs, never img2dataset's
float64 alpha matting (a 140 KB 6000x6000 RGBX TIFF took 3.4 GB).

Each image goes through the worker's resizer (img2dataset's Resizer behind curate's decode)
in a fresh process (``decode_peak.py``), which reports the peak resident memory the decode
added. The images are 1536x1536 of random pixels: before the fix, an RGBX or CMYK TIFF added
about 13x what the plain PNG added (182 MB against 14 MB, measured); now each stays within 3x
(24-29 MB), the extra being Pillow's decode and the uncompressed copy handed to cv2."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tiff import tiff_bytes

SIDE = 1536
HERE = Path(__file__).parent


def _pixels(channels: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (SIDE, SIDE, channels), dtype=np.uint8)


def _png(image: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1, **options)
    return out.getvalue()


def _palette_with_alpha() -> bytes:
    image = Image.fromarray(_pixels(1)[:, :, 0], "L").convert("P")
    return _png(image, transparency=0)


NON_PLAIN = {
    "rgb tiff with an unspecified extra sample (RGBX)": lambda: tiff_bytes(_pixels(4), "rgb", (0,)),
    "rgb tiff with two extra samples": lambda: tiff_bytes(_pixels(4)[:, :, [0, 1, 2, 3, 3]], "rgb", (0, 0)),
    "rgb tiff with unassociated alpha": lambda: tiff_bytes(_pixels(4), "rgb", (2,)),
    "cmyk tiff": lambda: tiff_bytes(_pixels(4), "cmyk"),
    "16-bit rgb tiff": lambda: tiff_bytes(_pixels(3).astype(np.uint16) * 257, "rgb"),
    "plain rgb tiff": lambda: tiff_bytes(_pixels(3), "rgb"),
    "palette png with alpha": _palette_with_alpha,
}


def _peak(tmp_path: Path, name: str, data: bytes) -> tuple[int, str]:
    path = tmp_path / name.replace(" ", "_")
    path.write_bytes(data)
    # A clean environment: variables earlier tests of the session set (Ray's, thread counts)
    # must not change how the child allocates.
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([sys.executable, str(HERE / "decode_peak.py"), str(path), str(1 << 30)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    peak, outcome = done.stdout.split()[-2:]
    return int(peak), outcome


@pytest.fixture(scope="module")
def plain_peak(tmp_path_factory) -> int:
    """What a plain PNG of the same size adds, and at least its decoded RGB pixels: the child
    may decode it in memory its start-up already held and freed (a measured 0 once, in a full
    suite), and a plain image always costs its pixels somewhere."""
    peak, outcome = _peak(tmp_path_factory.mktemp("plain"), "plain png", _png(Image.fromarray(_pixels(3), "RGB")))
    assert outcome == "ok"
    return max(peak, SIDE * SIDE * 3)


MEASURED = ("rgb tiff with an unspecified extra sample (RGBX)", "cmyk tiff", "16-bit rgb tiff", "palette png with alpha")


@pytest.mark.parametrize("name", MEASURED)
def test_a_non_plain_image_costs_a_worker_about_what_a_plain_one_of_its_size_does(name, plain_peak, tmp_path):
    peak, outcome = _peak(tmp_path, name, NON_PLAIN[name]())
    assert outcome == "ok"
    assert peak <= 3 * plain_peak, f"{name}: {peak / 2**20:.0f} MiB against {plain_peak / 2**20:.0f} MiB for a plain PNG"


@pytest.mark.parametrize("name,channels", [
    ("rgb tiff with an unspecified extra sample (RGBX)", 4), ("cmyk tiff", 4), ("plain rgb tiff", 3),
    ("rgb tiff with two extra samples", 5),
])
def test_the_decode_budget_counts_the_samples_the_file_stores(name, channels):
    """Pillow calls an RGBX TIFF mode RGB (3 bytes a pixel); its decode holds 4."""
    from curate.download.image_decode import decoded_bytes, is_plain

    image = Image.open(io.BytesIO(NON_PLAIN[name]()))
    assert decoded_bytes(image) == SIDE * SIDE * channels
    assert not is_plain(image)


def test_non_plain_images_reach_cv2_as_8_bit_rgb():
    """What the resizer hands cv2 for each: 3 channels of 8 bits, the pixels as a viewer shows them."""
    from curate.download.image_decode import prepare

    pixels = np.zeros((8, 12, 4), np.uint8)
    pixels[...] = (200, 100, 50, 7)  # the fourth sample is not alpha: it must not change the colour
    for data, expected in ((tiff_bytes(pixels, "rgb", (0,)), (200, 100, 50)),
                           (tiff_bytes(pixels[:, :, :3].astype(np.uint16) * 257, "rgb"), (200, 100, 50))):
        prepared, error = prepare(data, 1 << 30)
        assert error is None and prepared is not None
        out = Image.open(io.BytesIO(prepared))
        assert out.mode == "RGB" and out.getpixel((3, 3)) == expected
