"""The pairs report shows what a sample trains with (issue #21, part 5): a kept card carries
its training caption's scores, CapFilt-rescued images are their own series in the score
histograms, training-caption lengths are plotted beside the alt-text's, the navigation bar
fits on one line at 1,400 px and no reason string is cut."""

from __future__ import annotations

import pytest

from curate.core.views import open_views
from curate.report import html, samples, stats
from e2e import read_manifest
from browser import page_check, run_chromium
from test_report import page_of


def _chosen(m: dict) -> dict:
    return next(c for c in m["captions"] if c["kept"] and c["text"] == m["caption_chosen"]
                and c["source"] == m["caption_source"])


def test_kept_cards_show_the_training_captions_scores(finished_run):  # noqa: F811
    manifest = {m["sample_id"]: m for m in read_manifest(str(finished_run)).to_pylist()}
    con = open_views(str(finished_run))
    try:
        rows = samples.kept_sample(con, 500)
    finally:
        con.close()
    rescued = [r for r in rows if r["caption_source"] == "synthetic"]
    assert rescued, "the demo corpus has junk alt-text that CapFilt replaces"
    for row in rows:
        m = manifest[row["sample_id"]]
        assert row["clip_score"] == pytest.approx(_chosen(m)["clip_score"])
        assert row["itm_prob"] == pytest.approx(_chosen(m)["itm_prob"])
    # For a rescued sample that differs from the alt-text's score, which the manifest column holds.
    assert any(r["clip_score"] != pytest.approx(manifest[r["sample_id"]]["clip_score"]) for r in rescued)
    # The card the report draws for it: the training caption, its scores, marked as CapFilt's.
    row = next(r for r in rescued if abs(r["clip_score"] - manifest[r["sample_id"]]["clip_score"]) > 0.001)
    card = html.card(row, None, ["clip_score", "itm_prob"])
    assert html.esc(row["caption_chosen"]) in card and "CapFilt caption" in card
    assert f"clip score <b>{_chosen(manifest[row['sample_id']])['clip_score']:.3f}</b>" in card
    assert f"<b>{manifest[row['sample_id']]['clip_score']:.3f}</b>" not in card


def test_rescued_images_are_their_own_histogram_series(finished_run):  # noqa: F811
    manifest = read_manifest(str(finished_run)).to_pylist()
    con = open_views(str(finished_run))
    try:
        values = stats.values_by_status(con, '"clip_score"', rescued_apart=True)
        training = stats.training_caption_words(con)
    finally:
        con.close()
    kept = [m for m in manifest if m["status"] == "kept"]
    rescued = [m for m in kept if m["caption_source"] == "synthetic"]
    assert len(values[stats.RESCUED]) == len(rescued) and len(values["kept"]) == len(kept) - len(rescued)
    assert sorted(values[stats.RESCUED]) == pytest.approx(sorted(m["clip_score"] for m in rescued))
    assert sorted(training[stats.RESCUED]) == sorted(len(m["caption_chosen"].split()) for m in rescued)
    page = page_of(finished_run)
    assert page.count(f"{stats.RESCUED} ({len(rescued)})") >= 2  # the clip_score and itm_prob legends
    assert 'id="training-caption-words' in page or "words in the training caption" in page
    assert "training_caption_words" in page  # its quantiles


def test_nav_fits_and_reasons_are_whole_at_1400px(chromium, finished_run, tmp_path):  # noqa: F811
    out = run_chromium(chromium, tmp_path, finished_run / "report" / "index.html", "--dump-dom", "--window-size=1400,1000")
    check = page_check(out.stdout)
    assert check["ready"] == "yes"
    assert check["nav-fits"] == "yes" and check["nav-rows"] == "1"
    assert int(check["reasons"]) > 0 and check["reasons-cut"] == "0"
