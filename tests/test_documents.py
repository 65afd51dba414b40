"""Documents runs (input.kind: documents): hand-written OBELICS and MMC4 inputs, served from
127.0.0.1, through real img2dataset, Ray and the shipped tiny CLIP; placement and document
rules; both output layouts loaded back and rebuilt in order; refilter without a model."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate.core import storage
from curate.flow.plan import make_plan
from curate.core.config import ConfigError, DocumentsInputConfig, InterleavedConfig, load_config
from curate.flow.documents_input import parse_mmc4, parse_obelics
from curate.core.inputs import InputError
from curate.core.rundir import RunDir
from curate.pipeline.runner import refilter, run_pipeline
from curate.flow import interleave
from curate.synth import domain
from curate.synth.http_server import CorpusServer, Route
from e2e import FAST_SETTINGS

# ------------------------------------------------------------------ parsing


def test_obelics_row_parses_to_texts_and_original_slots():
    row = {"texts": ["intro", None, "a red circle", None, None, "outro"],
           "images": [None, "http://h/1.jpg", None, " http://h/2.jpg ", "http://h/3.jpg", None]}
    texts, images = parse_obelics(row, DocumentsInputConfig())
    assert texts == ["intro", "a red circle", "outro"]
    # each image sits before the text that follows it in the input
    assert images == [("http://h/1.jpg", 1), ("http://h/2.jpg", 2), ("http://h/3.jpg", 2)]


@pytest.mark.parametrize("row, problem", [
    ({"texts": ["a", None], "images": [None]}, "texts_and_images_differ_in_length"),
    ({"texts": ["a"], "images": ["http://h/x.jpg"]}, "text_and_image_at_one_position"),
    ({"texts": [None], "images": [42]}, "image_url_not_a_string"),
    ({"texts": "not a list", "images": []}, "texts_or_images_not_a_list"),
])
def test_malformed_obelics_rows_say_what_is_wrong(row, problem):
    with pytest.raises(ValueError, match=problem):
        parse_obelics(row, DocumentsInputConfig())


def test_mmc4_row_uses_matched_text_index_and_puts_bad_indexes_at_the_end():
    row = {"text_list": ["s0", "s1"], "image_info": [
        {"raw_url": "http://h/a.jpg", "matched_text_index": 1},
        {"raw_url": "http://h/b.jpg", "matched_text_index": 7},
        {"raw_url": "http://h/c.jpg"},
    ]}
    texts, images = parse_mmc4(row, DocumentsInputConfig(layout="mmc4"))
    assert texts == ["s0", "s1"]
    assert images == [("http://h/a.jpg", 1), ("http://h/b.jpg", 2), ("http://h/c.jpg", 2)]


# ------------------------------------------------------------------ placement and rules


def _doc(sims: list[list[float]], texts: int | list[str] = 3, slots=None) -> interleave.Document:
    texts = [f"text {j} with some words" for j in range(texts)] if isinstance(texts, int) else texts
    slots = slots or [0] * len(sims)
    images = [interleave.Image(f"d-{k:05d}", k, slots[k], s, "kept", None) for k, s in enumerate(sims)]
    return interleave.Document("d", texts, images)


def test_assignment_maximises_total_similarity_not_greedy():
    # Greedy (best pair first) gives image 0 text 0 (0.9) and image 1 text 1 (0.1): 1.0.
    # The maximum-weight matching gives 0.8 + 0.85 = 1.65.
    doc = interleave.decide_document(_doc([[0.9, 0.8], [0.85, 0.1]], texts=2), InterleavedConfig(min_sim=0))
    assert [im.slot for im in doc.images] == [1, 0]
    assert [kind for kind, _ in doc.sequence] == ["image", "text", "image", "text"]
    assert doc.sequence[0][1].sample_id == "d-00001"


def test_more_images_than_texts_leaves_the_least_similar_without_a_text():
    doc = interleave.decide_document(_doc([[0.9], [0.7]], texts=1), InterleavedConfig())
    assert [(im.status, im.reason, im.slot) for im in doc.images] == [("kept", None, 0), ("filtered", "no_free_text", None)]


def test_original_placement_keeps_input_slots_and_order():
    doc = interleave.decide_document(_doc([[0.1, 0.9], [0.9, 0.1]], texts=2, slots=[2, 2]),
                                     InterleavedConfig(placement="original"))
    assert [im.slot for im in doc.images] == [2, 2]
    assert [kind for kind, _ in doc.sequence] == ["text", "text", "image", "image"]
    assert [item.index for kind, item in doc.sequence if kind == "image"] == [0, 1]


def test_max_images_keeps_the_most_similar():
    doc = interleave.decide_document(_doc([[0.2, 0.1, 0.1], [0.9, 0.1, 0.1], [0.1, 0.5, 0.1]]),
                                     InterleavedConfig(max_images=2))
    assert [im.status for im in doc.images] == ["filtered", "kept", "kept"]
    assert doc.images[0].reason == "over_max_images:2"


def test_dropped_document_records_why_for_itself_and_its_images():
    doc = interleave.decide_document(_doc([[0.9, 0.1, 0.1]]), InterleavedConfig(min_images=2))
    assert (doc.status, doc.reason, doc.sequence) == ("filtered", "too_few_images:2", [])
    assert (doc.images[0].status, doc.images[0].reason) == ("filtered", "document_dropped:too_few_images")
    short = interleave.decide_document(_doc([[0.9]], texts=["two words"]), InterleavedConfig(min_words=3))
    assert short.reason == "too_few_words:3"


def _itm_doc(sims, itm, texts=2, **image_fields):
    doc = _doc(sims, texts)
    for image, probs in zip(doc.images, itm):
        image.itm = probs
    return doc


def test_placement_by_clip_tiebreak_and_itm():
    # CLIP prefers text 0 by 0.01; ITM is sure it is text 1.
    close = ([[0.80, 0.79]], [[0.01, 0.95]])
    assert _slots(close, placement_by="clip") == [0]
    assert _slots(close, placement_by="tiebreak", tie_margin=0.02) == [1]  # within the margin: ITM decides
    assert _slots(close, placement_by="itm") == [1]
    far = ([[0.80, 0.70]], [[0.01, 0.95]])  # 0.10 apart: beyond the margin, CLIP decides
    assert _slots(far, placement_by="tiebreak", tie_margin=0.02) == [0]
    assert _slots(far, placement_by="tiebreak", tie_margin=0.2) == [1]
    # itm: only the texts ITM scored (its CLIP shortlist) can take the image
    assert _slots(([[0.9, 0.1]], [[None, 0.02]]), placement_by="itm") == [1]


def _slots(case, **cfg) -> list[int | None]:
    sims, itm = case
    doc = interleave.decide_document(_itm_doc(sims, itm), InterleavedConfig(min_sim=0, **cfg))
    return [im.slot for im in doc.images]


def test_min_itm_keeps_images_off_texts_itm_rejects():
    # CLIP would put the image before text 0, which ITM rejects: it goes before text 1
    assert _slots(([[0.9, 0.5]], [[0.05, 0.9]]), min_itm=0.5) == [1]
    # two images whose only accepted text is the same: the better match takes it
    doc = interleave.decide_document(_itm_doc([[0.9, 0.5], [0.2, 0.95]], [[0.05, 0.9], [None, 0.99]]),
                                     InterleavedConfig(min_sim=0, min_itm=0.5))
    assert [(im.slot, im.reason) for im in doc.images] == [(None, "no_free_text"), (1, None)]
    # an unscored pair (outside the ITM shortlist) is not accepted either
    assert _slots(([[0.9, 0.5]], [[None, 0.9]]), min_itm=0.5) == [1]


def test_rescued_image_keeps_its_input_position_with_its_caption_after_it():
    doc = _doc([[0.1, 0.9], [0.1, 0.2]], texts=["a filler line of text", "a red circle on a white background"],
               slots=[0, 0])
    doc.images[1].caption, doc.images[1].caption_clip, doc.images[1].caption_itm = "a blue star", 0.7, 0.95
    interleave.decide_document(doc, InterleavedConfig(min_sim=0))
    assert [(kind, getattr(item, "sample_id", item)) for kind, item in doc.sequence] == [
        ("image", "d-00001"), ("caption", "a blue star"), ("text", "a filler line of text"),
        ("image", "d-00000"), ("text", "a red circle on a white background")]
    assert doc.images[1].placed_scores(2) == (0.7, 0.95) and doc.images[0].placed_scores(2) == (0.9, None)
    assert doc.facts()["n_synthetic_texts"] == 1 and doc.facts()["n_words"] == 12  # the caption's words don't count
    # the cap keeps images a text describes before rescued ones
    capped = _doc([[0.1, 0.9], [0.1, 0.2]], texts=2)
    capped.images[0].caption = "a blue star"
    interleave.decide_document(capped, InterleavedConfig(min_sim=0, max_images=1))
    assert [im.reason for im in capped.images] == ["over_max_images:1", None]


@pytest.mark.parametrize("settings, sims, texts, valid, want", [
    ({"max_words": 5}, [[0.9]], ["one two three four five six"], [True], "too_many_words:5"),
    ({"min_words": 7, "max_words": 5}, [[0.9]], ["one two three four five six"], [True], "too_few_words:7"),
    # counts images that passed the image rules, placed or not (three here, one text to place them at)
    ({"max_document_images": 2}, [[0.9], [0.8], [0.7]], ["one text"], [True] * 3, "too_many_images:2"),
    ({"max_document_images": 2}, [[0.9], [0.8], [0.7]], ["one text"], [True, False, True], None),
    ({"max_image_text_ratio": 0.1}, [[0.9, 0.1], [0.1, 0.9]], ["a b c d e", "f g h i j"], [True] * 2,
     "image_text_ratio_above:0.1"),
    ({"min_image_text_ratio": 0.5}, [[0.9]], ["a b c d e"], [True], "image_text_ratio_below:0.5"),
    ({"min_image_text_ratio": 0.1, "max_image_text_ratio": 0.5}, [[0.9]], ["a b c d e"], [True], None),
])
def test_document_rules_each_give_their_reason(settings, sims, texts, valid, want):
    doc = _doc(sims, texts)
    for image, ok in zip(doc.images, valid):
        image.valid = ok
        if not ok:
            image.status, image.reason = "filtered", "image_too_small:32"
    interleave.decide_document(doc, InterleavedConfig(min_sim=0, **settings))
    assert doc.reason == want
    if want:  # every image of a dropped document says why: the placed ones, that their document went
        assert all(im.status == "filtered" and im.reason for im in doc.images)
        assert f"document_dropped:{want.split(':')[0]}" in {im.reason for im in doc.images}


def test_document_rules_are_data_describe_shows():
    from curate.flow.document_rules import document_rules

    rules = document_rules(InterleavedConfig(min_words=10, max_words=2000, max_document_images=30,
                                             max_image_text_ratio=0.5))
    assert [r.codes[0].name for r in rules] == ["malformed_document", "too_few_words", "too_many_words",
                                                "too_many_images", "too_few_images", "image_text_ratio_above"]
    assert {r.scope for r in rules} == {"document"}
    assert rules[3].when == "n_images_valid > 30"


# ------------------------------------------------------------------ config errors


def _config(tmp_path, path, *extra):
    return load_config(None, [f"input.path={path}", "input.kind=documents", "clip.model=curate:tiny-clip",
                              *FAST_SETTINGS, *extra], out=str(tmp_path / "run"))


def test_documents_config_errors_name_the_problem(tmp_path):
    """Checked with the plan, at the start of a run, before anything is written."""
    def check(*args):
        make_plan(_config(tmp_path, *args)).check()

    with pytest.raises(ConfigError, match="jsonl or parquet"):
        check(tmp_path / "docs.csv")
    with pytest.raises(ConfigError, match="set clip.model"):
        check(tmp_path / "docs.jsonl", "clip.model=null")
    with pytest.raises(ConfigError, match="interleaved.min_itm needs ITM scores: set itm.model"):
        check(tmp_path / "docs.jsonl", "interleaved.min_itm=0.5")
    with pytest.raises(ConfigError, match="interleaved.placement_by itm needs ITM scores: set itm.model"):
        check(tmp_path / "docs.jsonl", "interleaved.placement_by=itm")
    with pytest.raises(ConfigError, match="interleaved.caption_unmatched needs synthetic captions: set caption.model"):
        check(tmp_path / "docs.jsonl", "interleaved.caption_unmatched=true")
    with pytest.raises(ConfigError, match="a document keeps its own texts"):
        check(tmp_path / "docs.jsonl", "caption.model=curate:tiny-blip-captioner", "capfilt.mode=caption_only")
    # the ITM stage and the captioner serve documents runs too
    plan = make_plan(_config(tmp_path, tmp_path / "docs.jsonl", "itm.model=curate:tiny-blip-itm",
                             "caption.model=curate:tiny-blip-captioner", "interleaved.caption_unmatched=true",
                             "interleaved.min_itm=0.5", "interleaved.placement_by=tiebreak"))
    plan.kind.check(plan)
    assert [s.key for s in plan.batch] == ["inspect", "caption", "caption_rules", "clip", "itm"]


def test_only_a_documents_run_needs_the_per_text_scores_stored(tmp_path):
    """A pairs run scored before ITM wrote sentence_itm_probs still refilters; a documents run
    without them can't be re-decided (placement reads them)."""
    import duckdb

    from curate.flow.decision import missing_scored_columns

    def missing(*overrides):
        plan = make_plan(load_config(None, ["input.path=in.parquet", "clip.model=curate:tiny-clip",
                                            "itm.model=curate:tiny-blip-itm", *overrides], out=str(tmp_path)))
        schema = plan.scored_schema()
        con = duckdb.connect()
        con.register("scored", schema.remove(schema.get_field_index("sentence_itm_probs")).empty_table())
        return missing_scored_columns(con, plan)

    assert missing() == []
    assert missing("input.kind=documents", "input.path=in.jsonl") == ["sentence_itm_probs"]


