"""Perceptual-hash dedupe: the hash of copies is near, of other pictures far, the FAISS binary
search finds exactly the pairs a brute force finds, and `curate run` with `dedupe.phash: true`
(no CLIP model) marks re-encoded, resized and cropped copies as `phash` duplicates."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from curate.core.config import load_config
from curate.dedupe.binary import codes_from_hex, hamming_pairs
from curate.flow.plan import make_plan
from curate.pipeline.runner import refilter, run_pipeline
from curate.stages.phash import PhashStage
from curate.synth.http_server import CorpusServer, Route
from e2e import FAST_SETTINGS, read_manifest, write_input
from stage_helpers import config, live

PALETTE = ((200, 120, 60), (40, 90, 160))  # every picture below: the same two colours


def photo(seed: int, size: int = 256) -> Image.Image:
    """A photo-like picture: smooth structure and finer detail, mixing two fixed colours."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray((rng.random((6, 6)) * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    fine = Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    t = (0.75 * np.asarray(coarse, float) + 0.25 * np.asarray(fine, float))[..., None] / 255
    a, b = np.array(PALETTE[0], float), np.array(PALETTE[1], float)
    return Image.fromarray((a * t + b * (1 - t)).astype(np.uint8))


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def crop(image: Image.Image, fraction: float) -> Image.Image:
    w, h = image.size
    d = int(w * fraction)
    return image.crop((d, d, w - d, h - d))


COPIES = {  # what the web does to a picture (curate.synth.domain.near_duplicate does the same)
    "reencoded": lambda im: encoded(im, "JPEG", quality=60),
    "resized": lambda im: encoded(im.resize((180, 180), Image.Resampling.BICUBIC)),
    "cropped": lambda im: encoded(crop(im, 0.02)),
}


def _hashes(images: list[bytes]) -> list[str]:
    stage = PhashStage(config("dedupe.phash=true"))
    batch = live(pa.table({"jpg": pa.array(images, pa.binary()), "download_reason": pa.array([None] * len(images),
                                                                                              pa.string())}),
                 [True] * len(images))
    return stage(batch).column("phash").to_pylist()


def _distance(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def test_copies_hash_near_and_other_pictures_with_the_same_colours_far():
    default = config().dedupe.phash_distance
    for seed in range(6):
        original = photo(seed)
        hashes = _hashes([encoded(original)] + [make(original) for make in COPIES.values()]
                         + [encoded(photo(seed + 100))])
        assert all(len(h) == 16 for h in hashes)
        for name, h in zip(COPIES, hashes[1:4]):
            assert _distance(hashes[0], h) <= default, (seed, name)
        assert _distance(hashes[0], hashes[4]) > default + 4, seed  # another picture of the same two colours


def test_binary_search_finds_exactly_the_brute_force_pairs():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, size=(300, 8), dtype=np.uint8)
    for i in range(0, 60, 3):  # plant an identical code and one 4 bits away
        codes[i + 1] = codes[i]
        codes[i + 2] = codes[i]
        codes[i + 2, 0] ^= 0b00010111
    bits = np.unpackbits(codes, axis=1).astype(np.int32)
    distance = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    for max_distance in (0, 4, 10):
        want = np.argwhere(np.triu(distance <= max_distance, k=1))
        i, j = hamming_pairs(codes, max_distance)
        assert np.array_equal(np.stack([i, j], axis=1), want), max_distance
    hexed, rows = codes_from_hex([None, "ff00ff00ff00ff00", None, "00000000000000ff"])
    assert rows.tolist() == [1, 3] and hexed.shape == (2, 8) and hexed[1, 7] == 0xFF


@pytest.fixture(scope="module")
def phash_run(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("phash")
    routes, truth = {}, {}
    for seed in range(4):
        original = photo(seed)
        routes[f"/{seed}.png"] = Route(encoded(original), content_type="image/png")
        truth[f"/{seed}.png"] = ("kept", None)
        for name, make in COPIES.items():
            routes[f"/{seed}-{name}.img"] = Route(make(original))
            truth[f"/{seed}-{name}.img"] = ("duplicate", "phash")
    routes["/0-bytes.png"] = Route(encoded(photo(0)), content_type="image/png")  # the same bytes as /0.png
    truth["/0-bytes.png"] = ("duplicate", "exact")
    with CorpusServer(routes) as server:
        rows = [{"url": server.url(p), "caption": f"a test picture number {i}"} for i, p in enumerate(routes)]
        write_input(rows, root / "in.parquet")
        cfg = load_config(None, FAST_SETTINGS + [f"input.path={root / 'in.parquet'}", "download.image_size=128",
                                                 "dedupe.phash=true", "dedupe.keep=first"], out=str(root / "run"))
        assert [s.key for s in make_plan(cfg).batch] == ["inspect", "phash", "caption_rules"]  # no CLIP needed
        run_pipeline(cfg)
    return root / "run", [truth[p] for p in routes]


def test_copies_are_phash_duplicates_of_their_original(phash_run):
    run, truth = phash_run
    manifest = read_manifest(str(run)).to_pylist()
    assert [(m["status"], m["duplicate_kind"]) for m in manifest] == truth
    by_row = {m["input_row"]: m for m in manifest}
    originals = {m["url"].rsplit("/", 1)[1].split("-")[0].split(".")[0]: m["sample_id"]
                 for m in manifest if m["status"] == "kept"}
    for m in manifest:
        if m["status"] == "duplicate":
            seed = m["url"].rsplit("/", 1)[1].split("-")[0].split(".")[0]
            assert m["reason"] == f"duplicate_of:{originals[seed]}", by_row


def test_refilter_changes_the_distance_from_stored_hashes(phash_run, ray_session):
    run, truth = phash_run
    refilter(str(run), ["dedupe.phash_distance=0"])
    statuses = [(m["status"], m["duplicate_kind"]) for m in read_manifest(str(run)).to_pylist()]
    # Only copies whose hash did not change at all stay phash duplicates; the exact copy stays.
    assert statuses[-1] == ("duplicate", "exact")
    assert sum(s == ("kept", None) for s in statuses) > sum(t == ("kept", None) for t in truth)
    refilter(str(run), [f"dedupe.phash_distance={config().dedupe.phash_distance}"])
    assert [(m["status"], m["duplicate_kind"]) for m in read_manifest(str(run)).to_pylist()] == truth
