"""Dedupe stage: the one global stage. It runs over the samples that passed every other
rule and marks all but one of each duplicate group ``duplicate``.

Kinds of duplicate (``duplicate_kind`` in the manifest), found in this order:
- ``exact``: the same bytes (sha256) or the same decoded pixels (``pixel_sha256``);
- any kind an upstream stage contributes as a :class:`DuplicateMatcher` (the pHash stage:
  ``phash``), searched on one image per exact group;
- ``embedding``: CLIP image-embedding cosine >= ``dedupe.threshold`` (needs the CLIP stage),
  within the run and against ``dedupe.against`` (earlier runs or saved indexes, matched
  first: ``duplicate_of:<name>/<sample_id>``).
A group is a connected component of all these edges; its survivor is the copy with the best
``dedupe.keep`` score (curate.dedupe.choose_survivors). Every run saves its kept samples'
embeddings to ``RUN/dedupe_index/`` so later runs can dedupe against it.

Progress (the ``dedupe`` entry of RUN/progress.json): candidates whose search has finished.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa

from curate import dedupe
from curate.core import storage
from curate.core.config import ConfigError
from curate.core.rundir import RunDir
from curate.schemas import reasons as R
from curate.schemas.status import Status
from curate.stages.base import BatchStage, GlobalStage, Rule

# dedupe.keep options every run has; stages add theirs (clip_score, itm, ...). A stage that
# is off gives NULL scores: every copy ties and the smallest sample_id survives.
BUILTIN_KEEP = {
    "resolution": "CAST(original_width AS DOUBLE) * original_height",
    "first": "NULL::DOUBLE",
}


@runtime_checkable
class DuplicateMatcher(Protocol):
    """A batch stage that contributes a kind of near duplicate: ``duplicate_kind`` names it,
    ``match_column()`` is (candidate column, SQL over the decided rows) of its key, and
    ``duplicate_pairs(values)`` returns row pairs (i, j) of ``values`` that are duplicates."""

    duplicate_kind: str

    def matches_duplicates(self) -> bool: ...

    def match_column(self) -> tuple[str, str]: ...

    def duplicate_pairs(self, values: pa.Array) -> tuple[np.ndarray, np.ndarray]: ...


def _embeddings(column: pa.ChunkedArray | pa.Array) -> np.ndarray | None:
    values = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if values.null_count or len(values) == 0:
        return None
    flat = values.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return flat.reshape(len(values), -1)


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


class DedupeStage(GlobalStage):
    """Exact, matcher-contributed (pHash) and CLIP-embedding duplicates among the kept samples;
    one survivor per group by ``dedupe.keep``."""

    key = "dedupe"
    switch = "dedupe.enabled"
    writes = pa.schema([("duplicate_of", pa.string()), ("duplicate_kind", pa.string())])
    manifest = ("duplicate_kind",)
    thresholds = ("dedupe.",)

    def configured(self) -> bool:
        return self.cfg.dedupe.enabled

    def bind(self, upstream: list[BatchStage], every: list) -> None:
        super().bind(upstream, every)
        self.matchers = [s for s in upstream if isinstance(s, DuplicateMatcher) and s.matches_duplicates()]

    @property
    def near(self) -> bool:
        return self.cfg.dedupe.near and self.cfg.clip.model is not None

    def keep_options(self) -> dict[str, str]:
        """dedupe.keep name -> SQL score, over every stage of the list (NULL for one that is off)."""
        options = dict(BUILTIN_KEEP)
        for stage in self.all_stages:
            for name, sql in stage.keep_scores().items():
                options[name] = sql if stage.enabled() else "NULL::DOUBLE"
        return options

    def check(self) -> None:
        d = self.cfg.dedupe
        if d.keep not in self.keep_options():
            raise ConfigError(f"dedupe.keep: {d.keep!r} is not offered by any stage; allowed: "
                              f"{', '.join(sorted(self.keep_options()))}")
        if d.against and not self.cfg.clip.model:
            raise ConfigError("dedupe.against: matching against other runs needs CLIP embeddings; set clip.model")
        for entry in d.against:
            try:
                _reference(entry)
            except (FileNotFoundError, ValueError) as error:
                raise ConfigError(str(error)) from None

    def rules(self) -> list[Rule]:
        return [Rule("duplicate_of IS NOT NULL", f"{R.DUPLICATE_OF.sql()} || ':' || duplicate_of", (R.DUPLICATE_OF,),
                     Status.DUPLICATE)]

    def keep_scores(self) -> dict[str, str]:
        return {}

    def candidates(self) -> dict[str, str]:
        columns = {"exact_key": "coalesce(pixel_sha256, sha256)", "score": self.keep_options()[self.cfg.dedupe.keep]}
        if self.near:
            columns["emb"] = "clip_image_embedding"
        for matcher in self.matchers:
            name, sql = matcher.match_column()
            columns[name] = sql
        return columns

    def find(self, candidates: pa.Table, advance: Callable[[int], None]) -> pa.Table:
        """(sample_id, duplicate_of, duplicate_kind) of every duplicate among ``candidates``."""
        empty = pa.schema([("sample_id", pa.string())] + list(self.writes)).empty_table()
        if candidates.num_rows == 0:
            return empty
        d = self.cfg.dedupe
        ids = candidates.column("sample_id").to_pylist()
        emb = _embeddings(candidates.column("emb")) if self.near else None
        threshold = d.threshold or dedupe.DEFAULT_THRESHOLD
        duplicate_of = np.full(len(ids), None, dtype=object)
        kind = np.full(len(ids), None, dtype=object)

        for entry in d.against:  # earlier runs first: what they kept stays the survivor
            name, index = _reference(entry)
            matched = index.match(emb, threshold)
            for row in np.flatnonzero(matched != None):  # noqa: E711 - object array of ids / None
                if duplicate_of[row] is None:
                    duplicate_of[row], kind[row] = f"{name}/{matched[row]}", "embedding"

        rest = np.flatnonzero(duplicate_of == None)  # noqa: E711
        advance(len(ids) - len(rest))  # matched to a reference: no search within the run
        searches = [(m.duplicate_kind, _subset(m.duplicate_pairs, candidates.column(m.match_column()[0]), rest))
                    for m in self.matchers]
        scores = candidates.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
        keys = candidates.column("exact_key").to_pylist() if d.exact else None
        within, within_kind = dedupe.find_duplicates(
            [ids[r] for r in rest], scores[rest], keep="first" if d.keep == "first" else "score",
            exact_keys=None if keys is None else [keys[r] for r in rest],
            searches=searches, emb=None if emb is None else emb[rest], threshold=threshold, method=d.method,
            on_searched=advance,
        )
        duplicate_of[rest], kind[rest] = within, within_kind
        found = np.flatnonzero(duplicate_of != None)  # noqa: E711
        return pa.table({"sample_id": [ids[r] for r in found], "duplicate_of": [duplicate_of[r] for r in found],
                         "duplicate_kind": [kind[r] for r in found]}, schema=empty.schema)

    def finish(self, con, run: RunDir) -> None:
        """Write RUN/dedupe_index/ from the kept samples' embeddings (local runs; needs CLIP)."""
        if not self.cfg.clip.model or storage.is_remote(run.root):
            return  # the index writer takes local paths; bucket runs can be matched by run dir later
        table = con.execute(f"""
            SELECT sample_id, clip_image_embedding AS emb FROM final JOIN joined USING (sample_id)
            WHERE final.status = {Status.KEPT.sql} ORDER BY sample_id
        """).arrow().read_all()
        emb = _embeddings(table.column("emb")) if table.num_rows else None
        if emb is None:
            return
        storage.remove_tree(storage.join(run.root, "dedupe_index"))
        dedupe.save_index(Path(run.root) / "dedupe_index", emb, table.column("sample_id").to_pylist())


def _subset(pairs_of, values: pa.ChunkedArray, rows: np.ndarray):
    """A search over ``values[rows]`` as the dedupe library calls it: on a subset of those
    rows (one per exact group), returning pairs in that subset's numbering."""
    values = values.combine_chunks().take(pa.array(rows, pa.int64()))

    def search(subset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return pairs_of(values.take(pa.array(subset, pa.int64())))

    return search
