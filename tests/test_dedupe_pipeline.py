"""Dedupe inside `curate run`: exact bytes and exact pixels, survivor choice, and a result
that does not depend on how the work is sharded."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from corpus import image_bytes
from curate.core.config import load_config
from curate.pipeline.runner import run_pipeline
from curate.synth.http_server import CorpusServer, Route
from e2e import FAST_SETTINGS, read_manifest, write_input


def _same_pixels_other_format(data: bytes, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).save(buffer, format=fmt, lossless=True) if fmt == "WEBP" else Image.open(io.BytesIO(data)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def dup_corpus():
    a, b, c = image_bytes("PNG", seed=11), image_bytes("PNG", seed=12), image_bytes("PNG", seed=13)
    routes = {
        "/a1.png": Route(a, content_type="image/png"),
        "/c.png": Route(c, content_type="image/png"),
        "/a2.png": Route(a, content_type="image/png"),          # same bytes as a1
        "/b.png": Route(b, content_type="image/png"),
        "/b.webp": Route(_same_pixels_other_format(b, "WEBP"), content_type="image/webp"),  # same pixels as b.png
        "/a3.png": Route(a, content_type="image/png"),
    }
    with CorpusServer(routes) as server:
        rows = [{"url": server.url(p), "caption": f"a test picture number {i}"} for i, p in enumerate(routes)]
        yield server, rows


def _run(tmp_path, rows, *extra):
    tmp_path.mkdir(parents=True, exist_ok=True)
    write_input(rows, tmp_path / "in.parquet")
    cfg = load_config(None, FAST_SETTINGS + [f"input.path={tmp_path / 'in.parquet'}", *extra], out=str(tmp_path / "run"))
    run_pipeline(cfg)
    return read_manifest(str(tmp_path / "run"))


def test_exact_bytes_and_exact_pixels_are_duplicates_of_the_first(tmp_path, ray_session, dup_corpus):
    _, rows = dup_corpus
    manifest = _run(tmp_path, rows, "dedupe.keep=first").to_pylist()
    by_path = {m["url"].rsplit("/", 1)[1]: m for m in manifest}
    a1, b = by_path["a1.png"]["sample_id"], by_path["b.png"]["sample_id"]
    assert by_path["a1.png"]["status"] == "kept" and by_path["c.png"]["status"] == "kept"
    assert by_path["b.png"]["status"] == "kept"
    for dup in ("a2.png", "a3.png"):
        assert (by_path[dup]["status"], by_path[dup]["reason"]) == ("duplicate", f"duplicate_of:{a1}")
    assert (by_path["b.webp"]["status"], by_path["b.webp"]["reason"]) == ("duplicate", f"duplicate_of:{b}")
    assert by_path["b.webp"]["sha256"] != by_path["b.png"]["sha256"]  # different bytes, same pixels


def test_dedupe_can_be_switched_off(tmp_path, ray_session, dup_corpus):
    _, rows = dup_corpus
    manifest = _run(tmp_path, rows, "dedupe.enabled=false").to_pylist()
    assert [m["status"] for m in manifest] == ["kept"] * len(rows)


def test_result_independent_of_sharding(tmp_path, ray_session, dup_corpus):
    _, rows = dup_corpus
    one = _run(tmp_path / "one", rows, "download.shard_size=1", "output.samples_per_shard=1")
    many = _run(tmp_path / "many", rows, "download.shard_size=50", "output.samples_per_shard=1")
    columns = ["sample_id", "status", "reason", "caption_chosen", "sha256", "pixel_sha256", "output_shard"]
    assert one.select(columns).equals(many.select(columns))
    assert one.column("download_shard").to_pylist() != many.column("download_shard").to_pylist()


def _rendered(seed: int) -> bytes:
    import random

    from curate.synth import domain

    rng = random.Random(seed)
    buffer = io.BytesIO()
    domain.render(domain.sample_scene(rng), 96, rng).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def test_cross_run_dedupe_against_an_earlier_run(tmp_path, ray_session):
    """Run 1 curates images A; run 2 sees A again (other URLs) plus new images B: with
    dedupe.against=[run 1], A's copies are duplicates of run 1's samples, B is kept."""
    a = [_rendered(seed) for seed in range(4)]
    b = [_rendered(seed) for seed in range(100, 104)]
    routes = {f"/a/{i}.jpg": Route(x) for i, x in enumerate(a)}
    routes.update({f"/again/{i}.jpg": Route(x) for i, x in enumerate(a)})
    routes.update({f"/b/{i}.jpg": Route(x) for i, x in enumerate(b)})
    clip_settings = ["clip.model=curate:tiny-clip", "dedupe.threshold=0.99", "filters.min_side=32"]
    with CorpusServer(routes) as server:
        first = [{"url": server.url(f"/a/{i}.jpg"), "caption": f"first crawl picture {i}"} for i in range(4)]
        run1 = _run(tmp_path / "run1", first, *clip_settings).to_pylist()
        second = [{"url": server.url(f"/again/{i}.jpg"), "caption": f"second crawl picture {i}"} for i in range(4)]
        second += [{"url": server.url(f"/b/{i}.jpg"), "caption": f"new picture {i}"} for i in range(4)]
        run2 = _run(tmp_path / "run2", second, *clip_settings, f"dedupe.against=[{tmp_path / 'run1' / 'run'}]").to_pylist()
    assert [m["status"] for m in run1] == ["kept"] * 4
    assert (tmp_path / "run1" / "run" / "dedupe_index" / "meta.json").is_file()
    for earlier, again in zip(run1, run2[:4]):
        assert (again["status"], again["reason"]) == ("duplicate", f"duplicate_of:run/{earlier['sample_id']}")
    assert [m["status"] for m in run2[4:]] == ["kept"] * 4


def test_against_a_missing_reference_stops_at_start(tmp_path):
    from curate.core.config import ConfigError

    write_input([{"url": "http://x.org/a.jpg", "caption": "a b c"}], tmp_path / "in.parquet")
    cfg = load_config(None, [f"input.path={tmp_path / 'in.parquet'}", "clip.model=curate:tiny-clip",
                             f"dedupe.against=[{tmp_path / 'nope'}]"], out=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="neither a curate run"):
        run_pipeline(cfg)
    assert not (tmp_path / "run").exists()