def test_missing_layout_column_stops_at_start_with_nothing_written(tmp_path, ray_session):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"text_list": ["a"], "image_info": []}) + "\n")
    cfg = _config(tmp_path, path)  # layout obelics, but the file is MMC4
    with pytest.raises(InputError, match="input.documents.texts_col: column 'texts' not found"):
        run_pipeline(cfg)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ end to end

SCENES = [
    domain.Scene("circle", "red", "white", "large"),
    domain.Scene("star", "blue", "black", "small"),
    domain.Scene("triangle", "yellow", "gray", "large"),
    domain.Scene("cross", "green", "white", "large"),
    domain.Scene("ring", "purple", "gray", "large"),
    domain.Scene("square", "orange", "black", "large"),
]
FILLER = "subscribe to our newsletter for weekly updates."


def _jpeg(scene: domain.Scene, seed: int) -> bytes:
    buffer = io.BytesIO()
    domain.render(scene, 96, random.Random(seed)).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def _routes() -> dict[str, Route]:
    routes = {f"/s{i}.jpg": Route(_jpeg(s, i)) for i, s in enumerate(SCENES)}
    routes["/copy-of-s0.jpg"] = routes["/s0.jpg"]  # the same bytes under another URL
    routes["/html.jpg"] = Route(b"<html>not an image</html>", content_type="text/html")
    return routes


