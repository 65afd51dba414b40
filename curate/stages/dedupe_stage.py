"""Dedupe stage: the one global step. Runs over the samples that passed every filter, on
the stored sha256 / pixel hashes and CLIP image embeddings (curate.dedupe does the FAISS
work), and returns ``(sample_id, duplicate_of)`` for the manifest.

``dedupe.against`` entries (earlier runs, or index directories written by
``curate.dedupe.save_index``) are matched first: a sample that duplicates already-curated
or held-out evaluation data gets ``duplicate_of:<name>/<sample_id>``. Every run saves the
embeddings of its kept samples to ``RUN/dedupe_index/`` so later runs can dedupe against it.

Progress (the ``dedupe`` entry of RUN/progress.json): candidates whose search has finished,
out of all candidates. Rows matched to a reference are done after that match; the others as
exact groups settle and near-search blocks or partitions finish.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pyarrow as pa

from curate import dedupe
from curate.core import storage
from curate.core.config import CurateConfig
from curate.core.rundir import RunDir

if TYPE_CHECKING:
    from curate.core.progress import Progress

EMPTY = pa.schema([("sample_id", pa.string()), ("duplicate_of", pa.string())])
# Scores of the sample's training caption (curate.stages.capfilt), so a duplicate group keeps
# the copy whose chosen caption matches best. A stage that is off gives NULL: every score
# ties and the smallest sample_id survives.
_KEEP_SCORE_SQL = {
    "clip_score": "c.chosen_clip_score",
    "itm": "c.chosen_itm_prob",
    "resolution": "CAST(s.original_width AS DOUBLE) * s.original_height",
    "first": "NULL::DOUBLE",
}


def _embeddings(column: pa.ChunkedArray) -> np.ndarray | None:
    values = column.combine_chunks()
    if values.null_count or len(values) == 0:
        return None
    flat = values.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return flat.reshape(len(values), -1)


def _candidates(con, cfg: CurateConfig, with_embeddings: bool) -> pa.Table:
    emb = ", s.clip_image_embedding AS emb" if with_embeddings else ""
    return con.execute(f"""
        SELECT d.sample_id, coalesce(s.pixel_sha256, s.sha256) AS exact_key,
               {_KEEP_SCORE_SQL[cfg.dedupe.keep]} AS score {emb}
        FROM decided d JOIN scored s USING (sample_id) JOIN captions_decided c USING (sample_id)
        WHERE d.status = 'kept' ORDER BY d.sample_id
    """).arrow().read_all()


def _reference(entry: str) -> tuple[str, dedupe.EmbeddingIndex]:
    """An ``against`` entry -> (name used in reasons, its embedding index)."""
    path = Path(entry)
    name = path.name or entry
    if (path / "meta.json").is_file():
        return name, dedupe.load_index(path)
    index_dir = Path(RunDir(entry).root) / "dedupe_index"
    if (index_dir / "meta.json").is_file():
        return name, dedupe.load_index(index_dir)
    raise FileNotFoundError(f"dedupe.against: {entry!r} is neither a curate run with dedupe_index/ nor an index directory")


def check_dedupe_references(cfg: CurateConfig) -> None:
    """Fail at start, naming the entry, if a dedupe.against reference can't be read."""
    from curate.core.config import ConfigError

    if cfg.dedupe.against and not cfg.clip.model:
        raise ConfigError("dedupe.against: matching against other runs needs CLIP embeddings; set clip.model")
    for entry in cfg.dedupe.against:
        try:
            _reference(entry)
        except (FileNotFoundError, ValueError) as error:
            raise ConfigError(str(error)) from None


@contextmanager
def _followed(progress: Progress | None, candidates: int) -> Iterator[dedupe.Searched]:
    """``advance(rows)`` of the ``dedupe`` progress entry (a no-op when nobody follows)."""
    if progress is None:
        yield dedupe.no_report
        return
    with progress.part("dedupe", total=candidates) as advance:
        yield advance


def find_duplicates(con, cfg: CurateConfig, run: RunDir, progress: Progress | None = None) -> pa.Table:
    if not cfg.dedupe.enabled:
        return EMPTY.empty_table()
    near = cfg.dedupe.near and cfg.clip.model is not None
    table = _candidates(con, cfg, near)
    with _followed(progress, table.num_rows) as searched:
        return _duplicates(table, cfg, near, searched)


def _duplicates(table: pa.Table, cfg: CurateConfig, near: bool, searched: dedupe.Searched) -> pa.Table:
    if table.num_rows == 0:
        return EMPTY.empty_table()
    ids = table.column("sample_id").to_pylist()
    emb = _embeddings(table.column("emb")) if near else None
    threshold = cfg.dedupe.threshold or dedupe.DEFAULT_THRESHOLD
    duplicate_of = np.full(len(ids), None, dtype=object)

    for entry in cfg.dedupe.against:
        if emb is None:
            raise ValueError("dedupe.against needs CLIP image embeddings: set clip.model")
        name, index = _reference(entry)
        matched = index.match(emb, threshold)
        for row in np.flatnonzero(matched != None):  # noqa: E711 - object array of ids / None
            if duplicate_of[row] is None:
                duplicate_of[row] = f"{name}/{matched[row]}"

    rest = np.flatnonzero(duplicate_of == None)  # noqa: E711
    searched(len(ids) - len(rest))  # matched to a reference: no search within the run
    scores = table.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
    keys = table.column("exact_key").to_pylist() if cfg.dedupe.exact else None
    within = dedupe.dedupe(
        [ids[r] for r in rest], None if emb is None else emb[rest], scores[rest],
        threshold=threshold, keep=cfg.dedupe.keep, method=cfg.dedupe.method,
        exact_keys=None if keys is None else [keys[r] for r in rest], on_searched=searched,
    )
    duplicate_of[rest] = within
    found = np.flatnonzero(duplicate_of != None)  # noqa: E711
    return pa.table({"sample_id": [ids[r] for r in found], "duplicate_of": [duplicate_of[r] for r in found]}, schema=EMPTY)


def save_kept_index(con, run: RunDir) -> None:
    """Write RUN/dedupe_index/ from the kept samples' embeddings (local runs; needs CLIP)."""
    if storage.is_remote(run.root):
        return  # the index writer takes local paths; bucket runs can be matched by run dir later
    table = con.execute("""
        SELECT m.sample_id, s.clip_image_embedding AS emb FROM manifest_final m JOIN scored s USING (sample_id)
        WHERE m.status = 'kept' ORDER BY m.sample_id
    """).arrow().read_all()
    emb = _embeddings(table.column("emb")) if table.num_rows else None
    if emb is None:
        return
    storage.remove_tree(storage.join(run.root, "dedupe_index"))
    dedupe.save_index(Path(run.root) / "dedupe_index", emb, table.column("sample_id").to_pylist())
