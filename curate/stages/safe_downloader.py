"""img2dataset's Downloader carrying a FetchPolicy (see ``curate.stages.safe_fetch``).

A module of its own because it must import img2dataset at module level: the class is
pickled by reference into every worker that runs a shard.
"""

from __future__ import annotations

import contextlib
import functools
import importlib

from img2dataset.downloader import Downloader

from curate.stages.image_decode import UprightResizer
from curate.stages.safe_fetch import FetchPolicy, PixelCappedResizer, install


class SafeDownloader(Downloader):
    def __init__(self, *args, fetch_policy: FetchPolicy, **kwargs):
        super().__init__(*args, **kwargs)
        self.fetch_policy = fetch_policy
        # header pixel cap, then our decode (upright, 8-bit, alpha on white, memory budget), then cv2
        upright = UprightResizer(self.resizer, fetch_policy.max_decode_bytes)
        self.resizer = PixelCappedResizer(upright, fetch_policy.max_image_pixels)

    def __call__(self, row):
        install(self.fetch_policy)  # runs in the worker process, before this shard's first fetch
        return super().__call__(row)


@contextlib.contextmanager
def downloader_with_policy(policy: FetchPolicy):
    """While active, img2dataset's ``download()`` builds SafeDownloaders carrying ``policy``
    (it constructs its Downloader from the ``img2dataset.main`` module global)."""
    i2d_main = importlib.import_module("img2dataset.main")  # the package re-exports a function `main`
    original = i2d_main.Downloader
    i2d_main.Downloader = functools.partial(SafeDownloader, fetch_policy=policy)
    try:
        yield
    finally:
        i2d_main.Downloader = original
