"""Judges that check each other, in a world with a blind judge (docs/capfilt.md, Judges).

The demo's noisy corpus, run with the default judging (every judge, thresholds ``auto``)
and models the sound ones never met: a weaker captioner whose typical mistake is the shape
word, and one judge trained without negatives of one attribute (scripts/train_tiny_models.py,
BLIND_VARIANTS). Against ground truth:

- ITM blind to shapes (CLIP sound): the rule before calibration (CLIP score only, ITM 0.5,
  a synthetic caption must beat the original) keeps many wrong captions; the calibrated
  default keeps clearly more right ones, keeps >= 95% of the true pairs and still rescues
  junk-captioned images with correct synthetic captions;
- the reverse, CLIP blind to colour (ITM sound), improves too.

The issue's 95%-correct target is not reached in these worlds (docs/capfilt.md, Measured:
the tiny CLIP cannot see the weak captioner's shape mistakes either); these tests hold the
measured gains, so a change that loses them fails.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from rich.console import Console

from curate.core import storage
from curate.core.config import apply_overrides, validate
from curate.core.rundir import RunDir
from curate.core.views import open_views
from curate.demo import JUDGE_WORLDS, JUDGING_RULES, compare_variants, demo_config, evaluate
from curate.pipeline.runner import refilter, run_pipeline
from curate.report import judges
from curate.synth.corpus import make_corpus
from curate.synth.http_server import CorpusServer

ROWS, SEED = 300, 11


def _run(tmp_path_factory, world: str):
    out = tmp_path_factory.mktemp(world)
    corpus = make_corpus(ROWS, SEED)
    with CorpusServer(corpus.routes) as server:
        pq.write_table(corpus.input_table(server.base_url), out / "input.parquet")
        cfg = demo_config(out, out / "run", [*JUDGE_WORLDS[world], "download.timeout=2"])
        result = run_pipeline(cfg, Console(record=True, width=120))
    return cfg, result.run, corpus.truth


@pytest.fixture(scope="module")
def blind_itm(tmp_path_factory, ray_session):
    return _run(tmp_path_factory, "blind-itm")


@pytest.fixture(scope="module")
def blind_clip(tmp_path_factory, ray_session):
    return _run(tmp_path_factory, "blind-clip")


def _manifest(run: RunDir):
    return storage.read_parquet(storage.list_files(run.manifest, ".parquet"))


def _summary(run: RunDir) -> dict:
    return json.loads(storage.read_text(run.summary))


def test_with_an_itm_blind_to_shapes_the_calibrated_judges_keep_right_captions(blind_itm):
    cfg, run, truth = blind_itm
    rules = compare_variants(cfg, run, truth, JUDGING_RULES)
    before, now = rules.values()
    # one judge decides: the blind ITM passes the weak captioner's wrong shapes (measured 79.3%)
    assert before["correct_caption_fraction_after"] < 0.82
    # every judge, calibrated (measured 85.9%, recall 98.7%, 25 correct rescues)
    result = evaluate(_manifest(run), truth)
    assert (result["kept"], result["kept_correct"]) == (now["kept"], now["kept_correct"])  # the run is the default rule
    assert result["correct_caption_fraction_after"] >= before["correct_caption_fraction_after"] + 0.05
    assert result["recall_true_pairs"] >= 0.95
    assert result["rescued_correct"] >= 15
    thresholds = _summary(run)["thresholds"]
    assert thresholds["clip.min_score"]["calibrated"] is True
    assert thresholds["clip.min_score"]["against"] == ["itm_prob"]


def test_with_a_clip_blind_to_colour_the_calibrated_judges_keep_right_captions(blind_clip):
    cfg, run, truth = blind_clip
    before, _ = compare_variants(cfg, run, truth, JUDGING_RULES).values()
    result = evaluate(_manifest(run), truth)
    # measured: 89.0% -> 92.3% correct, recall 95.0% -> 94.3%, 28 correct rescues
    assert result["correct_caption_fraction_after"] >= before["correct_caption_fraction_after"] + 0.02
    assert result["recall_true_pairs"] >= 0.92
    assert result["rescued_correct"] >= 15
    assert _summary(run)["thresholds"]["clip.min_score"]["calibrated"] is True


def test_the_resolved_threshold_is_in_the_reasons_and_a_refilter_can_set_it(blind_itm, tmp_path):
    cfg, run, truth = blind_itm
    t = _summary(run)["thresholds"]["clip.min_score"]["resolved"]
    manifest = _manifest(run).to_pylist()
    reasons = {c["reason"] for m in manifest for c in (m["captions"] or []) if c["reason"]}
    assert f"clip_score_below:{t:g}" in reasons
    # a rescued sample's training-caption scores are the synthetic caption's, not the alt-text's
    rescued = [m for m in manifest if m["status"] == "kept" and m["caption_source"] == "synthetic"]
    assert rescued and all(m["caption_clip_score"] >= t for m in rescued)
    assert any(m["clip_score"] < t for m in rescued)  # the alt-text's own score stays in clip_score
    for m in rescued:
        chosen = next(c for c in m["captions"] if c["kept"] and c["text"] == m["caption_chosen"])
        assert (m["caption_clip_score"], m["caption_itm_prob"]) == (chosen["clip_score"], chosen["itm_prob"])


def test_the_report_and_stats_name_the_blind_judge_and_which_judge_said_no(blind_itm):
    _, run, _ = blind_itm
    con = open_views(run.root)
    try:
        warnings = judges.blind_warnings(con)
        table = judges.agreement(con).to_pylist()
        rejected = judges.rejected_by(con).to_pylist()
    finally:
        con.close()
    # the blind ITM accepts nearly every synthetic caption CLIP rejects (the wrong shapes)
    assert any(w.startswith("ITM probability accepts") and "synthetic captions CLIP score rejects" in w
               for w in warnings), warnings
    synthetic = next(r for r in table if r["captions"] == "synthetic captions")
    assert synthetic["a_only"] + synthetic["b_only"] > 0 and synthetic["candidates"] > 0
    assert sum(r["samples"] for r in rejected) == sum(1 for m in _manifest(run).to_pylist()
                                                       if (m["reason"] or "").startswith("no_caption_passed"))
    assert any(r["first_synthetic"].startswith("CLIP score<") for r in rejected), rejected
    page = storage.read_text(storage.join(run.report, "index.html"))
    assert 'id="judges"' in page and "Blind judge?" in page and "Which judge said no" in page


def test_an_explicit_threshold_is_kept_and_null_scores_only(blind_itm, tmp_path):
    cfg, run, truth = blind_itm
    for value, want in (("0.42", 0.42), ("null", None)):
        variant = validate(apply_overrides(cfg.model_dump(mode="json"), [f"clip.min_score={value}"]))
        from curate.flow.plan import make_plan
        from curate.pipeline.decide import preview

        manifest = preview(make_plan(variant), run)["manifest"].to_pylist()
        below = {c["reason"] for m in manifest for c in (m["captions"] or []) if (c["reason"] or "").startswith("clip")}
        assert below == ({"clip_score_below:0.42"} if want is not None else set())


def test_too_few_confident_rows_fall_back_and_say_so(tmp_path_factory, ray_session):
    out = tmp_path_factory.mktemp("few")
    corpus = make_corpus(40, 2)
    with CorpusServer(corpus.routes) as server:
        pq.write_table(corpus.input_table(server.base_url), out / "input.parquet")
        cfg = demo_config(out, out / "run", [*JUDGE_WORLDS["blind-itm"], "itm.min_prob=auto", "caption.model=null",
                                             "download.timeout=2"])
        console = Console(record=True, width=200)
        result = run_pipeline(cfg, console)
    thresholds = _summary(result.run)["thresholds"]
    assert thresholds["clip.min_score"]["calibrated"] is False and thresholds["clip.min_score"]["resolved"] is None
    assert thresholds["itm.min_prob"]["resolved"] == 0.5 and "fewer than" in thresholds["itm.min_prob"]["fallback"]
    assert "itm.min_prob: auto -> 0.5: not calibrated" in console.export_text()
    # a refilter sets a value, and `auto` calibrates (here: falls back) again
    refilter(str(result.run.root), ["clip.min_score=0.6"], Console(record=True))
    reasons = {c["reason"] for m in _manifest(result.run).to_pylist() for c in (m["captions"] or []) if c["reason"]}
    assert "clip_score_below:0.6" in reasons
    assert "clip.min_score" not in _summary(result.run).get("thresholds", {})
