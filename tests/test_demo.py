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
