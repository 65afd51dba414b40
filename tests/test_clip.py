"""CLIP stage: reference resolution (good and bad), scoring real images, the pipeline with
any open_clip local-dir model, and refilter from stored scores without the model."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from corpus import image_bytes, mixed_corpus
from curate.models import clip
from curate.models.references import ModelReferenceError
from curate.core.config import load_config
from curate.pipeline.runner import refilter, run_pipeline
from curate.stages.clip_score import ClipStage
from curate.synth.http_server import CorpusServer
from e2e import FAST_SETTINGS, corpus_rows, read_manifest, write_input
from model_dirs import make_open_clip_dir
from stage_helpers import live, ready


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return make_open_clip_dir(tmp_path_factory.mktemp("clip") / "never-seen-clip")


def test_local_dir_reference_resolves_to_absolute_path(clip_dir):
    ref = clip.resolve(f"local-dir:{clip_dir}", None)
    assert ref.model == f"local-dir:{clip_dir.resolve()}" and ref.pretrained is None


def test_named_model_and_tag_are_checked_without_loading():
    assert clip.resolve("ViT-B-32", "laion2b_s34b_b79k") == clip.ClipRef("ViT-B-32", "laion2b_s34b_b79k")
    with pytest.raises(ModelReferenceError, match="'ViT-Nope': not an open_clip model name"):
        clip.resolve("ViT-Nope", None)
    with pytest.raises(ModelReferenceError, match="'made-up-tag': not a tag of ViT-B-32"):
        clip.resolve("ViT-B-32", "made-up-tag")


def test_bad_local_dir_names_the_reference(tmp_path):
    with pytest.raises(ModelReferenceError, match="not an open_clip local-dir"):
        clip.resolve(f"local-dir:{tmp_path}", None)
    with pytest.raises(ModelReferenceError, match="no such shipped model"):
        clip.resolve("curate:no-such-model", None)


def test_unreachable_hub_weights_error_says_how_to_pass_a_local_dir(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelReferenceError) as info:
        clip.load(clip.resolve("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", None))
    assert "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in str(info.value) and "local-dir:/abs/path" in str(info.value)


def _batch(images: list[bytes | None], captions: list[str], rejected: list[bool]) -> pa.Table:
    batch = pa.table({
        "jpg": pa.array(images, pa.binary()),
        "caption": captions,
        "download_reason": pa.array([None if im else "http_404" for im in images], pa.string()),
    })
    return live(batch, [im is not None and not r for im, r in zip(images, rejected)])


def test_scorer_scores_real_images_and_skips_failed_rows(clip_dir):
    scorer = ready(ClipStage, f"clip.model=local-dir:{clip_dir}")
    images = [image_bytes("JPEG", seed=1), image_bytes("PNG", seed=2), None, image_bytes("JPEG", seed=3)]
    out = scorer(_batch(images, ["a red bicycle", "a blue sky", "x", "tiny"], [False, False, False, True]))
    scores = out.column("clip_score").to_pylist()
    embeddings = out.column("clip_image_embedding").to_pylist()
    assert scores[2] is None and scores[3] is None and embeddings[2] is None and embeddings[3] is None
    for score, emb in zip(scores[:2], embeddings[:2]):
        assert -1.0 <= score <= 1.0 and len(emb) == 24 and abs(np.linalg.norm(emb) - 1) < 1e-4
    # the same image and caption in another batch give the same score (batching-independent)
    again = scorer(_batch(images[:1], ["a red bicycle"], [False]))
    assert again.column("clip_score").to_pylist()[0] == pytest.approx(scores[0], abs=1e-5)


def test_scorer_matches_a_bare_open_clip_call(clip_dir):
    import open_clip
    import torch

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{clip_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{clip_dir}")
    data = image_bytes("JPEG", seed=5)
    with torch.no_grad():
        a = model.encode_image(preprocess(Image.open(io.BytesIO(data)).convert("RGB")).unsqueeze(0))
        b = model.encode_text(tokenizer(["a dog on grass"]))
    want = torch.nn.functional.cosine_similarity(a, b).item()
    got = ready(ClipStage, f"clip.model=local-dir:{clip_dir}")(_batch([data], ["a dog on grass"], [False]))
    assert got.column("clip_score").to_pylist()[0] == pytest.approx(want, abs=1e-5)


def test_pipeline_with_clip_then_refilter_without_the_model(tmp_path, ray_session):
    model_dir = make_open_clip_dir(tmp_path / "model", seed=3)
    with CorpusServer({c.path: c.route for c in mixed_corpus() if c.route}) as server:
        rows = corpus_rows(server)
        write_input(rows, tmp_path / "in.parquet")
        cfg = load_config(None, FAST_SETTINGS + [f"input.path={tmp_path / 'in.parquet'}", f"clip.model=local-dir:{model_dir}",
                                                 "clip.batch_size=4", "dedupe.enabled=false"], out=str(tmp_path / "run"))
        run_pipeline(cfg)
    manifest = read_manifest(str(tmp_path / "run")).to_pylist()
    kept = [m for m in manifest if m["status"] == "kept"]
    assert len(manifest) == len(rows) and len(kept) == 5 and all(m["clip_score"] is not None for m in kept)
    assert all(m["clip_score"] is None for m in manifest if m["status"] == "download_failed")

    # A threshold between the kept scores: refilter must filter the lower ones, from stored scores
    # alone; the model directory is gone, so any model load would fail.
    shutil.rmtree(model_dir)
    scores = sorted(m["clip_score"] for m in kept)
    threshold = round((scores[1] + scores[2]) / 2, 6)
    result = refilter(str(tmp_path / "run"), [f"clip.min_score={threshold}"])
    after = {m["sample_id"]: m for m in read_manifest(str(tmp_path / "run")).to_pylist()}
    for m in kept:
        want = "kept" if m["clip_score"] >= threshold else "filtered"
        assert after[m["sample_id"]]["status"] == want
        if want == "filtered":
            assert after[m["sample_id"]]["reason"] == f"clip_score_below:{threshold:g}"
    assert result.index["total"] == sum(1 for m in after.values() if m["status"] == "kept") == 3
    assert len(after) == len(rows)


def test_refilter_refuses_keys_that_need_a_model(tmp_path):
    from curate.core.config import ConfigError

    (tmp_path / "manifest").mkdir()
    (tmp_path / "config.yaml").write_text("input: {path: a.parquet}\noutput: {path: x}\n")
    (tmp_path / "manifest" / "part-00000.parquet").write_bytes(b"")
    with pytest.raises(ConfigError, match="refilter can change only"):
        refilter(str(tmp_path), ["clip.model=ViT-B-32"])


@pytest.mark.parametrize("override", ["aesthetic.min_score=5", "aesthetic.model=curate:tiny-aesthetic", "clip.min_score=0.3"])
def test_refilter_refuses_in_one_line_a_stage_the_run_did_not_compute(tmp_path, override):
    from curate.core.config import ConfigError

    (tmp_path / "manifest").mkdir()
    (tmp_path / "config.yaml").write_text("input: {path: a.parquet}\noutput: {path: x}\n")
    (tmp_path / "manifest" / "part-00000.parquet").write_bytes(b"")
    stage = override.split(".")[0]
    with pytest.raises(ConfigError, match=rf"the {stage} stage did not run .*\({stage}\.model was not set\): its "
                                          r"columns \(\w+_score\) were never computed") as error:
        refilter(str(tmp_path), [override])
    assert "\n" not in str(error.value)
