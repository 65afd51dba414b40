"""Step 2: download with img2dataset, as a library.

img2dataset does the fetching, X-Robots-Tag opt-out handling, resizing and re-encoding;
this module only calls it and turns each failed row into a reason code: the verdict the
fetching worker verified (``fetch_reason``, see curate.download.safe_fetch), or else
img2dataset's own message for what happened after the fetch (``curate.download.download_errors``).
Each row's fetch runs under a deadline, a per-host gate shared by every shard and
Retry-After (``curate.download.polite_fetch``), each shard under ``download.shard_timeout``.
Its Parquet output keeps failed rows, and it writes a shard's ``*_stats.json`` only after
the shard's Parquet is closed, so the stats file is the
shard's commit marker: ``incremental_mode="incremental"`` skips committed shards on resume.

Fetching goes through ``curate.download.safe_fetch`` (address checks at connect time, body
and time caps, pixel cap). img2dataset only logs a shard that fails as a whole (a disk or
bucket write error) and carries on, so ``run_download`` checks afterwards that every
shard was committed and stops the run if not: its rows are retried on resume, never
recorded as failed downloads.
"""

from __future__ import annotations

import builtins
import contextlib
import multiprocessing
import signal
import sys
import threading

from curate.core import storage
from curate.core.config import DownloadConfig
# download_reason etc. lived here first; imported from here by the inspect stage and tests.
from curate.download.download_errors import (  # noqa: F401
    BLOCKED_AT_DOWNLOAD, TRANSIENT_REASONS, ReasonSet, download_reason,
)
from curate.download.safe_fetch import FetchPolicy


class DownloadIncomplete(OSError):
    """Some download shards were not committed (disk full, bucket write error: an
    environment failure, hence an OSError); a re-run resumes them."""


def run_download(list_dir: str, out_dir: str, cfg: DownloadConfig, carried: list[str]) -> None:
    """Download every part of ``list_dir`` into ``out_dir`` (one img2dataset shard per part);
    the ``carried`` columns of the list (beyond url and caption) go into the downloaded shards."""
    from img2dataset import download  # heavy import (cv2, albumentations, wandb): only when used

    from curate.download.host_gate import start_host_gate, stop_host_gate
    from curate.download.polite_fetch import FetchSettings
    from curate.download.safe_downloader import downloader_with_policy
    from curate.download.write_retries import reader_write_pauses

    parts = storage.list_files(list_dir, ".parquet")
    if not parts:
        return
    previous_sigint = signal.getsignal(signal.SIGINT)
    gate = start_host_gate(cfg.max_per_host, cfg.per_host_rps)  # one schedule per host for every shard
    interrupted = threading.Event()
    try:
        with downloader_with_policy(FetchPolicy.from_config(cfg), FetchSettings.from_config(cfg, gate)), \
                reader_write_pauses(cfg.write_retry_pause), _interrupts_seen(interrupted):
            with _without_banner():
                _download(download, list_dir, out_dir, cfg, carried)
    except SystemExit:
        if not interrupted.is_set():
            raise
        # img2dataset's SIGINT handler ends a Ctrl-C with sys.exit(0) (which ray.get turns into
        # SystemExit(1)): it was an interrupt, and the run stops as one, resumable.
        raise KeyboardInterrupt from None
    except KeyboardInterrupt:
        # A SIGTERM (or a SIGINT outside img2dataset's handler) skipped img2dataset's own
        # cleanup: its logger process, not a daemon, would keep this process from exiting.
        for child in multiprocessing.active_children():
            if type(child).__name__ == "LoggerProcess":
                child.terminate()
        raise
    finally:
        # img2dataset installs a SIGINT handler that exits with status 0; put ours back.
        signal.signal(signal.SIGINT, previous_sigint)
        stop_host_gate(gate)
    missing = len(parts) - len(committed_shards(out_dir))
    if missing > 0:
        raise DownloadIncomplete(
            f"download: {missing} of {len(parts)} shards could not be written to {out_dir} "
            "(the downloader's error is in the log above: disk full, bucket write error, ...); "
            "nothing was recorded for their rows"  # the run stops: RunStopped says how to resume
        )


