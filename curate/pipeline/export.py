"""``curate export RUN --format F --out DIR``: a finished pairs run's kept samples in the
layouts other tools read (docs/ecosystem.md).

- ``llava``: LLaVA's pretraining data (``llava_pretrain.json``: ``id``, ``image``,
  ``conversations`` with the training caption, as LLaVA's ``blip_laion_cc_sbu_558k.json``;
  images under ``images/<shard>/<key>.<ext>``, the ``image`` paths relative to it);
- ``datacomp-uids``: ``uids.npy``, the kept samples' uids as DataComp's resharder reads a
  subset file (a sorted NumPy array of dtype ``u8,u8``: each 128-bit uid as two 64-bit
  halves, high first);
- ``clip-retrieval``: the CLIP embeddings in clip-retrieval's inference layout
  (``img_emb/img_emb_N.npy``, ``text_emb/text_emb_N.npy``, ``metadata/metadata_N.parquet``,
  rows aligned, float16 as clip-retrieval writes them), which autofaiss, clip-retrieval's
  index and back end, and embedding-reader read.

Work goes one output shard at a time (the kept rows of one shard, the images of one
download shard): the driver never holds the run's images or embeddings; only the uid list
(16 bytes a sample) is sorted whole, as the format requires.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from curate.core import duck, storage
from curate.core.views import open_views
from curate.flow.pair_record import CAPTION_SCORES, output_key, record_schema, sample_uid, training_record
from curate.core.rundir import RunDir
from curate.flow.shards import ShardImages
from curate.schemas.status import Status
from curate.stages.registry import STAGES

FORMATS = ("llava", "datacomp-uids", "clip-retrieval")
# LLaVA's pretraining turns: the image token and a request for a brief description, then the
# caption (LLaVA's own 558k pretraining set draws the request from a list of such phrasings;
# its preprocess_plain keeps only the image token of the human turn).
LLAVA_PROMPT = "<image>\nGive a brief description of the image."
DATACOMP_UID_DTYPE = np.dtype("u8,u8")
TEXT_BATCH = 256


class ExportError(ValueError):
    """The run can't be exported in that format (not a pairs run, a stage it needs was off)."""


def export(run_root: str, fmt: str, out: str | Path, on_shard=None) -> dict:
    """Write ``fmt`` for the finished run at ``run_root`` into ``out``; returns what was
    written (``samples`` and ``files``). ``on_shard(name, samples)`` follows progress."""
    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    run = RunDir(run_root.rstrip("/"))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    con = open_views(run.root)
    try:
        if "manifest_images" in _views(con):
            raise ExportError(f"{run.root} is a documents run; curate export writes pairs runs")
        shards = [r[0] for r in con.execute(
            "SELECT DISTINCT output_shard FROM manifest WHERE output_shard IS NOT NULL ORDER BY 1").fetchall()]
        writer = {"llava": _llava, "datacomp-uids": _uids, "clip-retrieval": _clip_retrieval}[fmt]
        return writer(con, run, shards, out, on_shard or (lambda name, n: None))
    finally:
        con.close()


def _views(con) -> set[str]:
    return {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}


def _kept(con, shard: str, columns: str) -> pa.Table:
    return duck.fetch_table(con, f"SELECT {columns} FROM manifest WHERE output_shard = {duck.sql_string(shard)} "
                                 f"AND status = {Status.KEPT.sql} ORDER BY sample_id")


def _config(run: RunDir) -> dict:
    return yaml.safe_load(storage.read_text(run.config)) or {}


def _image_format(run: RunDir) -> str:
    return (_config(run).get("download") or {}).get("encode_format", "jpg")


def _llava(con, run: RunDir, shards: list[str], out: Path, on_shard) -> dict:
    ext = _image_format(run)
    total = 0
    target = out / "llava_pretrain.json"
    with open(target.with_suffix(".json.tmp"), "w", encoding="utf-8") as handle:
        handle.write("[")
        for shard in shards:
            rows = _kept(con, shard, "sample_id, download_shard, caption_chosen")
            images = ShardImages(shard, rows.select(["sample_id", "download_shard"]), run.downloaded, ext)
            folder = out / "images" / shard
            folder.mkdir(parents=True, exist_ok=True)
            for row in rows.to_pylist():
                key = output_key(row["sample_id"])
                (folder / f"{key}.{ext}").write_bytes(images[row["sample_id"]])
                entry = {"id": key, "image": f"{shard}/{key}.{ext}", "conversations": [
                    {"from": "human", "value": LLAVA_PROMPT},
                    {"from": "gpt", "value": row["caption_chosen"]},
                ]}
                handle.write(("," if total else "") + "\n" + json.dumps(entry, ensure_ascii=False))
                total += 1
            on_shard(shard, rows.num_rows)
        handle.write("\n]\n")
    target.with_suffix(".json.tmp").replace(target)
    return {"samples": total, "files": [str(target), str(out / "images")]}


