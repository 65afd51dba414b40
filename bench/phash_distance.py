"""How far apart the pHashes of a picture's copies are, and of different pictures: the figures
behind ``dedupe.phash_distance`` (docs/dedupe.md).

    .venv/bin/python bench/phash_distance.py [--n 200]

Two kinds of picture, each at 256 px: photo-like ones (smooth structure plus finer detail,
all in the same two colours: tests/test_phash.py's) and the synthetic domain's renders (one
flat shape on a plain background: little texture, the hard case for a DCT hash). For each,
the Hamming distance (of 64 bits) between a picture and: its JPEG re-encode (quality 60),
a 0.7x resize, a 2 % crop of each side, a 3 % crop, and the three together; another render of
the same scene (synthetic only); and another picture (photo-like: same colours; synthetic:
same colours, another shape). It prints quantiles and the share within the default distance.
"""

from __future__ import annotations

import argparse
import io
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import imagehash  # noqa: E402

from curate.core.config import DedupeConfig  # noqa: E402
from curate.synth import domain  # noqa: E402
from test_phash import crop, encoded, photo  # noqa: E402


def _jpeg(image: Image.Image) -> Image.Image:
    return Image.open(io.BytesIO(encoded(image, "JPEG", quality=60))).convert("RGB")


EDITS = {
    "JPEG re-encode (q 60)": _jpeg,
    "resize 0.7x": lambda im: im.resize((180, 180), Image.Resampling.BICUBIC),
    "crop 2 % per side": lambda im: crop(im, 0.02),
    "crop 3 % per side": lambda im: crop(im, 0.03),
    "re-encode + resize + crop 2 %": lambda im: _jpeg(crop(im.resize((200, 200), Image.Resampling.BICUBIC), 0.02)),
}


def distance(a: Image.Image, b: Image.Image) -> int:
    return int(imagehash.phash(a) - imagehash.phash(b))


def measure(n: int) -> dict[str, dict[str, np.ndarray]]:
    rng = random.Random(0)
    out: dict[str, dict[str, list[int]]] = {"photo-like": {}, "synthetic render": {}}
    for i in range(n):
        picture = photo(i)
        for name, edit in EDITS.items():
            out["photo-like"].setdefault(name, []).append(distance(picture, edit(picture)))
        out["photo-like"].setdefault("another picture, same colours", []).append(distance(picture, photo(i + 10_000)))
        scene = domain.sample_scene(rng)
        render = domain.render(scene, 256, rng)
        for name, edit in EDITS.items():
            out["synthetic render"].setdefault(name, []).append(distance(render, edit(render)))
        out["synthetic render"].setdefault("another render of the same scene", []).append(
            distance(render, domain.render(scene, 256, rng)))
        other = domain.change_one_attribute(scene, rng, "shape")
        out["synthetic render"].setdefault("same colours, another shape", []).append(
            distance(render, domain.render(other, 256, rng)))
    return {kind: {k: np.array(v) for k, v in pairs.items()} for kind, pairs in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="pictures of each kind")
    args = parser.parse_args()
    default = DedupeConfig().phash_distance
    print(f"| pictures | pair | median | 95th pct | max | within {default} bits |")
    print("|---|---|---|---|---|---|")
    for kind, pairs in measure(args.n).items():
        for name, d in pairs.items():
            print(f"| {kind} | {name} | {np.median(d):.0f} | {np.percentile(d, 95):.0f} | {d.max()} | "
                  f"{np.mean(d <= default):.0%} |")
    print(f"\n{args.n} pictures of each kind; distances of 64-bit pHashes (imagehash {imagehash.__version__}).")


if __name__ == "__main__":
    main()