# Each document: texts in order, images as (path, input slot) in input order, and what must come
# of each image: (status, reason code, the text it must be placed before).
DOCUMENTS = [
    {"texts": [FILLER, SCENES[0].caption(), SCENES[1].caption()],
     "images": [("/s1.jpg", 0), ("/s0.jpg", 0)],  # both at the wrong place in the input
     "want": [("kept", None, 2), ("kept", None, 1)]},
    {"texts": [SCENES[2].caption(), FILLER],
     "images": [("/s3.jpg", 0), ("/missing.jpg", 1), ("/s2.jpg", 2)],  # s3: no sentence describes it
     "want": [("filtered", "sim_below", None), ("download_failed", "http_404", None), ("kept", None, 0)]},
    {"texts": [FILLER, SCENES[0].caption()],
     "images": [("/copy-of-s0.jpg", 0)],  # document 0's image again: no image of its own is left
     "want": [("duplicate", "duplicate_of", None)], "doc": ("filtered", "too_few_images")},
    {"texts": [FILLER],  # text about nothing: its only image is too unlike it, the document goes
     "images": [("/s4.jpg", 0)],
     "want": [("filtered", "sim_below", None)], "doc": ("filtered", "too_few_images")},
    {"texts": [SCENES[5].caption(), SCENES[4].caption()],
     "images": [("/html.jpg", 0), ("/s4.jpg", 0), ("/s5.jpg", 2)],
     "want": [("download_failed", "not_an_image", None), ("kept", None, 1), ("kept", None, 0)]},
]
RUN_SETTINGS = [*FAST_SETTINGS, "clip.num_cpus=1", "clip.threads=1", "interleaved.min_sim=0.55",
                "interleaved.min_words=3", "dedupe.threshold=0.99", "output.samples_per_shard=2",
                "report.enabled=false"]


