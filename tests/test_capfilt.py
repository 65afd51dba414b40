"""CapFilt: the caption decision, the ITM and captioner stages on BLIP directories the tests
build with save_pretrained, and the whole pipeline with all three model stages."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from corpus import image_bytes, mixed_corpus
from curate.models import blip
from curate.models.references import ModelReferenceError
from curate.core.config import ConfigError, load_config, validate
from curate.pipeline.runner import refilter, run_pipeline
from curate.schemas.reasons import reason
from curate.stages.blip_caption import CaptionStage, clean_captions
from curate.stages.blip_itm import ItmStage
from curate.stages.cheap_filters import junk_kind, normalize_caption
from curate.synth.http_server import CorpusServer
from e2e import FAST_SETTINGS, corpus_rows, read_manifest, write_input
from model_dirs import make_blip_dir, make_open_clip_dir
from stage_helpers import pairs_decision, ready


def _cfg(**sections) -> object:
    data = {"input": {"path": "x.parquet"}, "output": {"path": "/tmp/unused"},
            "clip": {"model": "curate:tiny-clip", "min_score": 0.3},
            "itm": {"model": "curate:tiny-blip-itm", "min_prob": 0.5},
            "caption": {"model": "curate:tiny-blip-captioner"}}
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return validate(data)


def _row(caption="a red circle on grey", clip=0.6, itm=0.9, synthetic=(), clips=(), itms=(), bad_encoding=False,
         votes=None, tokens=(7, 9), synthetic_tokens=None, max_tokens=(77, 512), alternates=(), alternate_clips=(),
         alternate_itms=(), alternate_bad=None):
    """A scored row: its scores, the captioner's votes, and its captions' token counts in
    CLIP's and ITM's tokenizers (``tokens``: the original's; ``max_tokens``: the models'
    limits); ``alternates``: the captions of other rows with its URL, with their scores."""
    synthetic_tokens = synthetic_tokens or [tokens] * len(synthetic)
    return {"caption": caption, "caption_bad_encoding": bad_encoding, "clip_score": clip, "itm_prob": itm,
            "itm_cosine": 0.5, "synthetic_captions": list(synthetic), "synthetic_clip_scores": list(clips),
            "synthetic_itm_probs": list(itms), "synthetic_itm_cosines": [0.1] * len(synthetic),
            "synthetic_votes": list(votes) if votes is not None else [1] * len(synthetic),
            "clip_tokens": tokens[0], "itm_tokens": tokens[1], "synthetic_clip_tokens": [t[0] for t in synthetic_tokens],
            "synthetic_itm_tokens": [t[1] for t in synthetic_tokens], "clip_max_tokens": max_tokens[0],
            "itm_max_tokens": max_tokens[1],
            "alternate_captions": list(alternates) or None,
            "alternate_caption_bad_encoding": list(alternate_bad or [False] * len(alternates)) or None,
            "alternate_clip_scores": list(alternate_clips), "alternate_itm_probs": list(alternate_itms),
            "alternate_itm_cosines": [0.2] * len(alternates), "alternate_clip_tokens": [tokens[0]] * len(alternates),
            "alternate_itm_tokens": [tokens[1]] * len(alternates)}


SCORED = pa.schema([
    ("sample_id", pa.string()), ("caption", pa.string()), ("caption_bad_encoding", pa.bool_()),
    ("download_reason", pa.string()), ("jpg", pa.binary()),
    ("clip_score", pa.float32()), ("itm_prob", pa.float32()), ("itm_cosine", pa.float32()),
    ("synthetic_captions", pa.list_(pa.string())), ("synthetic_clip_scores", pa.list_(pa.float32())),
    ("synthetic_itm_probs", pa.list_(pa.float32())), ("synthetic_itm_cosines", pa.list_(pa.float32())),
    ("synthetic_votes", pa.list_(pa.int16())),
    ("clip_tokens", pa.int32()), ("synthetic_clip_tokens", pa.list_(pa.int32())), ("clip_max_tokens", pa.int32()),
    ("itm_tokens", pa.int32()), ("synthetic_itm_tokens", pa.list_(pa.int32())), ("itm_max_tokens", pa.int32()),
    ("alternate_captions", pa.list_(pa.string())), ("alternate_caption_bad_encoding", pa.list_(pa.bool_())),
    ("alternate_clip_scores", pa.list_(pa.float32())), ("alternate_itm_probs", pa.list_(pa.float32())),
    ("alternate_itm_cosines", pa.list_(pa.float32())), ("alternate_clip_tokens", pa.list_(pa.int32())),
    ("alternate_itm_tokens", pa.list_(pa.int32())),
])


def decide(cfg, rows: list[dict]) -> list[dict]:
    """The pairs kind's decision (curate.flow.pairs) of ``rows``, every image passing the image
    rules: the same SQL a run executes, over the facts the caption rules stage stores."""
    table = pa.Table.from_pylist([{**r, "sample_id": f"00000-{i:010d}", "download_reason": None, "jpg": b"x"}
                                  for i, r in enumerate(rows)], schema=SCORED)
    return [{**d, "caption_reason": d["reason"]} for d in pairs_decision(cfg, table)]


def decide_one(cfg, row: dict) -> dict:
    return decide(cfg, [row])[0]


SYNTHETIC = (["a blue square", "a red circle", "a green star"], [0.5, 0.7, 0.1], [0.6, 0.95, 0.9])


# --------------------------------------------------------------------------- decision


def test_capfilt_keeps_passing_original_and_best_passing_synthetic():
    d = decide_one(_cfg(), _row(synthetic=SYNTHETIC[0], clips=SYNTHETIC[1], itms=SYNTHETIC[2]))
    kept = [(c["text"], c["source"]) for c in d["captions"] if c["kept"]]
    # "a green star" has the second-best ITM but fails clip.min_score 0.3; max_synthetic 1 keeps the best
    assert kept == [("a red circle on grey", "original"), ("a red circle", "synthetic")]
    assert d["caption_reason"] is None and d["caption_chosen"] == "a red circle on grey" and d["caption_source"] == "original"
    assert {c["text"]: c["reason"] for c in d["captions"]}["a green star"] == "clip_score_below:0.3"
    best = decide_one(_cfg(capfilt={"prefer": "best"}), _row(synthetic=SYNTHETIC[0], clips=SYNTHETIC[1], itms=SYNTHETIC[2]))
    assert best["caption_chosen"] == "a red circle" and best["chosen_itm_prob"] == pytest.approx(0.95)


def test_junk_original_is_rescued_by_a_synthetic_caption():
    row = _row(caption="IMG_1234.JPG", synthetic=SYNTHETIC[0], clips=SYNTHETIC[1], itms=SYNTHETIC[2])
    d = decide_one(_cfg(capfilt={"max_synthetic": 2}), row)
    assert d["caption_reason"] is None and d["original_caption_reason"] == "caption_junk:file_name"
    assert d["caption_chosen"] == "a red circle" and d["caption_source"] == "synthetic"
    assert [c["text"] for c in d["captions"] if c["kept"]] == ["a red circle"]
    # "a blue square" passes the thresholds, but ITM scores it below the original it would replace
    assert {c["text"]: c["reason"] for c in d["captions"]}["a blue square"] == "judged_below_original:itm_prob"


def test_synthetic_captions_are_ordered_by_agreement_then_both_judges():
    row = _row(caption="IMG_1.JPG", clip=0.1, itm=0.1, synthetic=["a red circle", "a red square", "a blue circle"],
               clips=[0.5, 0.9, 0.8], itms=[0.8, 0.99, 0.95], votes=[1, 1, 3])
    d = decide_one(_cfg(capfilt={"max_synthetic": 3}), row)
    # 3 of the K samples agree on "a blue circle": first; then by the judges together (both rank
    # "a red square" above "a red circle")
    assert [c["text"] for c in d["captions"][1:]] == ["a blue circle", "a red square", "a red circle"]
    assert d["caption_chosen"] == "a blue circle"
    # the consensus order's first max_synthetic are kept if they pass: no falling back to a lower one
    one = decide_one(_cfg(capfilt={"max_synthetic": 1, "synthetic_min_prob": 0.97}), row)
    # the reason names what turned down the original and the first synthetic caption
    assert one["caption_chosen"] is None
    assert one["reason"] == "no_caption_passed:caption_junk_file_name+synthetic-itm_prob_below_0.97"


def test_no_caption_passing_filters_the_sample_with_the_originals_reason():
    row = _row(itm=0.1, synthetic=["a cat", "x"], clips=[0.9, 0.9], itms=[0.2, 0.99])
    d = decide_one(_cfg(), row)
    # "x" passes the scores but not the caption rules (min 2 words); "a cat" fails ITM
    assert d["caption_reason"] == "no_caption_passed:itm_prob_below_0.5+synthetic-caption_too_short_2"
    assert d["caption_chosen"] is None
    assert d["status"] == "filtered" and d["reason"] == d["caption_reason"]
    # listed original first, then best first by ITM
    assert [c["reason"] for c in d["captions"]] == ["itm_prob_below:0.5", "caption_too_short:2", "itm_prob_below:0.5"]
    # without synthetic captions the reason is the original's own, as with filtering alone
    assert decide_one(_cfg(), _row(itm=0.1))["caption_reason"] == "itm_prob_below:0.5"


def test_filter_only_ignores_synthetic_and_caption_only_ignores_the_original():
    row = _row(itm=0.1, synthetic=SYNTHETIC[0], clips=SYNTHETIC[1], itms=SYNTHETIC[2])
    only_filter = decide_one(_cfg(capfilt={"mode": "filter_only"}), row)
    assert only_filter["caption_reason"] == "itm_prob_below:0.5" and len(only_filter["captions"]) == 1
    only_caption = decide_one(_cfg(capfilt={"mode": "caption_only"}), row)
    # no score thresholds on synthetic captions: the best by ITM wins even though "a green star" fails CLIP
    assert only_caption["caption_chosen"] == "a red circle" and only_caption["caption_source"] == "synthetic"
    assert only_caption["original_caption_reason"] == "caption_only_mode"
    assert decide_one(_cfg(capfilt={"mode": "caption_only"}), _row())["caption_reason"] == "no_synthetic_caption"


def test_synthetic_captions_can_have_a_stricter_itm_bar():
    row = _row(caption="IMG_1.JPG", synthetic=SYNTHETIC[0], clips=SYNTHETIC[1], itms=SYNTHETIC[2])
    d = decide_one(_cfg(capfilt={"synthetic_min_prob": 0.97}), row)
    assert d["caption_reason"] == "no_caption_passed:caption_junk_file_name+synthetic-itm_prob_below_0.97"
    assert {c["text"]: c["reason"] for c in d["captions"]}["a red circle"] == "itm_prob_below:0.97"
    # the original is still judged at itm.min_prob
    assert decide_one(_cfg(capfilt={"synthetic_min_prob": 0.97}), _row(itm=0.6))["caption_source"] == "original"


def test_without_itm_synthetic_captions_are_ranked_by_clip():
    d = decide_one(_cfg(itm={"model": None}, capfilt={"prefer": "best"}),
                   _row(synthetic=SYNTHETIC[0], clips=SYNTHETIC[1], itms=SYNTHETIC[2]))
    assert d["caption_chosen"] == "a red circle"  # CLIP 0.7 beats the original's 0.6 and "a blue square"'s 0.5


# The CapFilt decision as a plain Python statement (the implementation before it became SQL):
# the reference the generated SQL must agree with, row for row, on random inputs.


class ReferenceCapFilt:
    def __init__(self, cfg):
        self.cfg, self.mode = cfg, cfg.capfilt.mode
        self.min_score = cfg.clip.min_score if cfg.clip.model else None
        self.min_prob = cfg.itm.min_prob if cfg.itm.model else None
        synthetic = cfg.capfilt.synthetic_min_prob
        self.synthetic_min_prob = (synthetic if synthetic is not None else cfg.itm.min_prob) if cfg.itm.model else None
        self.rank_by = "itm_prob" if cfg.itm.model else "clip_score" if cfg.clip.model else None

    def text_reason(self, text, bad):
        f = self.cfg.filters
        if bad:
            return "caption_bad_encoding"
        if text and len(text) > f.max_caption_chars:
            return f"caption_too_long:{f.max_caption_chars}_chars"
        norm = normalize_caption(text or "")
        if not norm:
            return "caption_empty"
        if f.junk_captions and junk_kind(norm):
            return f"caption_junk:{junk_kind(norm)}"
        words = len(norm.split())
        if words < f.min_caption_words:
            return f"caption_too_short:{f.min_caption_words}"
        if words > f.max_caption_words:
            return f"caption_too_long:{f.max_caption_words}"
        return None

    def score_reason(self, c):
        if self.mode == "caption_only" and c["source"] == "synthetic":
            return None
        if self.min_score is not None and (c["clip_score"] is None or c["clip_score"] < self.min_score):
            return f"clip_score_below:{self.min_score:g}"
        t = self.synthetic_min_prob if c["source"] == "synthetic" else self.min_prob
        if t is not None and (c["itm_prob"] is None or c["itm_prob"] < t):
            return f"itm_prob_below:{t:g}"
        return None

    def consensus_reason(self, c, original):
        """capfilt: every judge must score the synthetic caption above the original."""
        if self.mode != "capfilt":
            return None
        for j, on in (("itm_prob", self.cfg.itm.model), ("clip_score", self.cfg.clip.model)):
            if on and original[j] is not None and (c[j] is None or c[j] <= original[j]):
                return f"judged_below_original:{j}"
        return None

    def judge(self, candidates):
        """Each candidate's ``judged`` rank: with ITM and CLIP, the sum of its ranks by each
        (rank(): 1 + how many score lower, a missing score lowest); with one, its score."""
        judges = [j for j, on in (("itm_prob", self.cfg.itm.model), ("clip_score", self.cfg.clip.model)) if on]
        for c in candidates:
            if len(judges) < 2:
                c["judged"] = c[judges[0]] if judges else None
                continue
            c["judged"] = sum(1 if c[j] is None else 1 + sum(o[j] is None or o[j] < c[j] for o in candidates)
                              for j in judges)

    def order(self, c):
        """Synthetic captions, best first: most votes, then judged, then the tie-break score, then idx."""
        tie = c[self.rank_by] if self.rank_by else None
        return (-c["votes"], c["judged"] is None, -(c["judged"] or 0), tie is None, -(tie or 0), c["idx"])

    def decide(self, row):
        f32 = lambda v: None if v is None else float(np.float32(v))  # noqa: E731 - stored as float32
        original = {"text": " ".join((row["caption"] or "").split()), "source": "original",
                    "clip_score": f32(row["clip_score"]), "itm_prob": f32(row["itm_prob"])}
        original["reason"] = self.text_reason(row["caption"], row["caption_bad_encoding"]) or self.score_reason(original)
        alternates = []  # the captions of other rows with its URL: judged as the original is
        for j, text in enumerate(row["alternate_captions"] or []):
            c = {"text": " ".join((text or "").split()), "source": "alternate",
                 "clip_score": f32(row["alternate_clip_scores"][j]), "itm_prob": f32(row["alternate_itm_probs"][j])}
            c["reason"] = self.text_reason(text, row["alternate_caption_bad_encoding"][j]) or self.score_reason(c)
            alternates.append(c)
        if self.mode == "caption_only":
            for c in [original] + alternates:
                c["reason"] = "caption_only_mode"
        synthetic = []
        if self.mode != "filter_only":
            for j, text in enumerate(row["synthetic_captions"]):
                c = {"text": text, "source": "synthetic", "clip_score": f32(row["synthetic_clip_scores"][j]),
                     "itm_prob": f32(row["synthetic_itm_probs"][j]), "votes": row["synthetic_votes"][j], "idx": j + 1}
                c["reason"] = self.text_reason(text, False) or self.score_reason(c) or self.consensus_reason(c, original)
                synthetic.append(c)
        self.judge([original] + alternates + synthetic)  # the Borda count is over every candidate
        synthetic = sorted(synthetic, key=self.order)
        listed = [original] + alternates + synthetic
        # where each stands in the manifest's list: the original, the alternates in row order,
        # the synthetic captions in the consensus order
        original["position"] = (0, 0)
        for position, c in enumerate(alternates, 1):
            c["position"] = (1, position)
        for position, c in enumerate(synthetic, 1):
            c["position"] = (2, position)
        for c in [original] + alternates:
            c["kept"] = c["reason"] is None
        limit = max(1, self.cfg.capfilt.max_synthetic) if self.mode == "caption_only" else self.cfg.capfilt.max_synthetic
        for c in synthetic:
            c["kept"] = False
        if self.mode == "capfilt":  # the consensus order's first `limit`, each if it passed
            for c in synthetic[:limit]:
                c["kept"] = c["reason"] is None
        else:  # caption_only trusts the captioner: the first `limit` that passed
            for c in [c for c in synthetic if c["reason"] is None][:limit]:
                c["kept"] = True
        kept = [c for c in listed if c["kept"]]
        given = [c for c in kept if c["source"] != "synthetic"]  # the input's captions
        best = lambda c: (c["judged"] is None, -(c["judged"] or 0), c["position"])  # noqa: E731
        chosen = None
        if kept:
            # prefer original: the best passing caption of the input's, else the first kept
            # synthetic one in the consensus order; prefer best: the best kept
            chosen = (min(given, key=best) if given else kept[0]) if self.cfg.capfilt.prefer == "original" \
                else min(kept, key=best)
        if kept:
            why = None
        elif self.mode == "caption_only":
            why = reason("no_caption_passed", synthetic[0]["reason"]) if synthetic else "no_synthetic_caption"
        else:
            failed = [c for c in synthetic if c["reason"]]  # the best-ranked synthetic caption that failed
            first = f"+synthetic-{failed[0]['reason']}" if failed else ""
            why = reason("no_caption_passed", original["reason"] + first) if synthetic or alternates else original["reason"]
        return {"caption_reason": why, "caption_chosen": chosen and chosen["text"],
                "caption_source": chosen and chosen["source"], "original_caption_reason": original["reason"],
                "captions": [(c["text"], c["source"], c["kept"], c["reason"]) for c in listed]}


WORDS = ["a red circle", "a blue square on white", "IMG_0042.jpg", "x", "", "click here", "a large green star",
         "the purple ring", "a red circle"]


def _random_row(rng):
    k, a = rng.randint(0, 4), rng.choice([0, 0, 1, 3])
    score = lambda: rng.choice([None, round(rng.uniform(-0.2, 1.0), 2), 0.5])  # noqa: E731 - ties at 0.5
    return _row(caption=rng.choice(WORDS + [None, "  a   spaced  caption "]), clip=score(), itm=score(),
                synthetic=[rng.choice(WORDS[:-1] + ["a dog"]) for _ in range(k)],
                clips=[score() for _ in range(k)], itms=[score() for _ in range(k)],
                bad_encoding=rng.random() < 0.05, votes=[rng.randint(1, 3) for _ in range(k)],
                alternates=[rng.choice(WORDS + [None, " a  cat on  a mat "]) for _ in range(a)],
                alternate_clips=[score() for _ in range(a)], alternate_itms=[score() for _ in range(a)],
                alternate_bad=[rng.random() < 0.05 for _ in range(a)])


@pytest.mark.parametrize("mode", ["capfilt", "filter_only", "caption_only"])
@pytest.mark.parametrize("prefer", ["original", "best"])
@pytest.mark.parametrize("itm", [None, "curate:tiny-blip-itm"])
def test_generated_sql_agrees_with_the_python_statement_of_capfilt(mode, prefer, itm):
    import random

    rng = random.Random(f"{mode}-{prefer}-{itm}")
    cfg = _cfg(capfilt={"mode": mode, "prefer": prefer, "max_synthetic": rng.randint(0, 2),
                        "synthetic_min_prob": rng.choice([None, 0.8])}, itm={"model": itm})
    rows = [_random_row(rng) for _ in range(60)]
    got = decide(cfg, rows)
    reference = ReferenceCapFilt(cfg)
    for row, d in zip(rows, got):
        want = reference.decide(row)
        have = {**{k: d[k] for k in ("caption_reason", "caption_chosen", "caption_source", "original_caption_reason")},
                "captions": [(c["text"], c["source"], c["kept"], c["reason"]) for c in d["captions"]]}
        assert have == want, row


def test_config_rules_for_capfilt():
    with pytest.raises(ConfigError, match="caption_only needs caption.model"):
        _cfg(caption={"model": None}, capfilt={"mode": "caption_only"})
    with pytest.raises(ConfigError, match="needs a filter for the synthetic captions"):
        _cfg(clip={"model": None, "min_score": None}, itm={"model": None, "min_prob": None})
    with pytest.raises(ConfigError, match="num_beams"):
        _cfg(caption={"mode": "beam", "num_captions": 4, "num_beams": 2})
    assert not _cfg(capfilt={"mode": "filter_only"}).captioning and _cfg().captioning


def test_repeated_samples_are_one_caption_with_their_votes():
    from curate.stages.blip_caption import caption_votes

    texts = ["a red circle", "a picture of a red circle", "a blue circle", "  ", "a red  circle"]
    assert caption_votes(texts, "a picture of") == (["a red circle", "a blue circle"], [3, 1])


def test_clean_captions_strips_prompt_blanks_and_repeats():
    texts = ["a picture of a red  circle", "A picture of a red circle", "a picture of", "a dog", "a dog"]
    assert clean_captions(texts, "a picture of") == ["a red circle", "a dog"]
    assert clean_captions(["  a  cat "], None) == ["a cat"]


# --------------------------------------------------------------------------- models


@pytest.fixture(scope="module")
def blip_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("blip")
    return {"itm": make_blip_dir(root / "itm", "itm"), "caption": make_blip_dir(root / "captioner", "caption", seed=1)}


def _images(n: int) -> list[Image.Image]:
    return [Image.open(io.BytesIO(image_bytes("PNG", seed=s))).convert("RGB") for s in range(n)]


def test_itm_scores_equal_the_models_own_forward(blip_dirs):
    scorer = ready(ItmStage, f"itm.model={blip_dirs['itm']}")
    images = _images(3)
    texts = [["a red cat", "a dog on the grass"], ["a blue sofa"], ["small", "a large dog", "the cat"]]
    probs, cosines = scorer.score(images, texts)
    pair_images = [im for im, ts in zip(images, texts) for _ in ts]
    inputs = scorer.processor(images=pair_images, text=[t for ts in texts for t in ts], padding=True, return_tensors="pt")
    with torch.no_grad():
        want_prob = scorer.model(**inputs).itm_score.softmax(-1)[:, 1].numpy()
        want_cos = scorer.model(**inputs, use_itm_head=False).itm_score.diagonal().numpy()
    assert [len(p) for p in probs] == [2, 1, 3]
    np.testing.assert_allclose(np.concatenate(probs), want_prob, atol=1e-5)
    np.testing.assert_allclose(np.concatenate(cosines), want_cos, atol=1e-5)


def test_captioner_generates_k_clean_captions_reproducibly(blip_dirs):
    images = _images(4)
    captioner = ready(CaptionStage, f"caption.model={blip_dirs['caption']}", "caption.num_captions=3",
                      "caption.max_new_tokens=6", "caption.prompt=a picture of", "itm.model=curate:tiny-blip-itm")
    ids = [f"00000-{i:010d}" for i in range(4)]
    first = captioner.generate(images, ids)
    assert len(first) == 4
    # per-caption seeds: the same image gets the same captions alone, in another batch, in another order
    assert [captioner.generate([images[i]], [ids[i]])[0] for i in (3, 1)] == [first[3], first[1]]
    assert captioner.generate([images[2], images[0]], [ids[2], ids[0]]) == [first[2], first[0]]
    other_seed = ready(CaptionStage, f"caption.model={blip_dirs['caption']}", "caption.num_captions=3",
                       "caption.max_new_tokens=6", "caption.prompt=a picture of", "itm.model=curate:tiny-blip-itm",
                       "caption.seed=1")
    assert other_seed.generate(images, ids) != first
    assert all(1 <= len(caps) <= 3 and sum(votes) <= 3 and len(votes) == len(caps) for caps, votes in first)
    assert not any(c.startswith("a picture of") or not c for caps, _ in first for c in caps)
    beam = ready(CaptionStage, f"caption.model={blip_dirs['caption']}", "caption.mode=beam", "caption.num_captions=2",
                 "caption.num_beams=3", "caption.max_new_tokens=6", "itm.model=curate:tiny-blip-itm")
    beams = beam.generate(images, ids)
    # beam search is deterministic; a random decoder may emit only special tokens, which
    # decode to nothing and are dropped
    assert beams == beam.generate(images[::-1], ids[::-1])[::-1] and len(beams) == 4
    assert all(len(caps) <= 2 for caps, _ in beams)


def test_blip_references_fail_clearly(blip_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert blip.check(str(blip_dirs["itm"]), "itm.model", "itm") == str(blip_dirs["itm"].resolve())
    with pytest.raises(ModelReferenceError, match="needs BlipForConditionalGeneration"):
        blip.check(str(blip_dirs["itm"]), "caption.model", "caption")
    with pytest.raises(ModelReferenceError, match="no config.json"):
        blip.check(str(tmp_path), "itm.model", "itm")
    with pytest.raises(ModelReferenceError, match="no such directory, and not a hub id"):
        blip.check("/no/such/dir", "itm.model", "itm")
    with pytest.raises(ModelReferenceError) as info:
        blip.check("Salesforce/blip-itm-base-coco", "itm.model", "itm")
    assert "cannot read its config" in str(info.value) and "--local-dir" in str(info.value)


# --------------------------------------------------------------------------- pipeline


@pytest.fixture(scope="module")
def capfilt_run(tmp_path_factory, blip_dirs):
    """The mixed corpus through captioner + CLIP + ITM (random weights); thresholds at the
    bottom so that only the caption rules decide, which makes the outcome exact."""
    root = tmp_path_factory.mktemp("capfilt-run")
    clip_dir = make_open_clip_dir(root / "clip")
    with CorpusServer({c.path: c.route for c in mixed_corpus() if c.route}) as server:
        rows = corpus_rows(server)
        write_input(rows, root / "input.parquet")
        (root / "c.yaml").write_text(f"input: {{path: {root / 'input.parquet'}}}\n")
        settings = FAST_SETTINGS + [
            # No compute keys: the three pools are sized to fit the 2 CPUs of the test session.
            f"clip.model=local-dir:{clip_dir}", "clip.min_score=-1",
            f"itm.model={blip_dirs['itm']}", "itm.min_prob=0",
            f"caption.model={blip_dirs['caption']}", "caption.max_new_tokens=6",
            "caption.num_captions=3", "capfilt.max_synthetic=2",
            "dedupe.near=false",  # random CLIP embeddings: near-dedupe is tested elsewhere
        ]
        cfg = load_config(root / "c.yaml", settings, out=str(root / "run"))
        run_pipeline(cfg)
    return rows, root / "run"


def test_three_model_pools_without_compute_keys_fit_two_cpus(capfilt_run):
    _, run = capfilt_run
    pools = json.loads((run / "summary.json").read_text())["pools"]
    assert set(pools) == {"caption", "itm", "clip"}
    assert sum(p["actors"] * p["num_cpus"] for p in pools.values()) + 0.5 <= 2  # + the read/write tasks
    assert pools["caption"]["num_cpus"] > pools["itm"]["num_cpus"] > pools["clip"]["num_cpus"]  # by cost
    assert all(p["threads"] == 1 and p["num_gpus"] == 0 for p in pools.values())


def test_pipeline_capfilt_accounts_for_every_row_and_rescues_junk(capfilt_run):
    rows, run = capfilt_run
    manifest = read_manifest(str(run)).to_pylist()
    assert len(manifest) == len(rows) and len({m["sample_id"] for m in manifest}) == len(rows)
    for m in manifest:
        want = rows[m["input_row"]]
        if want["want_status"] in ("blocked", "download_failed") or (want["want_reason"] or "").startswith(("image_", "aspect")):
            assert (m["status"], m["reason"].split(":")[0]) == (want["want_status"], want["want_reason"])
            continue
        synthetic = [c for c in m["captions"] if c["source"] == "synthetic"]
        assert synthetic and all(c["itm_prob"] is not None and c["clip_score"] is not None for c in synthetic)
        if want["want_status"] == "kept":  # a good original passes and stays the training caption
            assert m["status"] == "kept" and m["caption_source"] == "original"
        elif m["status"] == "kept":  # junk original: kept only with a passing synthetic caption
            assert m["original_caption_reason"].split(":")[0] == want["want_reason"]
            assert m["caption_source"] == "synthetic" and m["caption_chosen"] in [c["text"] for c in synthetic if c["kept"]]
        else:
            assert m["reason"].startswith("no_caption_passed:") and not any(c["kept"] for c in synthetic)
    rescued = [m for m in manifest if m["status"] == "kept" and m["caption_source"] == "synthetic"]
    assert rescued, "no junk-captioned image was rescued by a synthetic caption"


def test_output_carries_the_kept_captions_with_sources(capfilt_run):
    _, run = capfilt_run
    kept = {m["sample_id"]: m for m in read_manifest(str(run)).to_pylist() if m["status"] == "kept"}
    seen = 0
    for tar_path in sorted((run / "output").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    record = json.loads(tar.extractfile(member).read())
                    m = kept[record["sample_id"]]
                    want = [c for c in m["captions"] if c["kept"]]
                    assert [(c["text"], c["source"]) for c in record["captions"]] == [(c["text"], c["source"]) for c in want]
                    for got, c in zip(record["captions"], want):
                        assert got["itm_prob"] == pytest.approx(c["itm_prob"]) and got["clip_score"] == pytest.approx(c["clip_score"])
                    assert record["caption"] == m["caption_chosen"] and record["alt_text"] == (m["caption"] or "")
                    txt = tar.extractfile(member.name[: -len(".json")] + ".txt").read().decode()
                    assert txt == m["caption_chosen"]
                    seen += 1
    assert seen == len(kept)
    table = pq.read_table(sorted((run / "output").glob("*.parquet")))
    assert {c["source"] for caps in table.column("captions").to_pylist() for c in caps} <= {"original", "synthetic"}


def test_refilter_switches_mode_from_stored_captions(capfilt_run, ray_session):
    rows, run = capfilt_run
    refilter(str(run), ["capfilt.mode=filter_only"])
    for m in read_manifest(str(run)).to_pylist():
        want = rows[m["input_row"]]
        assert (m["status"], (m["reason"] or ":").split(":")[0] or None) == (want["want_status"], want["want_reason"])
    refilter(str(run), ["capfilt.mode=caption_only"])
    kept = [m for m in read_manifest(str(run)).to_pylist() if m["status"] == "kept"]
    assert kept and all(m["caption_source"] == "synthetic" for m in kept)
    refilter(str(run), ["capfilt.mode=capfilt"])  # back to the module's state for other tests


def test_oversubscribed_actor_pools_stop_at_start(tmp_path, cli_env):
    import subprocess

    (tmp_path / "in.csv").write_text("url,caption\nhttp://127.0.0.1:9/a.jpg,a cat\n")
    (tmp_path / "c.yaml").write_text(f"input: {{path: {tmp_path / 'in.csv'}}}\n")
    out = subprocess.run(
        ["curate", "run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"),
         "--set", "clip.model=curate:tiny-clip", "--set", "itm.model=curate:tiny-blip-itm",
         "--set", "caption.model=curate:tiny-blip-captioner", "--set", "ray.num_cpus=2",
         *[a for key in ("clip", "itm", "caption") for a in ("--set", f"{key}.num_cpus=1")]],
        capture_output=True, text=True, env=cli_env, timeout=300,
    )
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "need 3.5 CPUs at once" in out.stdout + out.stderr and "num_cpus" in out.stdout + out.stderr
