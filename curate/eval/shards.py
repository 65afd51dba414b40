"""A selection materialised as WebDataset training shards, as open_clip's loader reads them.

RUN/eval/<selection>/ holds ``samples.parquet`` (the selection: sample_id, download shard,
training caption, uid: the uid list of the selection) and ``shards/NNNNN.tar`` with
``KEY.<jpg>`` (the downloaded image bytes, as img2dataset stored them) and ``KEY.txt`` (the
selection's training caption), plus ``sizes.json`` ({shard: samples}), which
open_clip_train.data.get_dataset_size reads. The tars are written with curate's own
TarShard (the layout webdataset.TarWriter writes) and images are read one download shard at
a time (curate.flow.shards.ShardImages), as the run's output step does. ``done.json``,
written last, holds the selection's digest: a selection whose samples are unchanged is not
written again.
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa

from curate.core import storage
from curate.core.rundir import RunDir
from curate.flow.pair_record import output_key
from curate.flow.shards import ShardImages, TarShard

SAMPLES_PER_SHARD = 1_000


def digest(table: pa.Table) -> str:
    """sha256 of a selection's (sample_id, caption) pairs: equal selections, equal digests."""
    h = hashlib.sha256()
    for sample_id, caption in zip(table.column("sample_id").to_pylist(), table.column("caption").to_pylist()):
        h.update(f"{sample_id}\t{caption}\n".encode("utf-8", errors="surrogatepass"))
    return h.hexdigest()


def shards_done(folder: str, table: pa.Table) -> dict | None:
    """The written shards' record (``done.json``) if they hold exactly ``table``, else None."""
    marker = storage.join(folder, "done.json")
    if not storage.exists(marker):
        return None
    done = json.loads(storage.read_text(marker))
    return done if done.get("digest") == digest(table) else None


def write_selection(run_root: str, table: pa.Table, folder: str, image_col: str,
                    samples_per_shard: int = SAMPLES_PER_SHARD) -> dict:
    """Write ``table`` (curate.eval.selections.SELECTION_SCHEMA) as shards under ``folder``;
    returns ``{"samples", "shards": [uri, ...], "digest"}`` (also ``done.json``). A selection
    already written with the same samples and captions is not written again."""
    done = shards_done(folder, table)
    if done:
        return done
    run = RunDir(run_root)
    shard_dir = storage.join(folder, "shards")
    storage.remove_tree(shard_dir)
    storage.write_parquet(storage.join(folder, "samples.parquet"), table)
    sizes, uris = {}, []
    for start in range(0, table.num_rows, samples_per_shard):
        rows = table.slice(start, samples_per_shard)
        name = f"{start // samples_per_shard:05d}"
        images = ShardImages(name, rows.select(["sample_id", "download_shard"]), run.downloaded, image_col)
        uri = storage.join(shard_dir, f"{name}.tar")
        with storage.atomic_open(uri) as handle:
            tar = TarShard(handle)
            for sample_id, caption in zip(rows.column("sample_id").to_pylist(), rows.column("caption").to_pylist()):
                tar.write({"__key__": output_key(sample_id), image_col: images[sample_id], "txt": caption})
            tar.close()
        sizes[f"{name}.tar"] = rows.num_rows
        uris.append(uri)
    storage.write_text(storage.join(shard_dir, "sizes.json"), json.dumps(sizes, indent=2))
    done = {"samples": table.num_rows, "shards": uris, "digest": digest(table)}
    storage.write_text(storage.join(folder, "done.json"), json.dumps(done, indent=2))
    return done
