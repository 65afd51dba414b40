"""Download-free runs: write img2dataset-format Parquet shards straight into RUN/downloaded/
and mark the download step done, so `curate run` starts at the process step.

What img2dataset's Parquet writer leaves per shard, and what curate reads back:
``NNNNN.parquet`` (columns: the save_additional_columns sample_id and caption_bad_encoding,
then caption, url, key, status, error_message, width, height, original_width,
original_height, exif, sha256, jpg) and ``NNNNN_stats.json``, the commit marker that
``curate.download.download.committed_shards`` looks for. ``RUN/_done/download`` is the
runner's done-marker for the step (curate.pipeline.runner._step), so the step is skipped;
prepare still runs and writes rows/ from the input file, whose sample_ids
(``00000-RRRRRRRRRR``) match the shards'.

Images: rendered by curate.synth.domain at ``size`` px with a true caption of the scene,
then per-row pixel noise and JPEG (so no two rows share bytes or pixels). A fraction
``dup_fraction`` of rows reuse an earlier row's render (near duplicates for the CLIP
dedupe, as in a real crawl); the rest are fresh renders. 5% of rows are download failures
(status failed_to_download, no image).

(A first version reused a pool of 200 renders for every row: at 100k rows that made ~200
near-duplicate groups of ~500 rows each, i.e. ~20M duplicate pairs, and the manifest step
took 4.6 GB and 91 s instead of streaming. Real crawls have large duplicate groups too
(placeholder images, logos): the dedupe cost grows with the square of a group's size.)
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def write_download_free_run(run_root: Path, n: int, shard_size: int = 10_000, size: int = 64,
                            dup_fraction: float = 0.1, seed: int = 0, fail_fraction: float = 0.05) -> Path:
    """Write RUN/downloaded/ shards for ``n`` rows, RUN/_done/download, and an input file
    ``run_root.parent / (run_root.name + '-input.parquet')``; returns the input file."""
    from curate.synth import domain

    rng = random.Random(seed)
    scenes: list = []
    images: list = []
    nprng = np.random.default_rng(seed)
    downloaded = run_root / "downloaded"
    downloaded.mkdir(parents=True, exist_ok=True)
    key_digits = len(str(shard_size))
    urls, captions = [], []
    for shard, start in enumerate(range(0, n, shard_size)):
        rows = range(start, min(n, start + shard_size))
        cols: dict[str, list] = {c: [] for c in (
            "sample_id", "caption_bad_encoding", "caption", "url", "key", "status", "error_message", "width",
            "height", "original_width", "original_height", "exif", "sha256", "jpg")}
        ok = 0
        for j, i in enumerate(rows):
            if scenes and rng.random() < dup_fraction:
                k = rng.randrange(len(scenes))
            else:
                scenes.append(domain.sample_scene(rng))
                images.append(np.asarray(domain.render(scenes[-1], size, rng).convert("RGB"), dtype=np.int16))
                if len(scenes) > 2000:  # duplicates copy one of the last 2,000 renders: bounded memory
                    del scenes[0], images[0]
                k = len(scenes) - 1
            caption = domain.true_caption(scenes[k], rng)
            url = f"http://127.0.0.1:9/img/{i:07d}.jpg"  # never fetched: the download step is marked done
            urls.append(url)
            captions.append(caption)
            failed = rng.random() < fail_fraction
            if failed:
                jpg, w, h = None, None, None
            else:
                noisy = np.clip(images[k] + nprng.integers(-6, 7, images[k].shape), 0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(noisy).save(buf, format="JPEG", quality=95)
                jpg, w, h = buf.getvalue(), size, size
                ok += 1
            cols["sample_id"].append(f"00000-{i:010d}")
            cols["caption_bad_encoding"].append(False)
            cols["caption"].append(caption)
            cols["url"].append(url)
            cols["key"].append(f"{shard:05d}{j:0{key_digits}d}")
            cols["status"].append("failed_to_download" if failed else "success")
            cols["error_message"].append("HTTP Error 404: Not Found" if failed else None)
            for c in ("width", "original_width"):
                cols[c].append(w)
            for c in ("height", "original_height"):
                cols[c].append(h)
            cols["exif"].append(None)
            cols["sha256"].append(hashlib.sha256(jpg).hexdigest() if jpg else None)
            cols["jpg"].append(jpg)
        table = pa.table({
            **{c: pa.array(v, pa.string()) for c, v in cols.items()
               if c not in ("caption_bad_encoding", "width", "height", "original_width", "original_height", "jpg")},
            "caption_bad_encoding": pa.array(cols["caption_bad_encoding"], pa.bool_()),
            **{c: pa.array(cols[c], pa.int32()) for c in ("width", "height", "original_width", "original_height")},
            "jpg": pa.array(cols["jpg"], pa.binary()),
        })
        order = ["sample_id", "caption_bad_encoding", "caption", "url", "key", "status", "error_message", "width",
                 "height", "original_width", "original_height", "exif", "sha256", "jpg"]
        pq.write_table(table.select(order), downloaded / f"{shard:05d}.parquet")
        stats = {"count": len(rows), "successes": ok, "failed_to_download": len(rows) - ok, "failed_to_resize": 0,
                 "duration": 0.0, "start_time": 0.0, "end_time": 0.0, "status_dict": {"success": ok}}
        (downloaded / f"{shard:05d}_stats.json").write_text(json.dumps(stats))
    (run_root / "_done").mkdir(parents=True, exist_ok=True)
    (run_root / "_done" / "download").write_text("{}")
    input_file = run_root.parent / f"{run_root.name}-input.parquet"
    pq.write_table(pa.table({"url": urls, "caption": captions}), input_file)
    return input_file


def config_on_copy(template: Path, run: Path, shard_size: int, **sections):
    """Copy the download-free run ``template/run`` to ``run`` (a fresh copy per measurement)
    and return a validated config for it: the settings every benchmark shares, plus
    ``sections`` (model stages, output layout)."""
    import shutil

    from curate.core.config import validate

    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(template / "run", run)
    return validate({
        "input": {"path": str(template / "run-input.parquet")},
        "download": {"image_size": 64, "shard_size": shard_size, "allow_private_hosts": True},
        "filters": {"min_side": 32},
        "report": {"enabled": False},
        "ray": {"num_cpus": 2},
        **sections,
    })