def uid_halves(uids: list[str]) -> np.ndarray:
    """128-bit hex uids as DataComp's resharder compares them: (high, low) 64-bit halves."""
    return np.array([divmod(int(uid, 16), 2**64) for uid in uids], dtype=DATACOMP_UID_DTYPE)


def _uids(con, run: RunDir, shards: list[str], out: Path, on_shard) -> dict:
    parts = []
    for shard in shards:
        rows = _kept(con, shard, "url, caption").to_pylist()
        parts.append(uid_halves([sample_uid(r["url"], r["caption"]) for r in rows]))
        on_shard(shard, len(rows))
    uids = np.sort(np.concatenate(parts)) if parts else np.zeros(0, DATACOMP_UID_DTYPE)
    target = out / "uids.npy"
    np.save(target, uids)
    return {"samples": int(len(uids)), "files": [str(target)]}


class _TextEncoder:
    """The run's CLIP model, for the training captions' text embeddings.

    They are computed here rather than stored by the CLIP stage: the training caption is
    chosen after scoring (CapFilt, and again by every refilter), so the stage would have to
    store an embedding for every candidate caption of every image (the original and each
    synthetic one) to have the right one; one text pass over the kept captions costs far
    less than that storage, and the images' embeddings are stored already."""

    def __init__(self, run: RunDir):
        from curate.models import clip

        section = _config(run).get("clip") or {}
        if not section.get("model"):
            raise ExportError(f"{run.root} ran without the CLIP stage (clip.model): it has no CLIP embeddings to export")
        self.model, _, self.tokenizer = clip.load(clip.resolve(section["model"], section.get("pretrained")))

    def __call__(self, texts: list[str]) -> np.ndarray:
        import torch

        from curate.stages.model_support import model_text

        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), TEXT_BATCH):
                tokens = self.tokenizer([model_text(t) for t in texts[start:start + TEXT_BATCH]])
                chunks.append(torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1).numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def _image_embeddings(run: RunDir, kept: pa.Table) -> np.ndarray:
    """The CLIP image embeddings of ``kept``'s rows, in its order: read from the scored parts
    of their download shards only (RUN/scored/<download_shard>/), not the whole run's."""
    import pyarrow.compute as pc

    wanted = kept.column("sample_id")
    found: dict[str, list[float]] = {}
    for shard in sorted(set(kept.column("download_shard").to_pylist())):
        files = storage.list_files(storage.join(run.scored, shard), ".parquet")
        part = storage.read_parquet(files, columns=["sample_id", "clip_image_embedding"],
                                    filters=pc.field("sample_id").isin(wanted))
        for sample_id, embedding in zip(part.column("sample_id").to_pylist(), part.column("clip_image_embedding").to_pylist()):
            found.setdefault(sample_id, embedding)  # a batch committed twice: its first copy
    return np.array([found[s] for s in wanted.to_pylist()], np.float32)


def _clip_retrieval(con, run: RunDir, shards: list[str], out: Path, on_shard) -> dict:
    if "clip_image_embedding" not in {r[0] for r in con.execute("SELECT column_name FROM (DESCRIBE scored)").fetchall()}:
        raise ExportError(f"{run.root} ran without the CLIP stage (clip.model): it has no CLIP embeddings to export")
    encode = _TextEncoder(run)
    ext = _image_format(run)
    manifest_columns = {r[0] for r in con.execute("SELECT column_name FROM (DESCRIBE manifest)").fetchall()}
    # The metadata's scores are the shard record's: the training caption's, and the image's own
    # (every declared score that is not a per-caption one: a new stage's score is exported too).
    image_scores = [c for stage in STAGES for c in stage.scores if c not in stage.caption_columns]
    score_columns = [c for c in dict.fromkeys((*CAPTION_SCORES, *image_scores)) if c in manifest_columns]
    folders = {name: out / name for name in ("img_emb", "text_emb", "metadata")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for shard in shards:
        table = _kept(con, shard, "*")
        fields, rows = record_schema(table.schema), table.to_pylist()
        records = [training_record(r, fields) for r in rows]
        image_emb = _image_embeddings(run, table)
        text_emb = encode([r["caption"] for r in records])
        np.save(folders["img_emb"] / f"img_emb_{shard}.npy", image_emb.astype(np.float16))
        np.save(folders["text_emb"] / f"text_emb_{shard}.npy", text_emb.astype(np.float16))
        # clip-retrieval's columns (image_path, caption, url), then the shard record's ids and scores.
        metadata = pa.table({
            "image_path": [f"{shard}.tar/{r['key']}.{ext}" for r in records],
            **{c: [r[c] for r in records] for c in ("caption", "url", "key", "uid", "sample_id", "caption_source",
                                                    "alt_text")},
            **{c: pa.array([r[c] for r in records], pa.float32()) for c in score_columns},
        })
        pq.write_table(metadata, folders["metadata"] / f"metadata_{shard}.parquet")
        total += len(rows)
        on_shard(shard, len(rows))
    return {"samples": total, "files": [str(f) for f in folders.values()]}