def _obelics_rows(server) -> list[dict]:
    rows = []
    for doc in DOCUMENTS:
        texts, images = [], []
        by_slot: dict[int, list[str]] = {}
        for path, slot in doc["images"]:
            by_slot.setdefault(slot, []).append(server.url(path))
        for j in range(len(doc["texts"]) + 1):
            for url in by_slot.get(j, []):
                texts.append(None)
                images.append(url)
            if j < len(doc["texts"]):
                texts.append(doc["texts"][j])
                images.append(None)
        rows.append({"texts": texts, "images": images, "page": f"https://example.test/{len(rows)}"})
    # a row that is not a document: recorded, never fetched
    rows.append({"texts": ["x", None], "images": [None], "page": "https://example.test/broken"})
    return rows


def _mmc4_rows(server) -> list[dict]:
    return [{"text_list": doc["texts"],
             "image_info": [{"raw_url": server.url(p), "matched_text_index": s, "image_name": p} for p, s in doc["images"]],
             "page": f"https://example.test/{i}"}
            for i, doc in enumerate(DOCUMENTS)]


def _read(run: RunDir, directory: str) -> pa.Table:
    return storage.read_parquet(storage.list_files(directory, ".parquet")).sort_by("sample_id")


def _check_decisions(run: RunDir, n_docs: int) -> tuple[pa.Table, pa.Table]:
    manifest, images = _read(run, run.manifest), _read(run, run.manifest_images)
    assert manifest.num_rows == n_docs  # every input document, once
    assert len(set(manifest.column("sample_id").to_pylist())) == n_docs
    assert images.num_rows == sum(len(d["images"]) for d in DOCUMENTS)
    by_id = {r["sample_id"]: r for r in images.to_pylist()}
    docs = manifest.to_pylist()
    for d, (doc, row) in enumerate(zip(DOCUMENTS, docs)):
        for k, (status, code, slot) in enumerate(doc["want"]):
            got = by_id[f"{row['sample_id']}-{k:05d}"]
            assert (got["status"], (got["reason"] or "").split(":")[0] or None, got["slot"]) == (status, code, slot), (d, k)
        want_doc = doc.get("doc", ("kept", None))
        assert (row["status"], (row["reason"] or "").split(":")[0] or None) == want_doc, d
    return manifest, images


