"""The aesthetic stage: LAION's improved aesthetic predictor over the stored CLIP embeddings.

Heads are saved by the tests in LAION's exact layout (the predictor's ``MLP`` class, its
``state_dict()``), then read by curate; the pipeline runs them on a real CLIP model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from corpus import image_bytes
from curate.core.config import ConfigError, load_config
from curate.core.views import run_query
from curate.flow.plan import make_plan
from curate.stages import aesthetic
from curate.models.references import ModelReferenceError
from curate.pipeline.runner import refilter, run_pipeline
from curate.synth.http_server import CorpusServer, Route
from e2e import FAST_SETTINGS, read_manifest, write_input
from model_dirs import make_open_clip_dir


class LaionMLP(torch.nn.Module):
    """The predictor's class as its repository defines it (improved-aesthetic-predictor,
    simple_inference.py): ``layers`` = Linear, Dropout, Linear, Dropout, Linear, Dropout,
    Linear, Linear; no activations."""

    def __init__(self, input_size: int):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(input_size, 1024), torch.nn.Dropout(0.2),
            torch.nn.Linear(1024, 128), torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64), torch.nn.Dropout(0.1),
            torch.nn.Linear(64, 16), torch.nn.Linear(16, 1),
        )

    def forward(self, x):
        return self.layers(x)


def laion_head(path, input_size: int, seed: int = 0):
    torch.manual_seed(seed)
    model = LaionMLP(input_size).eval()
    torch.save(model.state_dict(), path)
    return model


def test_a_head_in_laions_exact_layout_scores_as_the_predictor_does(tmp_path):
    model = laion_head(tmp_path / "sac+logos+ava1-l14-linearMSE.pth", 768)
    emb = np.random.default_rng(0).normal(size=(5, 768)).astype(np.float32)
    normalized = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    with torch.no_grad():
        want = model(torch.from_numpy(normalized)).numpy()[:, 0]
    head = aesthetic.load(aesthetic.resolve(str(tmp_path / "sac+logos+ava1-l14-linearMSE.pth")))
    assert head.input_dim == 768 and len(head.weights) == 5
    np.testing.assert_allclose(head.predict(emb), want, rtol=1e-5, atol=1e-5)  # normalises as the predictor does
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "head.safetensors"))
    np.testing.assert_allclose(aesthetic.load(tmp_path / "head.safetensors").predict(emb), want, rtol=1e-5, atol=1e-5)


def test_the_shipped_tiny_head_loads_for_the_tiny_clip():
    head = aesthetic.load(aesthetic.resolve("curate:tiny-aesthetic"))
    assert head.input_dim == 64  # curate:tiny-clip's embedding
    scores = head.predict(np.eye(64, dtype=np.float32)[:3])
    assert scores.shape == (3,) and np.isfinite(scores).all()


def test_bad_heads_fail_clearly(tmp_path):
    with pytest.raises(ModelReferenceError, match="no such file"):
        aesthetic.resolve(str(tmp_path / "missing.pth"))
    torch.save({"fc.weight": torch.zeros(1, 4), "fc.bias": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ModelReferenceError, match="unexpected key 'fc.weight'"):
        aesthetic.load(tmp_path / "other.pth")
    torch.save({"layers.0.weight": torch.zeros(8, 4), "layers.0.bias": torch.zeros(8),
                "layers.2.weight": torch.zeros(1, 5), "layers.2.bias": torch.zeros(1)}, tmp_path / "broken.pth")
    with pytest.raises(ModelReferenceError, match="don't chain"):
        aesthetic.load(tmp_path / "broken.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a state dict")
    with pytest.raises(ModelReferenceError, match="cannot read it as a state dict"):
        aesthetic.load(tmp_path / "garbage.pth")


def test_a_head_for_another_clip_stops_the_run_at_start(tmp_path):
    clip_dir = make_open_clip_dir(tmp_path / "clip")  # 24-d embeddings
    laion_head(tmp_path / "l14.pth", 768)
    cfg = load_config(None, [f"clip.model=local-dir:{clip_dir}", f"aesthetic.model={tmp_path / 'l14.pth'}"],
                      out=str(tmp_path / "run"), fill_missing={"input.path": "in.parquet"})
    with pytest.raises(ConfigError, match="takes 768-d CLIP embeddings, but clip.model .* gives 24-d ones"):
        make_plan(cfg).check()
    no_clip = load_config(None, [f"aesthetic.model={tmp_path / 'l14.pth'}"], out=str(tmp_path / "run"),
                          fill_missing={"input.path": "in.parquet"})
    with pytest.raises(ConfigError, match="the aesthetic stage reads 'clip_image_embedding'.*the clip stage writes it"):
        make_plan(no_clip)


@pytest.fixture(scope="module")
def aesthetic_run(tmp_path_factory, ray_session):
    """Twelve images, three of them re-encoded copies of others, through CLIP + a LAION-layout head."""
    root = tmp_path_factory.mktemp("aesthetic")
    clip_dir = make_open_clip_dir(root / "clip", seed=5)
    head = laion_head(root / "head.pth", 24, seed=3)
    images = [image_bytes("JPEG", seed=40 + i) for i in range(9)]
    copies = [image_bytes("PNG", seed=40 + i) for i in range(3)]  # the same picture, other bytes: near duplicates
    routes = {f"/{i}.jpg": Route(data) for i, data in enumerate(images)}
    routes.update({f"/copy{i}.png": Route(data, content_type="image/png") for i, data in enumerate(copies)})
    with CorpusServer(routes) as server:
        rows = [{"url": server.url(p), "caption": f"a test picture number {i}"} for i, p in enumerate(routes)]
        write_input(rows, root / "in.parquet")
        cfg = load_config(None, FAST_SETTINGS + [
            f"input.path={root / 'in.parquet'}", f"clip.model=local-dir:{clip_dir}", "clip.num_cpus=0.5",
            f"aesthetic.model={root / 'head.pth'}", "dedupe.keep=aesthetic", "dedupe.threshold=0.98",
        ], out=str(root / "run"))
        run_pipeline(cfg)
    return root / "run", head


def test_scores_are_the_heads_on_the_stored_embeddings(aesthetic_run):
    run, head = aesthetic_run
    stored = run_query(str(run), "SELECT s.sample_id, s.clip_image_embedding AS emb, m.aesthetic_score FROM scored s "
                                 "JOIN manifest m USING (sample_id) ORDER BY 1").to_pylist()
    assert len(stored) == 12
    emb = np.array([r["emb"] for r in stored], np.float32)
    with torch.no_grad():
        want = head(torch.from_numpy(emb / np.linalg.norm(emb, axis=1, keepdims=True))).numpy()[:, 0]
    np.testing.assert_allclose([r["aesthetic_score"] for r in stored], want, rtol=1e-4, atol=1e-5)


def test_dedupe_keeps_the_most_aesthetic_copy(aesthetic_run):
    run, _ = aesthetic_run
    manifest = {m["sample_id"]: m for m in read_manifest(str(run)).to_pylist()}
    duplicates = [m for m in manifest.values() if m["status"] == "duplicate"]
    assert duplicates, "the re-encoded copies were not found"
    for m in duplicates:
        survivor = manifest[m["reason"].split(":", 1)[1]]
        assert survivor["status"] == "kept" and survivor["aesthetic_score"] >= m["aesthetic_score"]


def test_refilter_applies_min_score_from_stored_scores(aesthetic_run, ray_session):
    run, _ = aesthetic_run
    before = read_manifest(str(run)).to_pylist()
    scores = sorted(m["aesthetic_score"] for m in before)
    threshold = round((scores[5] + scores[6]) / 2, 6)
    refilter(str(run), [f"aesthetic.min_score={threshold}"])
    after = {m["sample_id"]: m for m in read_manifest(str(run)).to_pylist()}
    for m in before:
        if m["aesthetic_score"] < threshold:
            assert (after[m["sample_id"]]["status"], after[m["sample_id"]]["reason"]) == (
                "filtered", f"aesthetic_score_below:{threshold:g}")
        else:
            assert after[m["sample_id"]]["status"] in ("kept", "duplicate")
    refilter(str(run), ["aesthetic.min_score=null"])  # back to the module's state
