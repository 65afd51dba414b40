"""``curate demo``: the whole pipeline, offline, on a noisy corpus whose truth is known.

It generates the synthetic web corpus (curate.synth.corpus), serves it from a local HTTP
server it starts and stops itself, runs ``curate run`` with the shipped tiny models, and
scores the result against the ground truth: what fraction of samples has a correct
caption before and after curation, and the precision and recall of "kept" for true pairs.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from rich.console import Console
from rich.table import Table

from curate.core import storage
from curate.core.config import ConfigError, apply_overrides, validate
from curate.core.rundir import RunDir
from curate.flow.plan import make_plan
from curate.pipeline.decide import preview
from curate.pipeline.runner import run_pipeline
from curate.synth import domain
from curate.synth.corpus import make_corpus
from curate.synth.http_server import CorpusServer
from curate.core.terminal import print_full


def demo_config(corpus_dir: Path, run_dir: Path, overrides: list[str]):
    data = yaml.safe_load(resources.files("curate.assets").joinpath("demo.yaml").read_text())
    data["input"]["path"] = str(corpus_dir / "input.parquet")
    data["output"]["path"] = str(run_dir)
    return validate(apply_overrides(data, overrides))


def _correct(row: dict, caption: str | None) -> bool:
    if not caption or row["shape"] is None:
        return False
    scene = domain.Scene(row["shape"], row["colour"], row["background"], row["size"])
    return domain.caption_is_correct(caption, scene)


def evaluate(manifest: pa.Table, truth: pa.Table) -> dict:
    """Score a manifest against the corpus truth (joined on input_row)."""
    by_row = {t["input_row"]: t for t in truth.to_pylist()}
    rows = [(m, by_row[m["input_row"]]) for m in manifest.to_pylist()]
    usable = [(m, t) for m, t in rows if t["image_ok"]]
    # Precision and recall count image groups (an original and its planted copies): keeping
    # any one member with a correct caption is a hit, keeping two members is one redundant.
    group = lambda t: t["dup_of_row"] if t["dup_of_row"] is not None else t["input_row"]
    kept = [(m, t) for m, t in rows if m["status"] == "kept"]
    hit_groups = {group(t) for m, t in kept if _correct(t, m["caption_chosen"])}
    true_groups = {group(t) for _, t in usable if t["caption_correct"]}
    status_of_row = {m["input_row"]: m["status"] for m, _ in rows}
    planted = [(m, t) for m, t in rows if t["kind"] in ("exact_dup", "near_dup") and m["status"] != "download_failed"]
    # A planted pair is found when the copy and its original are not both kept (either may survive).
    found = sum(1 for m, t in planted if not (m["status"] == "kept" and status_of_row[t["dup_of_row"]] == "kept"))
    originals = {t["dup_of_row"] for _, t in planted}
    unique = [(m, t) for m, t in rows if t["image_ok"] and t["kind"] not in ("exact_dup", "near_dup") and t["input_row"] not in originals]
    return {
        "rows": len(rows),
        "kept": len(kept),
        "correct_caption_fraction_before": round(sum(t["caption_correct"] for _, t in usable) / max(len(usable), 1), 4),
        "correct_caption_fraction_after": round(sum(_correct(t, m["caption_chosen"]) for m, t in kept) / max(len(kept), 1), 4),
        "kept_correct": sum(_correct(t, m["caption_chosen"]) for m, t in kept),
        "precision_true_pairs": round(len(hit_groups) / max(len(kept), 1), 4),
        "recall_true_pairs": round(len(hit_groups & true_groups) / max(len(true_groups), 1), 4),
        "planted_duplicates": len(planted),
        "planted_duplicates_found": found,
        "unique_images_marked_duplicate": sum(1 for m, _ in unique if m["status"] == "duplicate"),
        "unique_images": len(unique),
        # CapFilt's rescues: kept with a synthetic caption in place of an alt-text that was wrong or junk
        "rescued": sum(1 for m, t in kept if m.get("caption_source") == "synthetic" and not t["caption_correct"]),
        "rescued_correct": sum(1 for m, t in kept if m.get("caption_source") == "synthetic" and not t["caption_correct"]
                               and _correct(t, m["caption_chosen"])),
    }


def print_evaluation(result: dict, console: Console) -> None:
    table = Table(title="curation vs. ground truth")
    table.add_column("measure")
    table.add_column("value", justify="right")
    labels = {
        "rows": "input rows",
        "kept": "kept",
        "correct_caption_fraction_before": "correct captions, before (downloaded images)",
        "correct_caption_fraction_after": "correct captions, after (kept samples)",
        "precision_true_pairs": "precision of kept (true, unique pairs)",
        "recall_true_pairs": "recall of kept (true, unique pairs)",
        "planted_duplicates": "planted duplicates (downloaded)",
        "planted_duplicates_found": "planted duplicate pairs found",
        "unique_images_marked_duplicate": "unique images wrongly marked duplicate",
    }
    for key, label in labels.items():
        value = result[key]
        table.add_row(label, f"{value:.1%}" if isinstance(value, float) else str(value))
    print_full(console, table)


# The comparison the demo prints: the same scored run, decided four ways from its stored
# scores (no model runs again). Every variant keeps the cheap rules and dedupe.
VARIANTS = {
    "no model filter": ["capfilt.mode=filter_only", "clip.min_score=null", "itm.min_prob=null"],
    "CLIP only": ["capfilt.mode=filter_only", "itm.min_prob=null"],
    "ITM only": ["capfilt.mode=filter_only", "clip.min_score=null"],
    "CLIP + ITM": ["capfilt.mode=filter_only"],  # CapFilt's own filter without the captioner
    "CapFilt": [],
}


# The blind-judge worlds (``curate demo --judges``): a captioner and one judge "trained
# elsewhere", each judge blind to one attribute (scripts/train_tiny_models.py, docs/capfilt.md),
# decided with curate's default judging (every judge, thresholds calibrated on the run), not
# the demo's hand-set thresholds.
DEFAULT_JUDGING = ["clip.min_score=auto", "itm.min_prob=0.5", "capfilt.synthetic_min_prob=null"]
JUDGE_WORLDS = {
    "shipped": [],
    "blind-itm": ["itm.model=curate:tiny-blip-itm-blind-shape", "caption.model=curate:tiny-blip-captioner-weak",
                  *DEFAULT_JUDGING],
    "blind-clip": ["clip.model=curate:tiny-clip-blind-colour", "caption.model=curate:tiny-blip-captioner-weak",
                   *DEFAULT_JUDGING],
}
# In a blind-judge world: the rule before calibrated judges against today's default.
JUDGING_RULES = {
    "one judge decides (CLIP score only, ITM 0.5)": ["clip.min_score=null", "itm.min_prob=0.5"],
    "every judge, calibrated (default)": [],
}


def compare_variants(cfg, run: RunDir, truth: pa.Table, variants: dict[str, list[str]] | None = None) -> dict[str, dict]:
    """Kept samples and caption correctness of each of ``variants`` (default VARIANTS)
    against ground truth, decided from the run's stored scores."""
    results = {}
    for name, overrides in (variants or VARIANTS).items():
        variant = validate(apply_overrides(cfg.model_dump(mode="json"), overrides))
        result = evaluate(preview(make_plan(variant), run)["manifest"], truth)
        results[name] = {k: result[k] for k in ("kept", "kept_correct", "correct_caption_fraction_after",
                                                "recall_true_pairs", "rescued", "rescued_correct")}
    return results


