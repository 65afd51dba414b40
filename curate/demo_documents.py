"""``curate demo --interleaved``: a documents run, offline, scored against the truth.

Generates interleaved web pages (curate.synth.documents) whose images sit at random
positions, serves them from a local HTTP server, runs ``curate run`` with
``input.kind: documents`` and the shipped tiny CLIP, BLIP ITM and BLIP captioner, and
measures against the truth what each part does:

- placement: how many described images end right before the sentence that truly
  describes them, placed by CLIP (MMC4), CLIP with an ITM tie-break, ITM re-ranking, with
  ``interleaved.min_itm``, and where the input had them;
- images no sentence describes (distractors, gallery images): how many end next to a
  sentence anyway (wrong), and how many get a synthetic caption
  (``interleaved.caption_unmatched``) and whether it is correct
  (``domain.caption_is_correct``);
- the document rules (OBELICS-style) and the aspect-ratio rule: how many planted galleries
  and banners they drop, and how many other documents and images.

Every variant is the same scored run decided again from its stored scores (no model runs).
"""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources
from pathlib import Path

import pyarrow as pa
import yaml
from rich.console import Console
from rich.table import Table

from curate.core import storage
from curate.core.config import apply_overrides, validate
from curate.core.rundir import RunDir
from curate.demo import serve_and_run
from curate.flow.plan import make_plan
from curate.pipeline.decide import preview
from curate.synth import domain
from curate.synth.documents import make_documents
from curate.core.terminal import print_full

# Images no sentence of their document describes.
UNDESCRIBED = ("distractor", "gallery", "banner")
# The same scored run decided these ways (overrides of the demo config). Each names every key
# it depends on, so the demo config's own choice does not leak into the others.
_NO_ITM = ["interleaved.placement_by=clip", "interleaved.min_itm=null", "interleaved.caption_unmatched=false"]
VARIANTS = {
    "CLIP (MMC4)": _NO_ITM,
    "ITM tie-break": ["interleaved.placement_by=tiebreak", "interleaved.min_itm=null",
                      "interleaved.caption_unmatched=false"],
    "ITM re-rank": ["interleaved.placement_by=itm", "interleaved.min_itm=null", "interleaved.caption_unmatched=false"],
    "tie-break, min_itm": ["interleaved.placement_by=tiebreak", "interleaved.caption_unmatched=false"],
    "+ captions (config)": ["interleaved.placement_by=tiebreak"],
    "input positions": ["interleaved.placement=original", *_NO_ITM[1:]],
}
# Reason codes of the rules the demo plants cases for: (code, the planted kind it should catch).
RULES = {
    "aspect_ratio_above": "banner",
    "too_many_images": "gallery",
    "image_text_ratio_above": "gallery",
}
PLURAL = {"banner": "banners", "gallery": "galleries"}


def documents_demo_config(input_path: Path, run_dir: Path, overrides: list[str]):
    data = yaml.safe_load(resources.files("curate.assets").joinpath("demo-documents.yaml").read_text())
    data["input"]["path"] = str(input_path)
    data["output"]["path"] = str(run_dir)
    return validate(apply_overrides(data, overrides))


def _scene(truth: dict) -> domain.Scene | None:
    if truth["shape"] is None:
        return None
    return domain.Scene(truth["shape"], truth["colour"], truth["background"], truth["size"])


def _code(reason: str | None) -> str | None:
    return reason.split(":", 1)[0] if reason else None


def evaluate_documents(manifest: pa.Table, images: pa.Table, truth: pa.Table, doc_truth: pa.Table) -> dict:
    """Score a documents run's manifests against the corpus truth."""
    kind = {(t["input_row"], t["image_index"]): t for t in truth.to_pylist()}
    rows = [(im, kind[(im["input_row"], im["image_index"])]) for im in images.to_pylist()]
    fetched = [(im, t) for im, t in rows if im["status"] != "download_failed"]
    described = [(im, t) for im, t in fetched if t["true_text"] is not None]
    placed = [(im, t) for im, t in described if im["status"] == "kept" and im["text_source"] == "original"]
    at_true = sum(im["slot"] == t["true_text"] for im, t in placed)
    undescribed = [(im, t) for im, t in fetched if t["kind"] in UNDESCRIBED]
    synthetic = [(im, t) for im, t in fetched if im["status"] == "kept" and im["text_source"] == "synthetic"]
    correct = sum(domain.caption_is_correct(im["synthetic_caption"], _scene(t)) for im, t in synthetic)
    distractors = [im for im, t in fetched if t["kind"] == "distractor"]
    reused = [im for im, t in fetched if t["kind"] == "reused"]
    doc_kind = {t["input_row"]: t["kind"] for t in doc_truth.to_pylist()}
    statuses = manifest.column("status").to_pylist()
    return {
        "documents": manifest.num_rows,
        "documents_kept": statuses.count("kept"),
        "described_images": len(described),
        "described_images_kept": len(placed),
        "placed_at_true_sentence": at_true,
        "placement_accuracy": round(at_true / max(len(placed), 1), 4),
        "undescribed_images": len(undescribed),
        "undescribed_beside_a_sentence": sum(im["status"] == "kept" and im["text_source"] == "original"
                                             for im, _ in undescribed),
        "synthetic_captions": len(synthetic),
        "synthetic_captions_correct": correct,
        "synthetic_caption_accuracy": round(correct / max(len(synthetic), 1), 4),
        "distractor_images": len(distractors),
        "distractors_dropped": sum(im["status"] != "kept" for im in distractors),
        # Each reused image copies one earlier image: dedupe should mark one of each pair.
        "reused_images": len(reused),
        "images_marked_duplicate": sum(im["status"] == "duplicate" for im, _ in fetched),
        # ... and none of two different renders (the tiny CLIP can't always tell them apart)
        "different_images_marked_duplicate": sum(_copies_nothing(im, t, kind) for im, t in fetched),
        "galleries": sum(k == "gallery" for k in doc_kind.values()),
        "rules": _rule_counts(manifest, rows, doc_kind),
    }


