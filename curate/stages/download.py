"""Step 2: download with img2dataset, as a library.

img2dataset does the fetching, retries, X-Robots-Tag opt-out handling, resizing and
re-encoding; this module only calls it and translates its per-row error messages into
reason codes. Its Parquet output keeps failed rows, and it writes a shard's
``*_stats.json`` only after the shard's Parquet is closed, so the stats file is the
shard's commit marker: ``incremental_mode="incremental"`` skips committed shards on resume.
"""

from __future__ import annotations

import re
import signal

from curate.pipeline import storage
from curate.pipeline.config import DownloadConfig
from curate.schemas.status import reason

_HTTP_ERROR = re.compile(r"HTTP Error (\d{3})")


def download_reason(status: str | None, error_message: str | None) -> str | None:
    """img2dataset (status, error_message) -> our reason code; None for a success."""
    if status == "success":
        return None
    message = error_message or ""
    lowered = message.lower()
    if "infinite loop" in lowered or ("redirect" in lowered and "error" in lowered):
        return reason("too_many_redirects")
    match = _HTTP_ERROR.search(message)
    if match:
        return reason(f"http_{match.group(1)}")
    if "timed out" in lowered or "timeout" in lowered:
        return reason("timeout")
    if "x-robots-tag" in lowered:
        return reason("opted_out")
    if "image_too_large" in lowered or "exceeds limit" in lowered or "decompression bomb" in lowered:
        return reason("image_too_large")
    if "decoding error" in lowered or "cannot identify image" in lowered:
        return reason("not_an_image")
    if "urlopen error" in lowered or "connection" in lowered or "remote end closed" in lowered:
        return reason("connection_error")
    return reason("download_error", message[:80] or status or "unknown")


def run_download(list_dir: str, out_dir: str, cfg: DownloadConfig) -> None:
    """Download every part of ``list_dir`` into ``out_dir`` (one img2dataset shard per part)."""
    from img2dataset import download  # heavy import (cv2, albumentations, wandb): only when used

    if not storage.list_files(list_dir, ".parquet"):
        return
    previous_sigint = signal.getsignal(signal.SIGINT)
    try:
        download(
            url_list=list_dir,
            input_format="parquet",
            url_col="url",
            caption_col="caption",
            save_additional_columns=["sample_id", "caption_bad_encoding"],
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
        )
    finally:
        # img2dataset installs a SIGINT handler that exits with status 0; put ours back.
        signal.signal(signal.SIGINT, previous_sigint)


def committed_shards(out_dir: str) -> list[str]:
    """Downloaded shard Parquet files whose stats marker exists (finished shards only)."""
    stats = {uri[: -len("_stats.json")] for uri in storage.list_files(out_dir, "_stats.json")}
    return [uri for uri in storage.list_files(out_dir, ".parquet") if uri[: -len(".parquet")] in stats]
