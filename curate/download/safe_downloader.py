"""img2dataset's Downloader carrying a FetchPolicy (see ``curate.download.safe_fetch``) and the
fetch settings of ``curate.download.polite_fetch`` (deadlines, host gate, Retry-After).

A module of its own because it must import img2dataset at module level: the classes are
pickled by reference into every worker that runs a shard (and into img2dataset's logger
process).
"""

from __future__ import annotations

import contextlib
import functools
import importlib

import pyarrow as pa
import img2dataset.downloader as i2d_downloader
from img2dataset.downloader import Downloader
from img2dataset.logger import LoggerProcess

from curate.core import commits, storage
from curate.core.lifeline import die_with_parent
from curate.download.image_decode import UprightResizer
from curate.download.polite_fetch import FetchSettings, shard_fetches
from curate.download.safe_fetch import FetchPolicy, PixelCappedResizer, install, verified_reason

# The column of a downloaded shard that holds the reason of a failed row, as verified in
# the worker that fetched it (``safe_fetch.verified_reason``). Rows without one failed in
# img2dataset's own code (X-Robots-Tag, the resizer) or succeeded.
FETCH_REASON = "fetch_reason"


class VerdictWriter:
    """Wraps img2dataset's sample writer: every row gets ``FETCH_REASON``, read from its
    error message in this process, where the verdict's signature can be checked."""

    def __init__(self, writer_class, shard_id, output_folder, save_caption, oom_shard_count, schema, encode_format):
        schema = schema.append(pa.field(FETCH_REASON, pa.string()))
        self.writer = writer_class(shard_id, output_folder, save_caption, oom_shard_count, schema, encode_format)

    def write(self, img_str, key, caption, meta):
        self.writer.write(img_str, key, caption, {**meta, FETCH_REASON: verified_reason(meta.get("error_message"))})

    def close(self):
        self.writer.close()

HOSTS_SUFFIX = "_hosts.parquet"  # per-host figures of a download shard, beside its _stats.json


class SafeDownloader(Downloader):
    """img2dataset's Downloader that fetches under ``fetch_policy`` and ``fetch_settings``
    (curate.download.polite_fetch), records verified verdicts, and commits each finished
    shard with a record (curate.core.commits)."""

    def __init__(self, *args, fetch_policy: FetchPolicy, fetch_settings: FetchSettings | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fetch_policy = fetch_policy
        self.fetch_settings = fetch_settings or FetchSettings()
        # header pixel cap, then our decode (upright, 8-bit, alpha on white, memory budget), then cv2
        upright = UprightResizer(self.resizer, fetch_policy.max_decode_bytes)
        self.resizer = PixelCappedResizer(upright, fetch_policy.max_image_pixels)
        self.sample_writer_class = functools.partial(VerdictWriter, self.sample_writer_class)

    def __call__(self, row):
        install(self.fetch_policy)  # runs in the worker process, before this shard's first fetch
        _install_stats_hook()
        with shard_fetches(self.fetch_settings) as shard:  # the shard's deadline starts now
            _hosts_of[row[0]] = shard
            try:
                done, _ = result = super().__call__(row)
            finally:
                _hosts_of.pop(row[0], None)
        if done:
            # The shard's Parquet, its per-host figures and then its stats are closed: record
            # them. Without records a shard is not committed (a resume downloads it again).
            name = "{shard_id:0{width}d}".format(shard_id=row[0], width=self.oom_shard_count)
            for suffix in (".parquet", HOSTS_SUFFIX, "_stats.json"):
                if suffix != HOSTS_SUFFIX or storage.exists(storage.join(self.output_folder, name + suffix)):
                    commits.record(storage.join(self.output_folder, name + suffix))
        return result


class OrphanFreeLoggerProcess(LoggerProcess):
    """img2dataset's logger process (it loops until the driver tells it to stop), ended
    by the kernel when the driver dies."""

    def start(self):
        super().start()
        _started_loggers.append(self)

    def run(self):
        die_with_parent()
        super().run()


# Logger processes started in this (driver) process. img2dataset joins its logger only when the
# download succeeds: when it raises (its reader could not write the shard lists), the logger may
# still be starting, and a spawned child whose parent moves on prints a traceback unpickling its
# queue. ``downloader_with_policy`` ends them on the way out.
_started_loggers: list = []


def _stop_loggers() -> None:
    while _started_loggers:
        logger = _started_loggers.pop()
        if logger.is_alive():
            logger.terminate()
        logger.join(timeout=10)


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
    and ``settings``, and an OrphanFreeLoggerProcess (it constructs both from
    ``img2dataset.main`` globals)."""
    i2d_main = importlib.import_module("img2dataset.main")  # the package re-exports a function `main`
    originals = i2d_main.Downloader, i2d_main.LoggerProcess
    i2d_main.Downloader = functools.partial(SafeDownloader, fetch_policy=policy, fetch_settings=settings)
    i2d_main.LoggerProcess = OrphanFreeLoggerProcess
    try:
        yield
    except BaseException:
        _stop_loggers()  # img2dataset raised before joining its logger process
        raise
    finally:
        _started_loggers.clear()
        i2d_main.Downloader, i2d_main.LoggerProcess = originals
