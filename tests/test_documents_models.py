"""Documents runs with the whole pipeline: the shipped tiny CLIP, BLIP ITM and BLIP captioner
on document images, the ITM shortlist, placement checked by ITM, synthetic captions for images
no text describes, the OBELICS-style rules; a real run over pages served from 127.0.0.1, its
manifests, both output layouts and a refilter without a model."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate.core import storage
from curate.core.config import load_config
from curate.pipeline.runner import refilter, run_pipeline
from curate.stages.blip_itm import ItmStage, shortlist
from curate.stages.clip_score import ClipStage
from curate.synth import domain
from curate.synth.http_server import CorpusServer, Route
from e2e import FAST_SETTINGS
from stage_helpers import live, ready
from test_documents import FILLER, SCENES



def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def _render(scene: domain.Scene, seed: int, size: int = 96) -> bytes:
    return _jpeg(domain.render(scene, size, random.Random(seed)))


# ------------------------------------------------------------------ the model stages on document rows


def test_shortlist_takes_the_k_texts_clip_finds_most_similar():
    assert shortlist([0.1, 0.9, 0.5, 0.7], 4, 2) == [1, 3]  # in text order
    assert shortlist([0.5, 0.9, 0.5], 3, 2) == [0, 1]  # a tie: the earlier text
    assert shortlist([0.1, 0.9], 2, None) == [0, 1] and shortlist([0.1, 0.9], 2, 5) == [0, 1]
    assert shortlist(None, 4, 2) == [0, 1]  # no similarities: the first k


def _document_batch(images: list[bytes | None], texts: list[list[str]], flags: list[bool], **extra) -> pa.Table:
    n = len(images)
    columns = {
        "sample_id": pa.array([f"00000-{i:010d}-00000" for i in range(n)]),
        "jpg": pa.array(images, pa.binary()),
        "caption": pa.array([None] * n, pa.string()),
        "download_reason": pa.array([None if im else "http_404" for im in images], pa.string()),
        "doc_texts": pa.array(texts, pa.list_(pa.string())),
    }
    for name, values in extra.items():
        columns[name] = pa.array(values)
    return live(pa.table(columns), flags)


@pytest.fixture(scope="module")
def itm_stage():
    return ready(ItmStage, "itm.model=curate:tiny-blip-itm", "input.kind=documents", "itm.document_texts=2")


def test_itm_scores_a_document_image_against_its_clip_shortlist_and_its_captions(itm_stage):
    texts = [FILLER, SCENES[0].caption(), SCENES[1].caption(), "a large green cross on a white background"]
    synthetic = ["a large red circle on a white background", "a small blue star on a black background"]
    image = _render(SCENES[0], 1)
    batch = _document_batch(
        [image, image, image], [texts, [], texts], [True, True, False],
        sentence_sims=[[0.1, 0.8, 0.3, 0.6], [], [0.1, 0.8, 0.3, 0.6]],
        synthetic_captions=[synthetic, [], synthetic])
    rows = itm_stage(batch).to_pylist()
    first = rows[0]
    probs = first["sentence_itm_probs"]
    # aligned with the document's texts; only the 2 texts CLIP found most similar are scored
    assert len(probs) == 4 and probs[0] is None and probs[2] is None
    assert probs[1] > 0.5 > probs[3]  # the image's own sentence matches, the cross's doesn't
    assert first["itm_prob"] == pytest.approx(probs[1])
    assert first["synthetic_itm_probs"][0] > 0.5 > first["synthetic_itm_probs"][1]
    # each value is the model's P(match) of that very pair (scored alone, as for a pair)
    own = itm_stage.score([Image.open(io.BytesIO(image)).convert("RGB")], [[texts[1], texts[3], synthetic[1]]])[0][0]
    assert [probs[1], probs[3], first["synthetic_itm_probs"][1]] == pytest.approx(own, abs=1e-4)
    # nothing to match, and a row an image rule rejected: NULL scores
    assert rows[1]["itm_prob"] is None and rows[1]["sentence_itm_probs"] == []
    assert rows[2]["itm_prob"] is None and rows[2]["sentence_itm_probs"] is None


def test_clip_scores_document_texts_and_synthetic_captions_in_one_pass():
    stage = ready(ClipStage, "clip.model=curate:tiny-clip", "input.kind=documents")
    texts = [FILLER, SCENES[0].caption()]
    synthetic = ["a large red circle on a white background", "a small blue star"]
    image = _render(SCENES[0], 2)
    row = stage(_document_batch([image], [texts], [True], synthetic_captions=[synthetic])).to_pylist()[0]
    assert len(row["sentence_sims"]) == 2 and len(row["synthetic_clip_scores"]) == 2
    assert row["clip_score"] == pytest.approx(max(row["sentence_sims"]))  # the best document text only
    assert row["sentence_sims"][1] > row["sentence_sims"][0]
    # the same cosines a pair gets for the same image and caption
    pairs = ready(ClipStage, "clip.model=curate:tiny-clip")
    batch = pa.table({"jpg": pa.array([image] * 2, pa.binary()), "caption": pa.array(synthetic),
                      "download_reason": pa.array([None, None], pa.string())})
    assert row["synthetic_clip_scores"] == pytest.approx(pairs(live(batch, [True, True])).column("clip_score").to_pylist(),
                                                         abs=1e-5)


# ------------------------------------------------------------------ a run with every model

def _banner(scene: domain.Scene) -> bytes:
    strip = Image.new("RGB", (192, 48), domain.BACKGROUNDS[scene.background])
    strip.paste(domain.render(scene, 48, random.Random(9)), (72, 0))
    return _jpeg(strip)


def _routes() -> dict[str, Route]:
    routes = {f"/s{i}.jpg": Route(_render(s, i)) for i, s in enumerate(SCENES)}
    # A render the tiny captioner and ITM agree on (beam search: "a large green cross on a white
    # background", P(match) 0.94); some other renders of the scene get 0.5 and stay unrescued.
    routes["/s3-clear.jpg"] = Route(_render(SCENES[3], 101))
    routes["/s0-other.jpg"] = Route(_render(SCENES[0], 40))
    routes["/banner.jpg"] = Route(_banner(SCENES[2]))
    for k in range(4):
        routes[f"/gallery-{k}.jpg"] = Route(_render(SCENES[k + 2], 200 + k))
    return routes


LONG = " ".join(["word"] * 40)
# Each document: texts, images as (path, input slot), and what must come of each image:
# (status, reason code or the codes it may have, slot, text source), and of the document.
DROPPED_GALLERY_IMAGE = ("filtered", ("document_dropped", "no_caption_passed"), None, None)
DOCUMENTS = [
    {"texts": [FILLER, SCENES[0].caption(), SCENES[1].caption()],  # both images in the wrong place
     "images": [("/s1.jpg", 0), ("/s0.jpg", 0)],
     "want": [("kept", None, 2, "original"), ("kept", None, 1, "original")]},
    {"texts": [SCENES[2].caption(), FILLER],  # s3: no sentence describes it; it gets a caption
     "images": [("/s3-clear.jpg", 1), ("/s2.jpg", 2)],
     "want": [("kept", None, 1, "synthetic"), ("kept", None, 0, "original")]},
    {"texts": [SCENES[5].caption(), FILLER],  # a banner: aspect ratio 4 > 2
     "images": [("/banner.jpg", 0), ("/s5.jpg", 0)],
     "want": [("filtered", "aspect_ratio_above", None, None), ("kept", None, 0, "original")]},
    # an image dump: 4 valid images, more than max_document_images (whether or not a caption
    # rescued them; those no caption rescued say so)
    {"texts": ["photo gallery from our june trip."],
     "images": [(f"/gallery-{k}.jpg", 1) for k in range(4)],
     "want": [DROPPED_GALLERY_IMAGE] * 4, "doc": ("filtered", "too_many_images")},
    {"texts": [SCENES[0].caption(), LONG],  # too long a page
     "images": [("/s0-other.jpg", 0)],
     "want": [("filtered", "document_dropped", None, None)], "doc": ("filtered", "too_many_words")},
]
SETTINGS = [*FAST_SETTINGS, "input.kind=documents", "filters.max_aspect_ratio=2", "dedupe.threshold=0.99",
            "clip.model=curate:tiny-clip", "itm.model=curate:tiny-blip-itm", "caption.model=curate:tiny-blip-captioner",
            # beam search: the same captions on every run, so the test can name them
            "caption.mode=beam", "caption.num_captions=3", "caption.num_beams=3", "capfilt.synthetic_min_prob=0.9",
            *(f"{stage}.{key}" for stage in ("clip", "itm", "caption") for key in ("num_cpus=0.5", "threads=1")),
            "interleaved.min_sim=0.55", "interleaved.min_itm=0.1", "interleaved.placement_by=tiebreak",
            "interleaved.tie_margin=0.2", "interleaved.caption_unmatched=true", "interleaved.min_words=3",
            "interleaved.max_words=30", "interleaved.max_document_images=3", "interleaved.max_image_text_ratio=0.5",
            "output.samples_per_shard=2",
            "report.enabled=false"]


def _rows(server) -> list[dict]:
    rows = []
    for doc in DOCUMENTS:
        texts, images = [], []
        for j in range(len(doc["texts"]) + 1):
            for path, slot in doc["images"]:
                if slot == j:
                    texts.append(None)
                    images.append(server.url(path))
            if j < len(doc["texts"]):
                texts.append(doc["texts"][j])
                images.append(None)
        rows.append({"texts": texts, "images": images})
    return rows


def _read(directory: str) -> pa.Table:
    return storage.read_parquet(storage.list_files(directory, ".parquet")).sort_by("sample_id")


@pytest.fixture(scope="module")
def model_run(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("documents-models")
    with CorpusServer(_routes()) as server:
        path = tmp / "docs.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in _rows(server)))
        cfg = load_config(None, [f"input.path={path}", *SETTINGS], out=str(tmp / "run"))
        return run_pipeline(cfg).run


def _check(run) -> tuple[list[dict], list[dict]]:
    manifest, images = _read(run.manifest).to_pylist(), _read(run.manifest_images).to_pylist()
    assert len(manifest) == len(DOCUMENTS) and len(images) == sum(len(d["images"]) for d in DOCUMENTS)
    by_id = {im["sample_id"]: im for im in images}
    for d, (doc, row) in enumerate(zip(DOCUMENTS, manifest)):
        for k, (status, code, slot, source) in enumerate(doc["want"]):
            got = by_id[f"{row['sample_id']}-{k:05d}"]
            got_code = (got["reason"] or "").split(":")[0] or None
            assert (got["status"], got["slot"], got["text_source"]) == (status, slot, source), (d, k, got["reason"])
            assert got_code in code if isinstance(code, tuple) else got_code == code, (d, k, got["reason"])
        assert (row["status"], (row["reason"] or "").split(":")[0] or None) == doc.get("doc", ("kept", None)), d
    return manifest, images


def test_a_run_with_itm_and_the_captioner_places_captions_and_drops_what_the_rules_say(model_run):
    manifest, images = _check(model_run)
    kept = [im for im in images if im["status"] == "kept"]
    for im in kept:  # ITM scored each image against its document's texts (a shortlist of 3)
        assert len(im["sentence_itm_probs"]) == len(im["sentence_sims"]) and im["itm_prob"] is not None
    original = [im for im in kept if im["text_source"] == "original"]
    assert all(im["placed_itm_prob"] >= 0.1 and im["placed_clip_score"] >= 0.55 for im in original)
    # the image no sentence describes: its best synthetic caption, correct, passed every bar
    rescued = next(im for im in images if im["text_source"] == "synthetic")
    assert domain.caption_is_correct(rescued["synthetic_caption"], SCENES[3])
    best = rescued["captions"][0]
    assert best["kept"] and best["text"] == rescued["synthetic_caption"] and best["itm_prob"] >= 0.9
    assert rescued["placed_clip_score"] == pytest.approx(best["clip_score"])
    # documents: the sequence carries the caption right after its image, and says it is synthetic
    doc = manifest[1]
    assert doc["texts"] == [None, SCENES[2].caption(), None, rescued["synthetic_caption"], FILLER]
    assert doc["text_sources"] == [None, "original", None, "synthetic", "original"]
    assert doc["image_ids"][2] == rescued["sample_id"] and doc["n_synthetic_texts"] == 1
    assert manifest[3]["n_images_valid"] == 4 and manifest[2]["n_images_valid"] == 1  # the banner is not valid
    assert "document_dropped:too_many_images" in {im["reason"] for im in images if im["doc_id"] == manifest[3]["sample_id"]}


def test_outputs_say_which_texts_are_synthetic(model_run):
    import webdataset as wds

    tars = sorted(str(p) for p in Path(model_run.output).glob("*.tar"))
    sequences = {s["__key__"]: s["json"]["sequence"] for s in wds.WebDataset(tars, shardshuffle=False).decode()}
    page = sequences["00000-0000000001"]
    assert [item["type"] for item in page] == ["image", "text", "image", "text", "text"]
    assert [item.get("source") for item in page] == [None, "original", None, "synthetic", "original"]
    assert page[2]["sample_id"] == "00000-0000000001-00000"  # the caption follows its own image
    table = pa.concat_tables(pq.read_table(p) for p in sorted(Path(model_run.output).glob("*.parquet")))
    row = next(r for r in table.to_pylist() if r["sample_id"] == "00000-0000000001")
    assert row["text_sources"] == [None, "original", None, "synthetic", "original"]
    assert [t is None for t in row["texts"]] == [i is not None for i in row["images"]]


def test_refilter_without_captions_or_with_itm_placement_needs_no_model(model_run, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(model_run.root, run_dir)
    refilter(str(run_dir), ["interleaved.caption_unmatched=false", "interleaved.placement_by=itm"])
    images = {im["sample_id"]: im for im in _read(str(run_dir / "manifest_images")).to_pylist()}
    assert images["00000-0000000001-00000"]["reason"].startswith("sim_below")  # no caption now: dropped
    # ITM alone still finds each described image's sentence
    assert [images[f"00000-0000000000-{k:05d}"]["slot"] for k in range(2)] == [2, 1]
    assert images["00000-0000000001-00001"]["slot"] == 0
