"""Peak memory of decoding one image: img2dataset's Resizer alone vs behind curate's decode step.

    .venv/bin/python bench/decode_memory.py            # 6000x6000: RGBA, RGB, 16-bit grey PNGs
    .venv/bin/python bench/decode_memory.py --side 4000

Each (image, path) pair runs in a fresh subprocess: the figure is that process's peak RSS
(ru_maxrss) after the call minus before it, with every import done and the body in memory,
so it is what one decode adds. "budget" is the figure curate checks from the header before
decoding (width x height x channels x bytes per channel, curate.download.image_decode); the
Resizer is img2dataset's with resize_mode border to 256 px, as a run uses it. The images
are flat colours: a few hundred KB of PNG each (a small file decoding to a large buffer is
the case the budget is for).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = r"""
import io, os, resource, sys
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
from img2dataset.resizer import Resizer
from PIL import Image
from curate.download.image_decode import UprightResizer, decoded_bytes
path, kind = sys.argv[1], sys.argv[2]
data = open(path, "rb").read()
budget = decoded_bytes(Image.open(io.BytesIO(data)))
resizer = Resizer(image_size=256, resize_mode="border", resize_only_if_bigger=False)
if kind == "curate":
    resizer = UprightResizer(resizer, 2**62)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
error = resizer(io.BytesIO(data))[5]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(budget, (peak - before) * 1024, error or "")
"""


def _images(side: int, folder: Path) -> dict[str, Path]:
    import numpy as np
    from PIL import Image

    rgba = Image.new("RGBA", (side, side), (10, 200, 30, 128))
    rgba.paste((255, 0, 0, 255), (0, 0, side // 2, side // 2))
    paths = {"RGBA 8-bit": (rgba, "rgba.png"), "RGB 8-bit": (rgba.convert("RGB"), "rgb.png"),
             "grey 16-bit": (Image.fromarray(np.full((side, side), 0x8000, np.uint16)), "grey16.png")}
    out = {}
    for name, (image, file) in paths.items():
        image.save(folder / file)
        out[name] = folder / file
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=6000, help="image width and height in pixels")
    args = parser.parse_args()
    mib = 2**20
    with tempfile.TemporaryDirectory() as tmp:
        print(f"| {args.side}x{args.side} PNG | file KB | budget MiB | img2dataset alone, peak MiB | with curate's decode, peak MiB |")
        print("|---|---|---|---|---|")
        for name, path in _images(args.side, Path(tmp)).items():
            figures = {}
            for kind in ("img2dataset", "curate"):
                done = subprocess.run([sys.executable, "-c", _CHILD, str(path), kind],
                                      capture_output=True, text=True, check=True)
                budget, peak, *error = done.stdout.split()
                figures[kind] = int(peak) / mib
            size_kb = path.stat().st_size / 1024
            print(f"| {name} | {size_kb:,.0f} | {int(budget) / mib:,.0f} | {figures['img2dataset']:,.0f} | {figures['curate']:,.0f} |")


if __name__ == "__main__":
    main()