def print_variants(results: dict[str, dict], console: Console,
                   title: str = "filtering alone vs. CapFilt (same run, decided from stored scores)") -> None:
    table = Table(title=title)
    for column in ("decision", "kept", "kept with a correct caption", "correct captions among kept",
                   "recall of true pairs", "rescued (synthetic caption, correct)"):
        table.add_column(column, justify="left" if column == "decision" else "right")
    for name, r in results.items():
        table.add_row(name, str(r["kept"]), str(r["kept_correct"]), f"{r['correct_caption_fraction_after']:.1%}",
                      f"{r['recall_true_pairs']:.1%}", f"{r['rescued']} ({r['rescued_correct']})")
    print_full(console, table)


def serve_and_run(out: Path, corpus, input_name: str, make_config, console: Console):
    """Write the corpus truth, serve the corpus on 127.0.0.1, write its input table (which
    needs the server's URL) and run the pipeline on it; returns (config, RunResult)."""
    out = out.resolve()
    corpus_dir, run_dir = out / "corpus", out / "run"
    if run_dir.exists():
        storage.remove_tree(str(run_dir))  # a demo always starts fresh
    corpus_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(corpus.truth, corpus_dir / "truth.parquet")
    with CorpusServer(corpus.routes, latency=0.01) as server:
        pq.write_table(corpus.input_table(server.base_url), corpus_dir / input_name)
        console.print(f"serving it at {server.base_url}")
        cfg = make_config(corpus_dir / input_name, run_dir)
        return cfg, run_pipeline(cfg, console)


def run_demo(out: Path, n: int, seed: int, overrides: list[str], console: Console, judges: str = "shipped") -> dict:
    """The demo (module docstring); ``judges``: a JUDGE_WORLDS name, the models and judging
    to run with (``shipped``: the demo's own models and thresholds)."""
    if judges not in JUDGE_WORLDS:
        raise ConfigError(f"--judges {judges!r}: one of {', '.join(JUDGE_WORLDS)}")
    console.print(f"generating a noisy web corpus of {n} image-text pairs (seed {seed})")
    corpus = make_corpus(n, seed)
    overrides = JUDGE_WORLDS[judges] + overrides
    cfg, result = serve_and_run(out, corpus, "input.parquet",
                                lambda path, run_dir: demo_config(path.parent, run_dir, overrides), console)
    run_dir = Path(result.run.root)
    manifest = storage.read_parquet(storage.list_files(result.run.manifest, ".parquet"))
    evaluation = evaluate(manifest, corpus.truth)
    evaluation["variants"] = compare_variants(cfg, result.run, corpus.truth)
    if judges != "shipped":
        evaluation["judging"] = compare_variants(cfg, result.run, corpus.truth, JUDGING_RULES)
    (run_dir / "demo_evaluation.json").write_text(json.dumps(evaluation, indent=2))
    print_evaluation(evaluation, console)
    print_variants(evaluation["variants"], console)
    if judges != "shipped":
        print_variants(evaluation["judging"], console, f"{judges}: one judge vs. every judge, calibrated")
    console.print(f"run directory: {run_dir}  (try: curate query {run_dir} \"SELECT status, count(*) FROM manifest GROUP BY 1\")")
    return evaluation
