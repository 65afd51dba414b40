"""`curate demo` end to end (the README's main job), and its corpus generator."""

from __future__ import annotations

import json
import subprocess

from curate.synth.corpus import KIND_WEIGHTS, make_corpus


def test_corpus_is_deterministic_and_mixes_every_kind():
    a, b = make_corpus(300, seed=4), make_corpus(300, seed=4)
    assert a.rows == b.rows and a.truth.equals(b.truth)
    assert {r: v.body for r, v in a.routes.items()} == {r: v.body for r, v in b.routes.items()}
    kinds = set(a.truth.column("kind").to_pylist())
    assert kinds == set(KIND_WEIGHTS)
    truth = a.truth.to_pylist()
    assert all(t["caption_correct"] for t in truth if t["kind"] == "true")
    assert not any(t["caption_correct"] for t in truth if t["kind"] in ("wrong", "junk"))
    for t in truth:
        if t["kind"] == "exact_dup":
            assert a.routes[f"/img/{t['input_row']:06d}.jpg"].body == a.routes[f"/img/{t['dup_of_row']:06d}.jpg"].body


def test_demo_command_end_to_end(tmp_path, cli_env):
    out = subprocess.run(
        ["curate", "demo", "--out", str(tmp_path), "--n", "160", "--seed", "1"],
        capture_output=True, text=True, env=cli_env, timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "curation vs. ground truth" in out.stdout
    result = json.loads((tmp_path / "run" / "demo_evaluation.json").read_text())
    assert result["rows"] == 160 and 0 < result["kept"] < 160
    assert result["correct_caption_fraction_after"] > result["correct_caption_fraction_before"]
    assert result["planted_duplicates_found"] > 0
    variants = result["variants"]
    assert list(variants) == ["no model filter", "CLIP only", "ITM only", "CLIP + ITM", "CapFilt"]
    filtering = [variants[k] for k in ("CLIP only", "ITM only", "CLIP + ITM")]
    # CapFilt rescues junk-captioned images with synthetic captions: more correct samples kept
    assert variants["CapFilt"]["kept_correct"] > max(v["kept_correct"] for v in filtering)
    assert "filtering alone vs. CapFilt" in out.stdout
    # piped: tables in full, one line per step, none of Ray Data's 10-second blocks
    assert "correct captions among kept" in out.stdout and "…" not in out.stdout
    assert "Running Dataset" not in out.stdout + out.stderr

    # The same command with other batches and two captioner actors: the same decision for every
    # row (the captioner draws per caption from seeds of its sample_id, not per batch).
    again = subprocess.run(
        ["curate", "demo", "--out", str(tmp_path / "again"), "--n", "160", "--seed", "1",
         "--set", "caption.actors=2", "--set", "caption.batch_size=7", "--set", "clip.batch_size=5",
         "--set", "itm.batch_size=9"],
        capture_output=True, text=True, env=cli_env, timeout=900,
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    first, second = (_manifest(tmp_path / d / "run") for d in (".", "again"))
    assert [(r["status"], r["reason"], r["caption_chosen"]) for r in first] == \
        [(r["status"], r["reason"], r["caption_chosen"]) for r in second]
    texts = lambda run: [[(c["source"], c["text"]) for c in r["captions"] or []] for r in run]  # noqa: E731
    assert texts(first) == texts(second) and any(s == "synthetic" for caps in texts(first) for s, _ in caps)
    for score in ("clip_score", "itm_prob"):  # other batchings: the same scores but for float rounding
        pairs = [(a[score], b[score]) for a, b in zip(first, second) if a[score] is not None]
        assert pairs and max(abs(a - b) for a, b in pairs) < 1e-5


def _manifest(run) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.ParquetDataset(str(run / "manifest")).read().sort_by("sample_id").to_pylist()


def test_documents_corpus_is_deterministic_and_its_truth_points_at_describing_sentences():
    from curate.synth import domain
    from curate.synth.documents import make_documents

    a, b = make_documents(80, seed=2), make_documents(80, seed=2)
    assert a.documents == b.documents and a.truth.equals(b.truth) and a.doc_truth.equals(b.doc_truth)
    assert set(a.truth.column("kind").to_pylist()) == {"described", "reused", "distractor", "broken", "banner",
                                                       "gallery"}
    for t in a.truth.to_pylist():
        doc = a.documents[t["input_row"]]
        scene = None if t["shape"] is None else domain.Scene(t["shape"], t["colour"], t["background"], t["size"])
        assert (scene is None) == (t["kind"] == "broken")
        if t["true_text"] is not None:  # the sentence is a true caption of this image's own scene
            assert domain.caption_is_correct(doc["texts"][t["true_text"]], scene)
    slots = [d["input_slots"] for d in a.documents]
    assert all(s == sorted(s) for s in slots)  # image k never comes after image k+1 in the input
    galleries = {t["input_row"] for t in a.doc_truth.to_pylist() if t["kind"] == "gallery"}
    assert galleries and all(len(a.documents[d]["texts"]) == 1 and len(a.documents[d]["image_paths"]) >= 6
                             for d in galleries)


def test_planted_galleries_and_banners_leave_the_other_pages_unchanged(monkeypatch):
    """They come from a random stream of their own: the pages are those of a corpus without them."""
    import curate.synth.documents as synth

    planted = synth.make_documents(80, seed=2)
    monkeypatch.setattr(synth, "GALLERY_RATE", 0.0)
    monkeypatch.setattr(synth, "BANNER_RATE", 0.0)
    plain = synth.make_documents(80, seed=2)
    kinds: dict[int, list[str]] = {}
    for t in planted.truth.to_pylist():
        kinds.setdefault(t["input_row"], []).append(t["kind"])
    pages = [(d, doc) for d, doc in enumerate(planted.documents) if "gallery" not in kinds.get(d, [])]
    assert len(pages) < len(planted.documents) and any("banner" in k for k in kinds.values())
    for (d, doc), base in zip(pages, plain.documents):
        banners = kinds.get(d, []).count("banner")
        assert doc["texts"] == base["texts"] and len(doc["image_paths"]) - banners == len(base["image_paths"])
        assert doc["input_slots"][: len(base["input_slots"])] == base["input_slots"]


def test_interleaved_demo_reports_each_part_against_the_truth(tmp_path, cli_env):
    out = subprocess.run(
        ["curate", "demo", "--interleaved", "--out", str(tmp_path), "--n", "60", "--seed", "1"],
        capture_output=True, text=True, env=cli_env, timeout=1500,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "documents run vs. ground truth" in out.stdout and "rules and the cases planted for them" in out.stdout
    result = json.loads((tmp_path / "run" / "demo_evaluation.json").read_text())
    assert result["documents"] == 60 and 0 < result["documents_kept"] < 60
    v = result["variants"]
    assert list(v) == ["CLIP (MMC4)", "ITM tie-break", "ITM re-rank", "tie-break, min_itm", "+ captions (config)",
                       "input positions"]
    # the input's positions are random; matching on CLIP similarity finds the sentences
    assert v["CLIP (MMC4)"]["placement_accuracy"] > 2 * v["input positions"]["placement_accuracy"]
    # min_itm keeps images no sentence describes away from sentences; it never adds one
    assert v["tie-break, min_itm"]["undescribed_beside_a_sentence"] < v["CLIP (MMC4)"]["undescribed_beside_a_sentence"]
    # captions: only with caption_unmatched, and mostly right (the tiny captioner, filtered by ITM >= 0.9)
    assert v["tie-break, min_itm"]["synthetic_captions"] == 0 < v["+ captions (config)"]["synthetic_captions"]
    assert v["+ captions (config)"]["synthetic_caption_accuracy"] > 0.75
    assert result["synthetic_captions"] == v["+ captions (config)"]["synthetic_captions"]  # the run is the config
    banners = result["rules"]["aspect_ratio_above"]
    assert banners["planted_dropped"] == banners["planted_total"] > 0 and banners["others_dropped"] == 0
    assert (tmp_path / "run" / "output" / "index.json").exists()
    assert "curate report: documents" in (tmp_path / "run" / "report" / "index.html").read_text()
