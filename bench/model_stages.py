"""Benchmark of the model stages: images/s inside the pipeline (Ray Data, actor pool, the
real process step) vs a bare loop over the same model on already-decoded tensors.

    .venv/bin/python bench/model_stages.py             # tiny + real-size models (about 15 min on 2 busy cores)
    .venv/bin/python bench/model_stages.py --quick     # tiny models only, fewer rows (about 4 min)
    .venv/bin/python bench/model_stages.py --models tiny --stages clip --json out.json

Input: img2dataset-format shards written straight into RUN/downloaded/ (bench/_shards.py:
64 px JPEGs, 5% failed downloads; the download step is marked done), the demo's image size.

Pipeline (fresh subprocess per measurement): ``curate run`` with only the stage under test
on (caption: ``capfilt.mode=caption_only``), 1 actor, ``num_cpus=1``, ``threads=1``; the
figure is images scored / RUN/summary.json step_seconds["score"]. That step is the whole
Ray Data job: read shards, inspect (decode + pixel hash + cheap rules), the actor pool
(start-up and model load included), write RUN/scored/. A ``none`` run (no model stage)
measures that job's fixed cost alone.

Bare loop (fresh subprocess): the same model loaded by the same loader, torch threads = 1,
the same batch size, over the same images decoded and preprocessed *before* the clock
starts: CLIP encode_image + encode_text; ITM ``BlipForImageTextRetrieval(...,
use_itm_head=True)`` forward (the stage also computes the ITC cosine from a text-only pass);
caption ``generate()`` with the stage's generation arguments. The bare subprocess also times
decode + preprocess per image and the model load, which the pipeline pays and the bare loop
does not, to explain the gap.

Fixed costs (Ray Data start, actor start, model load: 10-25 s here) would dominate a
short run, so the pipeline runs at two sizes, and the figure compared is the *marginal*
rate, (images at large N - images at small N) / (process seconds at large N - at small N):
the steady-state throughput of the stage inside the pipeline. The raw rate at the large N
(fixed costs included) is printed beside it.

On this shared machine the load changes by 2-4x within minutes, so wall-clock rates from
runs a minute apart compare the neighbours as much as the code. The CPU-time figures are
the steadier ones: CPU seconds of the whole process tree (driver, Ray, workers, actors)
over the process step, marginal per image, vs the bare loop's CPU seconds per image;
CPU-time ratio = bare CPU per image / pipeline CPU per image (same target, >= 0.8).

Models: ``tiny`` = the shipped curate:tiny-clip / tiny-blip-itm / tiny-blip-captioner;
``real`` = random-weight open_clip ViT-B-32 (151M parameters, the real architecture) and a
BLIP of ViT-S/16-224 + 6-layer BERT width 384 (bench/_models.py; BLIP base is about 10x that
per image, too slow here). Ratio = pipeline images/s / bare images/s; target >= 0.8.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Session, markdown_table, run_sub, tree_cpu_seconds  # noqa: E402

CAPTION_ARGS = {"num_captions": 5, "mode": "nucleus", "top_p": 0.9, "max_new_tokens": 20}
# (small rows, large rows, batch size) per model size; rows include 5% failed downloads.
PLAN = {
    "tiny": {"none": (500, 3000, 64), "clip": (500, 3000, 64), "itm": (500, 3000, 64), "caption": (300, 1500, 64)},
    "real": {"clip": (64, 224, 32), "itm": (32, 112, 16), "caption": (16, 64, 16)},
}
QUICK = {
    "tiny": {"none": (300, 1500, 64), "clip": (300, 1500, 64), "itm": (300, 1500, 64), "caption": (200, 800, 64)},
    "real": {"clip": (32, 128, 32), "itm": (16, 64, 16), "caption": (16, 48, 16)},
}


def model_refs(models: str, work: Path) -> dict[str, str]:
    if models == "tiny":
        return {"clip": "curate:tiny-clip", "itm": "curate:tiny-blip-itm", "caption": "curate:tiny-blip-captioner"}
    from _models import make_blip_dir, make_vit_b_32_dir

    return {
        "clip": "local-dir:" + str(make_vit_b_32_dir(work / "vit-b-32")),
        "itm": str(make_blip_dir(work / "blip-small-itm", "itm")),
        "caption": str(make_blip_dir(work / "blip-small-caption", "caption")),
    }


def stage_config(stage: str, ref: str, batch: int) -> dict:
    compute = {"batch_size": batch, "actors": 1, "num_cpus": 1, "threads": 1}
    if stage == "clip":
        return {"clip": {"model": ref, **compute}}
    if stage == "itm":
        return {"itm": {"model": ref, **compute}}
    if stage == "caption":
        return {"caption": {"model": ref, **CAPTION_ARGS, **compute}, "capfilt": {"mode": "caption_only"}}
    return {}


# --- subprocess: the pipeline -----------------------------------------------------------------


def measure_pipeline(args) -> dict:
    from rich.console import Console

    from _shards import config_on_copy
    from curate.pipeline.runner import run_pipeline

    run = Path(args.work) / f"run-{args.stage}-{args.models}"
    cfg = config_on_copy(Path(args.template), run, args.shard_size, output={"path": str(run), "formats": ["parquet"]},
                         **stage_config(args.stage, args.ref, args.batch))
    # CPU seconds of the whole process tree (driver, Ray GCS/raylet, workers, actors) over
    # the process step: the work done, whatever the neighbours on the machine do.
    import curate.pipeline.runner as runner

    cpu, step = {}, runner.run_process

    def counted(*a, **kw):
        before = tree_cpu_seconds()
        try:
            return step(*a, **kw)
        finally:
            cpu["seconds"] = tree_cpu_seconds() - before

    runner.run_process = counted
    result = run_pipeline(cfg, Console(quiet=True))
    images = sum(json.loads(p.read_text())["successes"] for p in (run / "downloaded").glob("*_stats.json"))
    seconds = result.summary["step_seconds"]["process"]
    shutil.rmtree(run, ignore_errors=True)
    return {"seconds": seconds, "images": images, "images_per_s": images / seconds, "cpu_seconds": cpu["seconds"],
            "step_seconds": result.summary["step_seconds"]}


# --- subprocess: the bare loop ----------------------------------------------------------------


def _images(template: Path):
    import pyarrow.parquet as pq

    from curate.stages.model_support import decode_rgb

    jpgs, captions = [], []
    for shard in sorted((template / "run" / "downloaded").glob("[0-9]*[0-9].parquet")):  # not NNNNN_hosts.parquet
        t = pq.read_table(shard, columns=["jpg", "caption", "status"]).to_pylist()
        for row in t:
            if row["status"] == "success":
                jpgs.append(row["jpg"])
                captions.append(row["caption"])
    return jpgs, captions, decode_rgb


def measure_bare(args) -> dict:
    import torch

    torch.set_num_threads(1)
    jpgs, captions, decode_rgb = _images(Path(args.template))
    b = args.batch
    t = time.perf_counter()
    if args.stage == "clip":
        from curate.models import clip

        model, preprocess, tokenizer = clip.load(clip.resolve(args.ref, None))
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        pixels = torch.stack([preprocess(decode_rgb(j)) for j in jpgs])
        tokens = tokenizer(captions)
        prep_s = time.perf_counter() - t

        def step(s, e):
            model.encode_image(pixels[s:e])
            model.encode_text(tokens[s:e])
    else:
        from curate.models import blip

        task = "itm" if args.stage == "itm" else "caption"
        model, processor = blip.load(blip.resolve(args.ref, f"{task}.model"), task, f"{task}.model")
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        pixels = processor.image_processor(images=[decode_rgb(j) for j in jpgs], return_tensors="pt")["pixel_values"]
        prep_s = time.perf_counter() - t
        if args.stage == "itm":
            batches = [processor.tokenizer(captions[s:s + b], padding=True, truncation=True, return_tensors="pt")
                       for s in range(0, len(captions), b)]

            def step(s, e):
                tok = batches[s // b]
                model(input_ids=tok.input_ids, pixel_values=pixels[s:e], attention_mask=tok.attention_mask,
                      use_itm_head=True)
        else:
            from curate.core.config import CaptionConfig

            cfg = CaptionConfig(model=args.ref, **CAPTION_ARGS)
            # The bare loop samples as transformers does by itself (one global generator); the
            # pipeline draws per caption from its own seeded stream, and pays for it here.
            kwargs = {"max_new_tokens": cfg.max_new_tokens, "num_return_sequences": cfg.num_captions,
                      "do_sample": True, "top_p": cfg.top_p, "top_k": 0}

            def step(s, e):
                torch.manual_seed(s)
                model.generate(pixel_values=pixels[s:e], **kwargs)
    n = len(jpgs)
    with torch.inference_mode():
        step(0, min(b, n))  # warm-up batch, not timed (the pipeline's first batch pays this)
        t, c = time.perf_counter(), time.process_time()
        for s in range(0, n, b):
            step(s, min(n, s + b))
        seconds, cpu = time.perf_counter() - t, time.process_time() - c
    return {"seconds": seconds, "images": n, "images_per_s": n / seconds, "load_seconds": load_s,
            "cpu_seconds": cpu, "cpu_ms_per_image": 1000 * cpu / n,
            "decode_preprocess_seconds": prep_s, "decode_preprocess_ms_per_image": 1000 * prep_s / n}


# --- driver -----------------------------------------------------------------------------------


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cmd", nargs="?", default="bench")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default="tiny,real")
    parser.add_argument("--stages", default="none,clip,itm,caption")
    parser.add_argument("--json")
    parser.add_argument("--workdir")
    for a in ("--stage", "--ref", "--template", "--work", "--result"):
        parser.add_argument(a)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--shard-size", type=int)
    args = parser.parse_args(argv)
    if args.cmd in ("_pipeline", "_bare"):
        out = measure_pipeline(args) if args.cmd == "_pipeline" else measure_bare(args)
        Path(args.result).write_text(json.dumps(out))
        return
    if args.quick:
        args.models = "tiny"
    plan = QUICK if args.quick else PLAN
    session = Session()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="model-bench-"))
    from _shards import write_download_free_run

    rows = []
    try:
        for models in args.models.split(","):
            refs = model_refs(models, work)
            for stage in args.stages.split(","):
                if stage not in plan[models]:
                    continue
                small, n, batch = plan[models][stage]
                ref = refs.get(stage, "")
                runs = {}
                for size in (small, n):
                    template = work / f"shards-{size}"
                    shard_size = max(1, size // 4)
                    if not template.exists():
                        write_download_free_run(template / "run", size, shard_size=shard_size)
                    common = ["--stage", stage, "--template", str(template), "--work", str(work), "--batch", str(batch),
                              "--shard-size", str(shard_size), "--models", models]
                    runs[size] = run_sub(__file__, "_pipeline", *common, "--ref", ref)
                pipe = runs[n]
                pipe["small"] = runs[small]
                extra = pipe["images"] - runs[small]["images"]
                pipe["marginal_images_per_s"] = extra / max(1e-9, pipe["seconds"] - runs[small]["seconds"])
                pipe["marginal_cpu_ms_per_image"] = 1000 * (pipe["cpu_seconds"] - runs[small]["cpu_seconds"]) / extra
                bare = run_sub(__file__, "_bare", *common, "--ref", ref) if stage != "none" else None
                row = {"models": models, "stage": stage, "rows": n, "small_rows": small, "batch": batch, "pipeline": pipe,
                       "bare": bare, "ratio": pipe["marginal_images_per_s"] / bare["images_per_s"] if bare else None,
                       "raw_ratio": pipe["images_per_s"] / bare["images_per_s"] if bare else None,
                       "cpu_ratio": bare["cpu_ms_per_image"] / pipe["marginal_cpu_ms_per_image"] if bare else None}
                rows.append(row)
                msg = (f"  {models} {stage}: pipeline marginal {pipe['marginal_images_per_s']:.1f} images/s (process step "
                       f"{runs[small]['seconds']:.1f} s at {small} rows, {pipe['seconds']:.1f} s at {n}; raw "
                       f"{pipe['images_per_s']:.1f} images/s; marginal CPU {pipe['marginal_cpu_ms_per_image']:.2f} ms/image)")
                if bare:
                    msg += (f", bare {bare['images_per_s']:.1f} images/s ({bare['cpu_ms_per_image']:.2f} CPU ms/image), "
                            f"ratio {row['ratio']:.2f}, CPU-time ratio {row['cpu_ratio']:.2f}; decode+preprocess "
                            f"{bare['decode_preprocess_ms_per_image']:.2f} ms/image, model load {bare['load_seconds']:.1f} s")
                print(msg, flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    session.end()
    table = []
    for r in rows:
        b = r["bare"]
        p = r["pipeline"]
        table.append([
            r["models"], r["stage"], f"{r['small_rows']} / {r['rows']}", r["batch"],
            f"{p['small']['seconds']:.1f} / {p['seconds']:.1f}", f"{p['marginal_images_per_s']:.1f}",
            f"{b['images_per_s']:.1f}" if b else "-", f"{r['ratio']:.2f}" if b else "-",
            f"{p['marginal_cpu_ms_per_image']:.2f}", f"{b['cpu_ms_per_image']:.2f}" if b else "-",
            f"{r['cpu_ratio']:.2f}" if b else "-", f"{p['images_per_s']:.1f}", f"{r['raw_ratio']:.2f}" if b else "-",
            f"{b['decode_preprocess_ms_per_image']:.2f}" if b else "-", f"{b['load_seconds']:.1f}" if b else "-",
        ])
    print(markdown_table(["models", "stage", "rows (small / large)", "batch", "process step s (small / large)",
                          "pipeline marginal images/s", "bare images/s", "ratio (marginal / bare)",
                          "pipeline marginal CPU ms/image", "bare CPU ms/image", "CPU-time ratio (bare / pipeline)",
                          "pipeline raw images/s at large", "raw ratio", "decode+preprocess ms/image",
                          "model load s"], table))
    if args.json:
        Path(args.json).write_text(json.dumps({**session.meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