def _rule_counts(manifest: pa.Table, rows: list[tuple[dict, dict]], doc_kind: dict[int, str]) -> dict[str, dict]:
    """Per planted rule: how many of the kind it should catch it dropped, and how many others."""
    out = {}
    docs = Counter((_code(m["reason"]), doc_kind[m["input_row"]] == "gallery") for m in manifest.to_pylist())
    image_codes = Counter((_code(im["reason"]), t["kind"] == "banner") for im, t in rows)
    for code, planted in RULES.items():
        counts = image_codes if planted == "banner" else docs
        total = sum(t["kind"] == "banner" for _, t in rows) if planted == "banner" else \
            sum(k == "gallery" for k in doc_kind.values())
        out[code] = {"planted": planted, "planted_total": total, "planted_dropped": counts[(code, True)],
                     "others_dropped": counts[(code, False)]}
    return out


def _copies_nothing(image: dict, truth: dict, kind: dict) -> bool:
    """A duplicate where neither it nor its survivor is a reused copy: a false duplicate."""
    if image["status"] != "duplicate":
        return False
    _, row, index = image["reason"].split(":", 1)[1].split("-")
    return truth["kind"] != "reused" and kind[(int(row), int(index))]["kind"] != "reused"


def compare_variants(cfg, run: RunDir, truth: pa.Table, doc_truth: pa.Table) -> dict[str, dict]:
    """The same scored run decided each VARIANTS way, from stored scores."""
    results = {}
    for name, overrides in VARIANTS.items():
        variant = validate(apply_overrides(cfg.model_dump(mode="json"), overrides))
        tables = preview(make_plan(variant), run)
        result = evaluate_documents(tables["manifest"], tables["manifest_images"], truth, doc_truth)
        results[name] = {k: v for k, v in result.items() if k != "rules"}
    return results


def print_documents_evaluation(result: dict, variants: dict[str, dict], console: Console) -> None:
    table = Table(title="documents run vs. ground truth")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in result.items():
        if key not in ("rules", "variants"):
            table.add_row(key.replace("_", " "), f"{value:.1%}" if isinstance(value, float) else str(value))
    print_full(console, table)
    table = Table(title="placement and synthetic captions (same run, decided from stored scores)")
    headers = ("decision", "described kept", "at their sentence", "undescribed beside a sentence",
               "synthetic captions (correct)")
    for column in headers:
        table.add_column(column, justify="left" if column == "decision" else "right")
    for name, r in variants.items():
        table.add_row(name, str(r["described_images_kept"]),
                      f"{r['placed_at_true_sentence']} ({r['placement_accuracy']:.1%})",
                      f"{r['undescribed_beside_a_sentence']} of {r['undescribed_images']}",
                      f"{r['synthetic_captions']} ({r['synthetic_captions_correct']})")
    print_full(console, table)
    table = Table(title="rules and the cases planted for them (this run)")
    for column in ("reason", "planted", "planted dropped", "others dropped"):
        table.add_column(column, justify="left" if column in ("reason", "planted") else "right")
    for code, r in result["rules"].items():
        table.add_row(code, PLURAL[r["planted"]], f"{r['planted_dropped']} of {r['planted_total']}", str(r["others_dropped"]))
    print_full(console, table)


def run_documents_demo(out: Path, n: int, seed: int, overrides: list[str], console: Console) -> dict:
    console.print(f"generating {n} interleaved web documents (seed {seed})")
    corpus = make_documents(n, seed)
    cfg, result = serve_and_run(out, corpus, "documents.parquet",
                                lambda path, run_dir: documents_demo_config(path, run_dir, overrides), console)
    run_dir = Path(result.run.root)
    manifest = storage.read_parquet(storage.list_files(result.run.manifest, ".parquet"))
    images = storage.read_parquet(storage.list_files(result.run.manifest_images, ".parquet"))
    evaluation = evaluate_documents(manifest, images, corpus.truth, corpus.doc_truth)
    evaluation["variants"] = compare_variants(cfg, result.run, corpus.truth, corpus.doc_truth)
    (run_dir / "demo_evaluation.json").write_text(json.dumps(evaluation, indent=2))
    print_documents_evaluation(evaluation, evaluation["variants"], console)
    console.print(f"run directory: {run_dir}  (try: curate query {run_dir} "
                  "\"SELECT status, split_part(reason, ':', 1) AS why, count(*) FROM manifest_images GROUP BY ALL\")")
    return evaluation
