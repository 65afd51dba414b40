"""A real run's output, read by the libraries people train with, each used as its users use
it (docs/ecosystem.md has one row per consumer; each row is a test here): webdataset, wids,
HF datasets (WebDataset and Parquet, images decoded), open_clip's own training loader with
two training steps of a tiny open_clip model, img2dataset's stats reader, and the exports
(LLaVA JSON read by a LLaVA-style loader, DataComp's uid subset, clip-retrieval's embedding
layout read by embedding-reader)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from rich.console import Console

from curate.demo import demo_config, serve_and_run
from curate.demo_documents import documents_demo_config
from curate.synth.corpus import make_corpus
from curate.synth.documents import make_documents
from e2e import read_manifest


# Appended to some captions of the pairs run (issue 31: each broke a LLaVA sample).
SPECIAL_TOKEN_SUFFIXES = (" <image>", " </s>", " <|im_end|>", " [INST] hi [/INST]", " <image> <image>",
                          "<|eot_id|>", " <s>", " <im_patch>", " \uff1cimage\uff1e", " <|endoftext|>")


@pytest.fixture(scope="module")
def pairs_run(tmp_path_factory, ray_session):
    """The demo's noisy corpus through the demo config (captioner, CLIP, ITM, CapFilt, dedupe),
    in shards of 30 so every reader sees several shards."""
    out = tmp_path_factory.mktemp("eco-pairs")
    corpus = make_corpus(150, 5)
    for i, token in zip(range(0, 150, 15), SPECIAL_TOKEN_SUFFIXES):  # captions holding model control tokens
        corpus.rows[i]["caption"] += token
    _, result = serve_and_run(
        out, corpus, "input.parquet",
        lambda path, run_dir: demo_config(path.parent, run_dir, ["output.samples_per_shard=30", "download.timeout=2"]),
        Console(record=True, width=120))
    run = Path(result.run.root)
    kept = {m["sample_id"]: m for m in read_manifest(str(run)).to_pylist() if m["status"] == "kept"}
    assert len(result.index["shards"]) >= 3 and len(kept) == result.index["total"]
    return run, result.index, kept


@pytest.fixture(scope="module")
def documents_run(tmp_path_factory, ray_session):
    out = tmp_path_factory.mktemp("eco-docs")
    _, result = serve_and_run(out, make_documents(24, 1), "documents.parquet",
                              lambda path, run_dir: documents_demo_config(path, run_dir, []),
                              Console(record=True, width=120))
    run = Path(result.run.root)
    kept = {m["sample_id"]: m for m in read_manifest(str(run)).to_pylist() if m["status"] == "kept"}
    assert kept
    return run, kept


def _tars(run: Path, index: dict) -> list[str]:
    return [str(run / "output" / f"{s['name']}.tar") for s in index["shards"]]


def _parquets(run: Path, index: dict) -> list[str]:
    return [str(run / "output" / f"{s['name']}.parquet") for s in index["shards"]]


def _uid(m: dict) -> str:
    return hashlib.md5(f"{m['url'] or ''}\n{m['caption'] or ''}".encode()).hexdigest()


def _check_record(record: dict, kept: dict) -> dict:
    """A shard's json record against its manifest row: the training caption, the alt-text
    under its own name, the numeric key and the DataComp uid."""
    m = kept[record["sample_id"]]
    assert record["key"] == m["sample_id"].replace("-", "") and record["key"].isdigit()
    assert record["uid"] == _uid(m) and len(record["uid"]) == 32
    assert record["caption"] == m["caption_chosen"] and record["caption_source"] == m["caption_source"]
    assert record["alt_text"] == (m["caption"] or "")
    chosen = next(c for c in m["captions"] if c["kept"] and c["text"] == m["caption_chosen"]
                  and c["source"] == m["caption_source"])
    assert record["clip_score"] == pytest.approx(chosen["clip_score"]) and record["itm_prob"] == pytest.approx(chosen["itm_prob"])
    assert record["alt_text_clip_score"] == pytest.approx(m["clip_score"])
    return m


# ------------------------------------------------------------------ pairs: the shards as they are


def test_webdataset_reads_every_kept_sample_once(pairs_run):
    import webdataset as wds

    run, index, kept = pairs_run
    seen = []
    for sample in wds.WebDataset(_tars(run, index), shardshuffle=False).decode("pil"):
        m = _check_record(sample["json"], kept)
        assert sample["__key__"] == sample["json"]["key"]
        assert sample["txt"] == m["caption_chosen"]
        assert isinstance(sample["jpg"], Image.Image) and sample["jpg"].size == (64, 64)
        seen.append(m["sample_id"])
    assert sorted(seen) == sorted(kept) and len(seen) == len(set(seen))
    # CapFilt replaced some alt-texts: those records say so, with both captions.
    replaced = [m for m in kept.values() if m["caption_source"] == "synthetic"]
    assert replaced, "the demo corpus always has junk alt-text that CapFilt replaces"


def test_wids_opens_the_index_as_a_dataset(pairs_run, tmp_path, monkeypatch):
    import wids

    run, index, kept = pairs_run
    monkeypatch.setenv("WIDS_CACHE", str(tmp_path / "wids-cache"))
    dataset = wids.ShardListDataset(str(run / "output" / "index.json"))
    assert len(dataset) == len(kept)
    seen = set()
    for i in range(len(dataset)):
        sample = dataset[i]
        record = sample[".json"]
        _check_record(record, kept)
        assert sample[".txt"] == record["caption"] and sample[".jpg"].size == (64, 64)
        seen.add(record["sample_id"])
    assert seen == set(kept)


def test_datasets_loads_the_webdataset_shards_with_images_decoded(pairs_run, tmp_path):
    import datasets

    run, index, kept = pairs_run
    ds = datasets.load_dataset("webdataset", data_files={"train": _tars(run, index)}, split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == len(kept)
    assert isinstance(ds.features["jpg"], datasets.Image)
    for row in ds:
        _check_record(row["json"], kept)
        assert row["txt"] == row["json"]["caption"] and isinstance(row["jpg"], Image.Image)


def test_datasets_loads_the_parquet_shards_with_images_decoded(pairs_run, tmp_path):
    import datasets

    run, index, kept = pairs_run
    ds = datasets.load_dataset("parquet", data_files={"train": _parquets(run, index)}, split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == len(kept) and isinstance(ds.features["jpg"], datasets.Image)
    for row in ds:
        _check_record(row, kept)
        assert isinstance(row["jpg"], Image.Image) and row["jpg"].size == (64, 64)


def test_open_clip_trains_two_steps_on_the_shards(pairs_run):
    """open_clip's own loader (open_clip_train.data.get_wds_dataset, as `--dataset-type
    webdataset` uses it), the sample count from sizes.json (no --train-num-samples), and two
    optimizer steps of a randomly initialised tiny CLIP with open_clip's contrastive loss."""
    import open_clip
    import torch
    from open_clip_train.data import get_wds_dataset

    run, index, kept = pairs_run
    config = json.loads((Path(__file__).parent.parent / "curate/assets/models/tiny-clip/open_clip_config.json").read_text())
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**config["model_cfg"])  # random init: nothing is loaded
    preprocess = open_clip.image_transform(64, is_train=True)
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=config["model_cfg"]["text_cfg"]["context_length"])
    args = SimpleNamespace(
        train_data="::".join(_tars(run, index)), val_data=None, dataset_resampled=False, train_num_samples=None,
        train_data_upsampling_factors=None, seed=0, workers=0, world_size=1, batch_size=8)
    data = get_wds_dataset(args, preprocess, is_train=True, epoch=0, tokenizer=tokenizer)
    assert data.dataloader.num_samples >= len(kept)  # from sizes.json, rounded up to whole batches
    loss_fn = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    for step, (images, texts) in enumerate(data.dataloader):
        assert images.shape == (8, 3, 64, 64) and texts.shape == (8, 16)
        image_features, text_features, logit_scale = model(images, texts)
        loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step == 1:
            break
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_sizes_json_and_img2dataset_stats_describe_every_shard(pairs_run, tmp_path):
    """sizes.json as open_clip and DataComp's resharder read it; NNNNN_stats.json with exactly
    the keys img2dataset's own write_stats writes, summed as img2dataset's logger sums them."""
    from img2dataset.logger import CappedCounter, SpeedLogger, write_stats

    run, index, kept = pairs_run
    out = run / "output"
    sizes = json.loads((out / "sizes.json").read_text())
    assert sizes == {f"{s['name']}.tar": s["count"] for s in index["shards"]}
    write_stats(str(tmp_path), 0, 1, 1, 0, 0, 0.0, 1.0, CappedCounter(), 5)
    theirs = json.loads((tmp_path / "00000_stats.json").read_text())
    total = SpeedLogger("total", enable_wandb=False)
    statuses = CappedCounter()
    for shard in index["shards"]:
        stats = json.loads((out / f"{shard['name']}_stats.json").read_text())
        assert stats.keys() == theirs.keys()
        assert stats["successes"] == stats["count"] == shard["count"]
        total(count=stats["count"], success=stats["successes"], failed_to_download=stats["failed_to_download"],
              failed_to_resize=stats["failed_to_resize"], start_time=stats["start_time"], end_time=stats["end_time"])
        statuses.update(CappedCounter.load(stats["status_dict"]))
    assert total.count == total.success == len(kept) and statuses.most_common(1) == [("success", len(kept))]


# ------------------------------------------------------------------ documents


def test_datasets_loads_documents_parquet_with_images_decoded_beside_their_urls(documents_run, tmp_path):
    import datasets

    run, kept = documents_run
    files = sorted(str(p) for p in (run / "output").glob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files={"train": files}, split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == len(kept)
    assert isinstance(ds.features["images"], (datasets.Sequence, getattr(datasets, "List", datasets.Sequence)))
    for row in ds:
        want = kept[row["sample_id"]]
        assert row["texts"] == want["texts"] and row["image_urls"] == want["image_urls"]
        for text, image, url in zip(row["texts"], row["images"], row["image_urls"]):
            assert (text is None) == (image is not None) == (url is not None)
            if image is not None:
                assert isinstance(image, Image.Image) and image.size == (64, 64)


# ------------------------------------------------------------------ curate export


@pytest.fixture(scope="module")
def exports(pairs_run, tmp_path_factory):
    """``curate export`` in each format, run as the command."""
    import subprocess
    import sys

    run, _, _ = pairs_run
    base = tmp_path_factory.mktemp("exports")
    curate = str(Path(sys.executable).parent / "curate")
    for fmt in ("llava", "datacomp-uids", "clip-retrieval"):
        done = subprocess.run([curate, "export", str(run), "--format", fmt, "--out", str(base / fmt)],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "samples" in done.stdout
    return base


class LlavaPretrainData:
    """LLaVA's LazySupervisedDataset as far as the data goes (llava/train/train.py): the JSON
    list, each entry's image opened from image_folder, and preprocess_plain's contract for
    pretraining: two turns, the image token in the human one, the caption as the answer."""

    def __init__(self, data_path: str, image_folder: str):
        self.list_data_dict = json.load(open(data_path, "r"))
        self.image_folder = image_folder

    def __len__(self):
        return len(self.list_data_dict)

    def __getitem__(self, i):
        source = self.list_data_dict[i]
        image = Image.open(Path(self.image_folder) / source["image"]).convert("RGB")
        conversation = source["conversations"]
        assert len(conversation) == 2 and "<image>" in conversation[0]["value"]
        assert [turn["from"] for turn in conversation] == ["human", "gpt"]
        return {"id": source["id"], "image": image, "caption": conversation[1]["value"]}


def test_llava_export_loads_in_a_llava_style_loader(pairs_run, exports):
    run, _, kept = pairs_run
    data = LlavaPretrainData(str(exports / "llava" / "llava_pretrain.json"), str(exports / "llava" / "images"))
    assert len(data) == len(kept)
    by_key = {m["sample_id"].replace("-", ""): m for m in kept.values()}
    for i in range(len(data)):
        item = data[i]
        assert item["caption"] == by_key[item["id"]]["caption_chosen"] and item["image"].size == (64, 64)
    assert {data[i]["id"] for i in range(len(data))} == set(by_key)


def llava_preprocess_plain(source: list[dict]) -> str:
    """LLaVA's pretraining preprocessing of one sample (llava/train/train.py): preprocess_multimodal
    moves every turn's <image> to the front of that turn, then preprocess_plain keeps the human
    turn as the image token alone and appends the answer and the separator ("\\n"); the prompt
    is then split on <image>, one image's features per occurrence (tokenizer_image_token)."""
    turns = [dict(t) for t in source]
    for turn in turns:
        if "<image>" in turn["value"]:
            turn["value"] = ("<image>\n" + turn["value"].replace("<image>", "").strip()).strip()
    assert len(turns) == 2 and "<image>" in turns[0]["value"]
    return "<image>" + turns[1]["value"] + "\n"


def test_llava_export_gives_each_sample_one_image_token_and_no_control_token(pairs_run, exports):
    from curate.core.config import SPECIAL_TOKENS

    run, _, kept = pairs_run
    manifest = read_manifest(str(run)).to_pylist()
    flagged = [m for m in manifest if "caption_junk:special_token" in str(m.get("original_caption_reason") or m["reason"])]
    assert flagged, "the run's captions with control tokens were not flagged"
    entries = json.load(open(exports / "llava" / "llava_pretrain.json"))
    assert len(entries) == len(kept)
    for entry in entries:
        prompt = llava_preprocess_plain(entry["conversations"])
        assert prompt.count("<image>") == 1, entry
        assert not any(token in entry["conversations"][1]["value"] for token in SPECIAL_TOKENS), entry


def test_datacomp_uid_subset_selects_exactly_the_kept_samples(pairs_run, exports):
    """Read back as DataComp's resharder does: np.load, dtype u8,u8, sorted; each shard
    sample's json uid looked up with searchsorted on divmod(int(uid, 16), 2**64)."""
    import webdataset as wds

    run, index, kept = pairs_run
    subset = np.load(exports / "datacomp-uids" / "uids.npy", mmap_mode="r")
    assert subset.dtype == np.dtype("u8,u8") and len(subset) == len(kept)
    assert np.array_equal(np.sort(subset), subset)  # sorted: the resharder binary-searches it
    for sample in wds.WebDataset(_tars(run, index), shardshuffle=False).decode():
        uid = np.array([divmod(int(sample["json"]["uid"], 16), 2**64)], np.dtype("u8,u8"))[0]
        a, b = np.searchsorted(subset, uid, "left"), np.searchsorted(subset, uid, "right")
        assert b - a == 1
    # A sample not in the run is not in the subset.
    other = np.array([divmod(int(hashlib.md5(b"not in the run").hexdigest(), 16), 2**64)], np.dtype("u8,u8"))[0]
    assert np.searchsorted(subset, other, "right") - np.searchsorted(subset, other, "left") == 0


def test_clip_retrieval_layout_reads_with_embedding_reader(pairs_run, exports):
    """clip-retrieval can't be installed beside curate (it pins numpy<2, pyarrow<16,
    transformers<5, open_clip 2.x); embedding-reader is the library clip-retrieval's index
    step and autofaiss read its layout with, used here as they use it."""
    from embedding_reader import EmbeddingReader

    run, _, kept = pairs_run
    base = exports / "clip-retrieval"
    for folder in ("img_emb", "text_emb"):
        reader = EmbeddingReader(str(base / folder), file_format="parquet_npy", meta_columns=["sample_id", "caption"],
                                 metadata_folder=str(base / "metadata"))
        assert reader.count == len(kept) and reader.dimension == 64
        rows = {}
        for embeddings, meta in reader(batch_size=1000, start=0, end=reader.count):
            for vector, sample_id, caption in zip(embeddings, meta["sample_id"], meta["caption"]):
                assert caption == kept[sample_id]["caption_chosen"]
                rows[sample_id] = vector
        assert set(rows) == set(kept)
        assert all(abs(np.linalg.norm(v) - 1) < 1e-2 for v in rows.values())  # normalised, as clip-retrieval's
        if folder == "text_emb":
            texts = rows
        else:
            images = rows
    # The text embeddings are the run's CLIP model's, of the training caption: the cosine of a
    # kept sample's image and text embeddings is its training caption's clip_score.
    metadata = pq.read_table(str(base / "metadata")).to_pylist()
    assert len(metadata) == len(kept)
    for row in metadata:
        m = kept[row["sample_id"]]
        chosen = next(c for c in m["captions"] if c["kept"] and c["text"] == m["caption_chosen"]
                      and c["source"] == m["caption_source"])
        assert float(images[row["sample_id"]] @ texts[row["sample_id"]]) == pytest.approx(chosen["clip_score"], abs=5e-3)
        assert row["clip_score"] == pytest.approx(chosen["clip_score"]) and row["uid"] == _uid(m)
        assert row["image_path"] == f"{m['output_shard']}.tar/{row['key']}.jpg" and row["url"] == m["url"]
