"""Run one image through a download worker's resizer (img2dataset's Resizer behind curate's
decode) in this fresh process and print the peak resident memory the decode added, in bytes.

    python decode_peak.py IMAGE_FILE MAX_DECODE_BYTES

Run as a subprocess per image, so that one image's peak (ru_maxrss is a high-water mark)
never hides another's."""

import io
import os
import resource
import sys


def main() -> None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from img2dataset.resizer import Resizer

    from curate.download.image_decode import UprightResizer

    data = open(sys.argv[1], "rb").read()
    resizer = UprightResizer(Resizer(image_size=256, resize_mode="border", resize_only_if_bigger=False,
                                     encode_format="jpg", encode_quality=95), int(sys.argv[2]))
    warm = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (64, 64)).save(warm, "PNG")
    resizer(io.BytesIO(warm.getvalue()))  # libraries loaded and their first allocations made
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = resizer(io.BytesIO(data))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) * 1024, result[5] or "ok")  # ru_maxrss is in KiB on Linux


if __name__ == "__main__":
    main()