def _check_outputs(run: RunDir, manifest: pa.Table, image_col: str = "jpg") -> None:
    """Both layouts load back, and each kept document rebuilds in its manifest order."""
    import webdataset as wds

    kept = {r["sample_id"]: r for r in manifest.to_pylist() if r["status"] == "kept"}
    out = Path(run.output)
    index = json.loads((out / "index.json").read_text())
    assert index["kind"] == "documents" and index["total"] == len(kept)
    tars = sorted(str(p) for p in out.glob("*.tar"))
    seen = set()
    for sample in wds.WebDataset(tars, shardshuffle=False).decode("pil"):
        doc = sample["json"]
        want = kept[sample["__key__"]]
        assert doc["metadata"]["page"].startswith("https://example.test/")
        rebuilt_texts = [item.get("text") for item in doc["sequence"]]
        rebuilt_ids = [item.get("sample_id") for item in doc["sequence"]]
        assert rebuilt_texts == want["texts"] and rebuilt_ids == want["image_ids"]
        for item in doc["sequence"]:
            if item["type"] == "image":
                assert isinstance(sample[item["member"]], Image.Image) and sample[item["member"]].size == (64, 64)
        seen.add(sample["__key__"])
    assert seen == set(kept)
    table = pa.concat_tables(pq.read_table(p) for p in sorted(out.glob("*.parquet")))
    assert sorted(table.column("sample_id").to_pylist()) == sorted(kept)
    for row in table.to_pylist():
        want = kept[row["sample_id"]]
        assert row["texts"] == want["texts"] and row["image_ids"] == want["image_ids"]
        for text, image in zip(row["texts"], row["images"]):
            assert (text is None) != (image is None)  # each position: a text or an image
            if image is not None:
                assert Image.open(io.BytesIO(image["bytes"])).size == (64, 64)
        assert json.loads(row["metadata"])["page"].startswith("https://example.test/")


def _check_queries_and_stats(run: RunDir, images: pa.Table) -> None:
    """docs/formats.md's queries and `curate stats` answer from the documents run's views."""
    import re

    from rich.console import Console

    from curate.core.views import run_query
    from curate.pipeline.query import print_stats

    text = (Path(__file__).parent.parent / "docs" / "formats.md").read_text()
    why, per_doc = re.findall(r"```sql\n(.*?)```", text, flags=re.S)[0].split(";")[:2]
    assert sum(run_query(run.root, why).column("images").to_pylist()) == images.num_rows
    kept_docs = run_query(run.root, per_doc).to_pylist()
    assert kept_docs and all(r["n_images_kept"] >= 1 for r in kept_docs)
    console = Console(record=True, width=200)
    print_stats(run.root, "table", console)
    assert "images per status and reason" in console.export_text()