# What img2dataset's download prints in this process about its own plan, with no option to
# stop it: a banner per input file, every shard (curate's progress shows the download).
# Every other line it prints (a write retried, an error) still shows.
BANNER = ("Starting the downloading of this file", "Sharding file number ", "File sharded in ",
          "Downloading starting now, check your bandwidth speed")
BANNER_MODULES = ("img2dataset.main", "img2dataset.reader")


def print_unless_banner(*args, **kwargs) -> None:
    """``print``, except for img2dataset's BANNER lines."""
    if args and isinstance(args[0], str) and args[0].startswith(BANNER):
        return
    builtins.print(*args, **kwargs)


@contextlib.contextmanager
def _without_banner():
    """img2dataset's modules print through ``print_unless_banner`` while the block runs: a
    module-level ``print`` shadows the builtin in those modules only (sys.stdout is left
    alone: in a terminal rich's live display proxies it)."""
    import img2dataset  # noqa: F401

    modules = [sys.modules[name] for name in BANNER_MODULES if name in sys.modules]
    for module in modules:
        module.print = print_unless_banner
    try:
        yield
    finally:
        for module in modules:
            vars(module).pop("print", None)


@contextlib.contextmanager
def _interrupts_seen(seen: threading.Event):
    """Sets ``seen`` when img2dataset's SIGINT handler runs. img2dataset's ``download``
    installs a handler that cleans up (its _tmp folder, its logger process) and then calls
    ``sys.exit(0)``: a Ctrl-C would end the run as a success or as Ray's SystemExit(1). The
    handler it installs is wrapped here (its module's ``signal`` seen through a shim, the
    only hook it offers) so that its cleanup still runs and the run knows it was interrupted."""
    import img2dataset  # noqa: F401
    # the module, not the function img2dataset/__init__ re-exports under the same name
    img2dataset_main = sys.modules["img2dataset.main"]

    class _Signals:
        def __getattr__(self, name):
            return getattr(signal, name)

        @staticmethod
        def signal(signum, handler):
            if signum != signal.SIGINT or not callable(handler):
                return signal.signal(signum, handler)

            def noted(number, frame):
                seen.set()
                handler(number, frame)

            return signal.signal(signum, noted)

    img2dataset_main.signal = _Signals()
    try:
        yield seen
    finally:
        img2dataset_main.signal = signal


def _download(download, list_dir: str, out_dir: str, cfg: DownloadConfig, carried: list[str]) -> None:
    download(
        url_list=list_dir,
        input_format="parquet",
        url_col="url",
        caption_col="caption",
        save_additional_columns=list(carried),
        output_folder=out_dir,
        output_format="parquet",
        image_size=cfg.image_size,
        resize_mode=cfg.resize_mode,
        resize_only_if_bigger=cfg.resize_only_if_bigger,
        encode_format=cfg.encode_format,
        encode_quality=cfg.encode_quality,
        timeout=cfg.timeout,
        retries=cfg.retries,
        processes_count=cfg.processes,
        thread_count=cfg.threads,
        number_sample_per_shard=cfg.shard_size,
        user_agent_token=cfg.user_agent_token,
        disallowed_header_directives=list(cfg.disallowed_header_directives),
        distributor="ray",
        incremental_mode="incremental",
        extract_exif=False,
        compute_hash="sha256",
        enable_wandb=False,
        max_image_area=cfg.max_image_pixels,  # after decode; safe_fetch checks the header before
    )


def committed_shards(out_dir: str) -> list[str]:
    """Downloaded shard Parquet files whose stats marker exists (finished shards only)."""
    stats = {uri[: -len("_stats.json")] for uri in storage.list_files(out_dir, "_stats.json")}
    return [uri for uri in storage.list_files(out_dir, ".parquet") if uri[: -len(".parquet")] in stats]
