"""img2dataset's Downloader carrying a FetchPolicy (see ``curate.stages.safe_fetch``) and the
fetch settings of ``curate.stages.polite_fetch`` (deadlines, host gate, Retry-After).

A module of its own because it must import img2dataset at module level: the class is
pickled by reference into every worker that runs a shard.
"""

from __future__ import annotations

import contextlib
import functools
import importlib

import img2dataset.downloader as i2d_downloader
from img2dataset.downloader import Downloader

from curate.core import storage
from curate.stages.image_decode import UprightResizer
from curate.stages.polite_fetch import FetchSettings, shard_fetches
from curate.stages.safe_fetch import FetchPolicy, PixelCappedResizer, install

HOSTS_SUFFIX = "_hosts.parquet"  # per-host figures of a download shard, beside its _stats.json


class SafeDownloader(Downloader):
    def __init__(self, *args, fetch_policy: FetchPolicy, fetch_settings: FetchSettings | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fetch_policy = fetch_policy
        self.fetch_settings = fetch_settings or FetchSettings()
        # header pixel cap, then our decode (upright, 8-bit, alpha on white, memory budget), then cv2
        upright = UprightResizer(self.resizer, fetch_policy.max_decode_bytes)
        self.resizer = PixelCappedResizer(upright, fetch_policy.max_image_pixels)

    def __call__(self, row):
        install(self.fetch_policy)  # runs in the worker process, before this shard's first fetch
        _install_stats_hook()
        with shard_fetches(self.fetch_settings) as shard:  # the shard's deadline starts now
            _hosts_of[row[0]] = shard
            try:
                return super().__call__(row)
            finally:
                _hosts_of.pop(row[0], None)


# -- per-host figures, committed with the shard --------------------------------------------------

_hosts_of: dict = {}  # shard id -> its ShardFetches, while it downloads in this process
_original_write_stats = None


def _write_stats_with_hosts(output_folder, shard_id, count, successes, failed_to_download, failed_to_resize,
                            start_time, end_time, status_dict, oom_shard_count):
    """img2dataset writes a shard's ``_stats.json`` (its commit marker) after its Parquet file;
    the shard's per-host figures are written just before it, so they are committed with it."""
    shard = _hosts_of.get(shard_id)
    if shard is not None:
        name = f"{shard_id:0{oom_shard_count}d}"
        storage.write_parquet(storage.join(output_folder, name + HOSTS_SUFFIX), shard.figures.table())
    _original_write_stats(output_folder, shard_id, count, successes, failed_to_download, failed_to_resize,
                          start_time, end_time, status_dict, oom_shard_count)


def _install_stats_hook() -> None:
    """img2dataset's shard loop calls ``write_stats`` by its module-global name: put ours there."""
    global _original_write_stats
    if i2d_downloader.write_stats is not _write_stats_with_hosts:
        _original_write_stats = i2d_downloader.write_stats
        i2d_downloader.write_stats = _write_stats_with_hosts


@contextlib.contextmanager
def downloader_with_policy(policy: FetchPolicy, settings: FetchSettings | None = None):
    """While active, img2dataset's ``download()`` builds SafeDownloaders carrying ``policy``
    and ``settings`` (it constructs its Downloader from the ``img2dataset.main`` module global)."""
    i2d_main = importlib.import_module("img2dataset.main")  # the package re-exports a function `main`
    original = i2d_main.Downloader
    i2d_main.Downloader = functools.partial(SafeDownloader, fetch_policy=policy, fetch_settings=settings)
    try:
        yield
    finally:
        i2d_main.Downloader = original