@pytest.fixture(scope="module")
def server():
    with CorpusServer(_routes()) as s:
        yield s


def test_obelics_documents_run_end_to_end_and_refilter(tmp_path, server, ray_session):
    path = tmp_path / "docs.jsonl"
    # OBELICS rows often start with null (an image first): pyarrow's JSON reader would corrupt
    # them (apache/arrow#51305). A line that isn't JSON is recorded, not fatal.
    path.write_text("".join(json.dumps(r) + "\n" for r in _obelics_rows(server)) + "{not json\n")
    cfg = _config(tmp_path, path, *RUN_SETTINGS, "input.documents.keep_columns=[page]")
    result = run_pipeline(cfg)
    manifest, images = _check_decisions(result.run, len(DOCUMENTS) + 2)
    assert [(r["status"], r["reason"]) for r in manifest.to_pylist()[-2:]] == [
        ("filtered", "malformed_document:texts_and_images_differ_in_length"),
        ("filtered", "malformed_document:invalid_json"),
    ]
    _check_outputs(result.run, manifest)
    assert result.summary["images"]["kept"] == 5
    _check_queries_and_stats(result.run, images)

    # Refilter to the input's own positions, from the stored similarities: no model runs.
    refilter(str(tmp_path / "run"), ["interleaved.placement=original"])
    again = _read(result.run, result.run.manifest_images)
    slots = {r["sample_id"]: r["slot"] for r in again.to_pylist() if r["status"] == "kept"}
    assert slots["00000-0000000000-00000"] == 0 and slots["00000-0000000000-00001"] == 0
    _check_outputs(result.run, _read(result.run, result.run.manifest))

    # the report of a run with CLIP alone: every kept document drawn, ITM's plots say it was off
    from curate.report.build import write_report

    page = Path(write_report(str(tmp_path / "run"))).read_text()
    kept = [r["sample_id"] for r in _read(result.run, result.run.manifest).to_pylist() if r["status"] == "kept"]
    assert all(f'data-doc="{doc_id}"' in page for doc_id in kept)
    assert "No best ITM P(match) to a text of its shortlist in this run" in page


def test_mmc4_documents_run_from_parquet(tmp_path, server, ray_session):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.Table.from_pylist(_mmc4_rows(server)), path)
    cfg = _config(tmp_path, path, *RUN_SETTINGS, "input.documents.layout=mmc4", "input.documents.keep_columns=[page]",
                  "output.formats=[parquet]")
    result = run_pipeline(cfg)
    manifest, _ = _check_decisions(result.run, len(DOCUMENTS))
    table = pq.read_table(storage.list_files(result.run.output, ".parquet"))
    assert table.num_rows == sum(r["status"] == "kept" for r in manifest.to_pylist())
    first = table.sort_by("sample_id").to_pylist()[0]
    # document 0 rebuilt: filler, s0's image, its sentence, s1's image, its sentence
    assert [t is None for t in first["texts"]] == [False, True, False, True, False]
    assert first["texts"][2] == SCENES[0].caption() and first["texts"][4] == SCENES[1].caption()
    assert np.array(Image.open(io.BytesIO(first["images"][1]["bytes"]))).std() > 0  # HF image layout


def test_a_document_with_too_many_images_is_recorded_not_fetched(tmp_path):
    from curate.flow.documents_input import MAX_IMAGES_PER_DOCUMENT, read_documents_file
    from curate.core.inputs import InputFile

    n = MAX_IMAGES_PER_DOCUMENT + 1
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"texts": ["t"] + [None] * n, "images": [None] + ["http://h/x.jpg"] * n}) + "\n")
    cfg = load_config(None, [f"input.path={path}", "input.kind=documents", "clip.model=curate:tiny-clip"],
                      out=str(tmp_path / "run"))
    docs, images = read_documents_file(InputFile(0, str(path), path.stat().st_size), cfg.input)
    assert docs.column("doc_error").to_pylist() == [f"malformed_document:more_than_{MAX_IMAGES_PER_DOCUMENT}_images"]
    assert images.num_rows == 0
