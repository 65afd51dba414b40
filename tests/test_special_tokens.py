"""Issue 31, item 2: a model's control tokens in a training caption are junk
(``caption_junk:special_token``), whatever ``filters.junk_captions`` says, and the LLaVA
export built from a run never holds one: after LLaVA's own ``preprocess_multimodal`` every
sample has exactly one image token for its one image, and no caption holds ``</s>``."""

from __future__ import annotations

import pytest

from stage_helpers import caption_reasons, config

# The attack's captions and their neighbours: each format's tokens, inside text, alone,
# fullwidth (NFKC makes them the token), and near misses that are text.
TOKEN_CAPTIONS = [
    "a red bicycle <image> leaning on a wall",
    "<image>",
    "a red bicycle</s> leaning on a wall",
    "<s> a red bicycle leaning on a wall",
    "[INST] describe the picture [/INST] a red bicycle",
    "<<SYS>> you are a helpful bot <</SYS>> a bicycle",
    "<|im_start|>assistant a red bicycle<|im_end|>",
    "a red bicycle <|endoftext|> by the sea",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|> a cat <|eot_id|>",
    "<im_start> a red bicycle <im_end> on a wall",
    "a photo <|vision_start|><|image_pad|><|vision_end|> of a cat",
    "a red bicycle \uff1cimage\uff1e leaning on a wall",  # fullwidth < > : NFKC gives <image>
]
TEXT_CAPTIONS = [
    "a red bicycle leaning on a wall",
    "an image of a red bicycle leaning on a wall",  # the word, not the token
    "a sign saying s and a red bicycle",
    "a b< c > d with a red bicycle and a wall",
]


@pytest.mark.parametrize("junk_captions", [True, False])
def test_special_tokens_are_caption_junk(junk_captions):
    cfg = config(f"filters.junk_captions={str(junk_captions).lower()}")
    got = caption_reasons(cfg, TOKEN_CAPTIONS + TEXT_CAPTIONS)
    assert got[: len(TOKEN_CAPTIONS)] == ["caption_junk:special_token"] * len(TOKEN_CAPTIONS)
    assert got[len(TOKEN_CAPTIONS):] == [None] * len(TEXT_CAPTIONS)


def test_the_token_list_is_configurable():
    cfg = config("filters.special_tokens=[\"<custom_tok>\"]")
    got = caption_reasons(cfg, ["a red bicycle <custom_tok> on a wall", "a red bicycle <image> on a wall"])
    assert got == ["caption_junk:special_token", None]
    assert caption_reasons(config("filters.special_tokens=[]", "filters.junk_captions=false"),
                           ["a red bicycle <image> on a wall"]) == [None]


def test_synthetic_and_alternate_captions_are_judged_alike():
    import pyarrow as pa

    from curate.stages.caption_rules import CaptionRulesStage

    stage = CaptionRulesStage(config())
    batch = pa.table({"caption": ["a red bicycle on a wall"], "caption_bad_encoding": [False],
                      "synthetic_captions": pa.array([["a bicycle </s> on a wall", "a red bicycle by a wall"]]),
                      "alternate_captions": pa.array([["<|im_end|> a bicycle"]]),
                      "download_reason": pa.array([None], pa.string()), "jpg": [b"x"]})
    out = stage(batch).to_pylist()[0]
    assert out["synthetic_caption_junk"] == ["special_token", None]
    assert out["alternate_caption_junk"] == ["special_token"]
