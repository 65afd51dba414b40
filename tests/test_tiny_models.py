"""The tiny models shipped in curate/assets/models load offline through the libraries' own
entry points and know the synthetic domain: true captions score above wrong ones on
fresh renders.

Retrain them with ``python scripts/train_tiny_models.py`` (figures in docs/models.md).
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import open_clip  # noqa: E402
from transformers import (  # noqa: E402
    AutoProcessor,
    BlipForImageTextRetrieval,
    BlipProcessor,
)

from curate.synth import domain  # noqa: E402

MODELS = Path(__file__).resolve().parents[1] / "curate" / "assets" / "models"
SEED = 2024  # neither the training seed (0) nor the script's held-out seed (10000)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test: loading must be offline."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access while loading a shipped model: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def samples():
    """100 fresh renders, each with a true caption, a wrong one (half of them one attribute
    off) and a junk one."""
    rng = random.Random(SEED)
    scenes = [domain.sample_scene(rng) for _ in range(100)]
    images = [domain.render(s, size=rng.choice([64, 96]), rng=rng) for s in scenes]
    return {
        "scenes": scenes,
        "images": images,
        "true": [domain.true_caption(s, rng) for s in scenes],
        "wrong": [domain.wrong_caption(s, rng) for s in scenes],
        "junk": [domain.junk_caption(rng) for _ in scenes],
    }


def _auc(true: np.ndarray, wrong: np.ndarray) -> float:
    return roc_auc_score(np.r_[np.ones(len(true)), np.zeros(len(wrong))], np.r_[true, wrong])


@pytest.fixture(scope="module")
def clip():
    ref = f"local-dir:{MODELS / 'tiny-clip'}"
    model, _, preprocess = open_clip.create_model_and_transforms(ref)
    return model.eval(), preprocess, open_clip.get_tokenizer(ref)


def test_clip_loads_offline_in_fp32(no_network):
    ref = f"local-dir:{MODELS / 'tiny-clip'}"
    model, _, preprocess = open_clip.create_model_and_transforms(ref)
    tokenizer = open_clip.get_tokenizer(ref)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert tokenizer(["a red circle"]).shape == (1, model.context_length)


@torch.no_grad()
def test_clip_scores_true_captions_above_wrong_ones(clip, samples):
    model, preprocess, tokenizer = clip
    images = model.encode_image(torch.stack([preprocess(im) for im in samples["images"]]), normalize=True)

    def clip_score(texts):
        return (images * model.encode_text(tokenizer(texts), normalize=True)).sum(-1).numpy()

    true = clip_score(samples["true"])
    assert _auc(true, clip_score(samples["wrong"])) > 0.9
    assert _auc(true, clip_score(samples["junk"])) > 0.95


@torch.no_grad()
def test_clip_tells_a_near_duplicate_from_another_render(clip, samples):
    """What the dedupe stage relies on: a re-encoded/cropped copy embeds closer to its
    original than another render of the same scene does."""
    model, preprocess, _ = clip
    rng = random.Random(SEED + 1)
    originals = samples["images"][:50]
    copies = [domain.near_duplicate(im, rng) for im in originals]
    renders = [domain.render(s, 64, rng) for s in samples["scenes"][:50]]

    def embed(images):
        return model.encode_image(torch.stack([preprocess(im) for im in images]), normalize=True)

    base = embed(originals)
    to_copy, to_render = (base * embed(copies)).sum(-1), (base * embed(renders)).sum(-1)
    assert _auc(to_copy.numpy(), to_render.numpy()) > 0.8


def _load_blip(cls, name: str):
    directory = MODELS / name
    model = cls.from_pretrained(directory, dtype=torch.float32, local_files_only=True).eval()
    return model, BlipProcessor.from_pretrained(directory, local_files_only=True)


@pytest.mark.parametrize(("cls", "name"), [(BlipForImageTextRetrieval, "tiny-blip-itm")])
def test_blip_models_load_offline_in_fp32(no_network, cls, name):
    model, processor = _load_blip(cls, name)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert isinstance(AutoProcessor.from_pretrained(MODELS / name, local_files_only=True), BlipProcessor)
    tokenizer = processor.tokenizer
    # A real word-level vocabulary (transformers v5 can silently build a 5-token one).
    assert tokenizer.convert_tokens_to_ids("circle") != tokenizer.unk_token_id
    assert tokenizer.bos_token_id == model.config.text_config.bos_token_id  # BLIP's [DEC]
    assert tokenizer.sep_token_id == model.config.text_config.sep_token_id


@torch.no_grad()
def test_itm_scores_true_captions_above_wrong_ones(samples):
    model, processor = _load_blip(BlipForImageTextRetrieval, "tiny-blip-itm")

    def p_match(texts):
        inputs = processor(images=samples["images"], text=texts, padding=True, truncation=True, return_tensors="pt")
        return model(**inputs).itm_score.softmax(-1)[:, 1].numpy()

    true = p_match(samples["true"])
    assert _auc(true, p_match(samples["wrong"])) > 0.9
    assert _auc(true, p_match(samples["junk"])) > 0.95
