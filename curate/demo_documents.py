"""``curate demo --interleaved``: a documents run, offline, scored against the truth.

Generates interleaved web pages (curate.synth.documents) whose images sit at random
positions, serves them from a local HTTP server, runs ``curate run`` with
``input.kind: documents`` and the shipped tiny CLIP, and measures how many images were
placed right before the sentence that truly describes them: with MMC4's assignment
placement, and with the input's own positions (the same run decided again, no model).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pyarrow as pa
import yaml
from rich.console import Console
from rich.table import Table

from curate.demo import serve_and_run
from curate.core import storage
from curate.core.config import apply_overrides, validate
from curate.core.rundir import RunDir
from curate.flow.plan import make_plan
from curate.pipeline.manifest import preview
from curate.synth.documents import make_documents


def documents_demo_config(input_path: Path, run_dir: Path, overrides: list[str]):
    data = yaml.safe_load(resources.files("curate.assets").joinpath("demo-documents.yaml").read_text())
    data["input"]["path"] = str(input_path)
    data["output"]["path"] = str(run_dir)
    return validate(apply_overrides(data, overrides))


def evaluate_documents(manifest: pa.Table, images: pa.Table, truth: pa.Table) -> dict:
    """Score a documents run's manifests against the corpus truth."""
    kind = {(t["input_row"], t["image_index"]): t for t in truth.to_pylist()}
    rows = [(im, kind[(im["input_row"], im["image_index"])]) for im in images.to_pylist()]
    fetched = [(im, t) for im, t in rows if im["status"] != "download_failed"]
    described = [(im, t) for im, t in fetched if t["true_text"] is not None]
    placed = [(im, t) for im, t in described if im["status"] == "kept"]
    distractors = [im for im, t in fetched if t["kind"] == "distractor"]
    reused = [im for im, t in fetched if t["kind"] == "reused"]
    statuses = manifest.column("status").to_pylist()
    return {
        "documents": manifest.num_rows,
        "documents_kept": statuses.count("kept"),
        "described_images": len(described),
        "described_images_kept": len(placed),
        "placed_at_true_sentence": sum(im["slot"] == t["true_text"] for im, t in placed),
        "placement_accuracy": round(sum(im["slot"] == t["true_text"] for im, t in placed) / max(len(placed), 1), 4),
        "distractor_images": len(distractors),
        "distractors_dropped": sum(im["status"] != "kept" for im in distractors),
        # Each reused image copies one earlier image: dedupe should mark one of each pair.
        "reused_images": len(reused),
        "images_marked_duplicate": sum(im["status"] == "duplicate" for im, _ in fetched),
        # ... and none of two different renders (the tiny CLIP can't always tell them apart)
        "different_images_marked_duplicate": sum(_copies_nothing(im, t, kind) for im, t in fetched),
    }


def _copies_nothing(image: dict, truth: dict, kind: dict) -> bool:
    """A duplicate where neither it nor its survivor is a reused copy: a false duplicate."""
    if image["status"] != "duplicate":
        return False
    _, row, index = image["reason"].split(":", 1)[1].split("-")
    return truth["kind"] != "reused" and kind[(int(row), int(index))]["kind"] != "reused"


def compare_placements(cfg, run: RunDir, truth: pa.Table) -> dict[str, dict]:
    """The same scored run placed both ways, from stored similarities."""
    results = {}
    for placement in ("assignment", "original"):
        variant = validate(apply_overrides(cfg.model_dump(mode="json"), [f"interleaved.placement={placement}"]))
        tables = preview(make_plan(variant), run)
        results[placement] = evaluate_documents(tables["manifest"], tables["manifest_images"], truth)
    return results


def print_documents_evaluation(result: dict, placements: dict[str, dict], console: Console) -> None:
    table = Table(title="documents run vs. ground truth")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(key.replace("_", " "), f"{value:.1%}" if isinstance(value, float) else str(value))
    console.print(table)
    table = Table(title="placement: images right before the sentence that describes them (same run)")
    for column in ("interleaved.placement", "described images kept", "at their sentence", "accuracy"):
        table.add_column(column, justify="left" if column == "interleaved.placement" else "right")
    for name, r in placements.items():
        table.add_row(name, str(r["described_images_kept"]), str(r["placed_at_true_sentence"]),
                      f"{r['placement_accuracy']:.1%}")
    console.print(table)


def run_documents_demo(out: Path, n: int, seed: int, overrides: list[str], console: Console) -> dict:
    console.print(f"generating {n} interleaved web documents (seed {seed})")
    corpus = make_documents(n, seed)
    cfg, result = serve_and_run(out, corpus, "documents.parquet",
                                lambda path, run_dir: documents_demo_config(path, run_dir, overrides), console)
    run_dir = Path(result.run.root)
    manifest = storage.read_parquet(storage.list_files(result.run.manifest, ".parquet"))
    images = storage.read_parquet(storage.list_files(result.run.manifest_images, ".parquet"))
    evaluation = evaluate_documents(manifest, images, corpus.truth)
    evaluation["placements"] = compare_placements(cfg, result.run, corpus.truth)
    (run_dir / "demo_evaluation.json").write_text(json.dumps(evaluation, indent=2))
    print_documents_evaluation({k: v for k, v in evaluation.items() if k != "placements"},
                               evaluation["placements"], console)
    console.print(f"run directory: {run_dir}  (try: curate query {run_dir} "
                  "\"SELECT status, split_part(reason, ':', 1) AS why, count(*) FROM manifest_images GROUP BY ALL\")")
    return evaluation
