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
from curate.dedupe.near import FLAT_MAX_N
from curate.dedupe.threshold import default_threshold
from curate.schemas import reasons as R
from curate.schemas.status import Status
from curate.stages.base import BatchStage, GlobalStage, Rule

# dedupe.keep options every run has; stages add theirs (clip_score, itm, ...). A stage that
# is off gives NULL scores: every copy ties and the smallest sample_id survives.
BUILTIN_KEEP = {
    "resolution": "CAST(original_width AS DOUBLE) * original_height",
    "first": "NULL::DOUBLE",
}
# The keep score is compared at this many decimals, ties going to the smallest sample_id. A
# model's score of the same image and caption differs in the last float bits between
# batchings (up to 1e-6 measured on the demo: float32 matmuls summed in another order), and
# exact copies usually have the same caption: compared in full, which copy survives would
# depend on how the run was batched.
KEEP_DECIMALS = 4


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
        score = f"round(CAST(({self.keep_options()[self.cfg.dedupe.keep]}) AS DOUBLE), {KEEP_DECIMALS})"
        columns = {"exact_key": "coalesce(pixel_sha256, sha256)", "score": score}
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
        threshold = d.threshold or default_threshold(self.cfg.clip.model)
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

    # -- over partitions: nothing that grows with the rows in one process --------------------

    def find_partitioned(self, candidates: dict[str, str], work: str, out: Callable[[str], str],
                         advance: Callable[[int], None]) -> dict[str, int]:
        """``find`` over partitioned candidates (partition name -> its candidates file), as
        Ray tasks: exact groups by a hash shuffle, a near search over one representative per
        exact group, verdicts written per partition to ``out(partition)``. Returns the
        duplicates per partition. A run of up to FLAT_MAX_N representatives (or
        ``dedupe.method: flat|ivf``) searches them in one task, exactly as ``find``; a larger
        one with the clustered method, its cells written as partitions (curate.dedupe.cells)."""
        import ray

        from curate.dedupe import partitioned

        keep = "first" if self.cfg.dedupe.keep == "first" else "score"
        buckets = max(1, len(candidates))
        reps, copies = partitioned.shuffle_exact(candidates, work, keep, buckets)
        advance(copies)  # copies of an exact group are settled with their representative
        total = sum(_rows(uri) for uri in reps)
        method = self.cfg.dedupe.method
        if method in ("flat", "ivf") or (method == "auto" and total <= FLAT_MAX_N) or not self.near:
            resolved = ray.get(ray.remote(num_cpus=partitioned.TASK_CPUS)(_resolve_in_one_task).remote(self, reps))
            advance(total)
        else:
            resolved = self._resolve_distributed(reps, total, work, advance)
        return partitioned.write_verdicts(list(candidates), work, resolved, out)

    def _resolve_distributed(self, reps: list[str], total: int, work: str, advance) -> pa.Table:
        """Representatives' duplicates through the distributed clustered search: references
        first (a task per file), then pHash-style matchers (one task over their narrow
        columns) and the CLIP cells; components and survivors on the driver, from the pairs."""
        import ray

        from curate.dedupe import cells

        d = self.cfg.dedupe
        threshold = d.threshold or default_threshold(self.cfg.clip.model)
        match = ray.remote(num_cpus=cells.TASK_CPUS)(_match_references)
        outs = [storage.join(work, "search_in", uri.rsplit("/", 1)[-1]) for uri in reps]
        referenced = pa.concat_tables(ray.get([match.remote(self, uri, o, threshold) for uri, o in zip(reps, outs)]))
        advance(referenced.num_rows)
        edges = [(m.duplicate_kind, ray.get(ray.remote(num_cpus=cells.TASK_CPUS)(_matcher_pairs).remote(m, outs)))
                 for m in self.matchers]
        groups = max(2, 4 * int(ray.cluster_resources().get("CPU", 1)))
        edges.append(("embedding", cells.clustered_pairs(outs, total - referenced.num_rows, threshold, work, groups,
                                                         advance)))
        return pa.concat_tables([referenced, _components(edges, "first" if d.keep == "first" else "score")])

    def partition_done(self, con, plan, work: str, partition: str) -> None:
        """The kept samples' embeddings of the partition, for RUN/dedupe_index/."""
        if not self.cfg.clip.model:
            return
        from curate.core.duck import stream_to_parquet

        stream_to_parquet(con, f"""
            SELECT sample_id, clip_image_embedding AS emb FROM final JOIN joined USING (sample_id)
            WHERE final.status = {Status.KEPT.sql} AND clip_image_embedding IS NOT NULL ORDER BY sample_id
        """, storage.join(work, "index", f"part-{partition}.parquet"))

    def run_done(self, work: str, run: RunDir) -> None:
        """Write RUN/dedupe_index/ from the kept samples' embeddings (local runs; needs CLIP), in
        a Ray task: the one place every kept embedding meets, as an index must."""
        import ray

        if not self.cfg.clip.model or storage.is_remote(run.root):
            return  # the index writer takes local paths; bucket runs can be matched by run dir later
        ray.get(ray.remote(num_cpus=0.5)(_write_index).remote(storage.list_files(storage.join(work, "index"), ".parquet"),
                                                               str(Path(run.root) / "dedupe_index")))

def _subset(pairs_of, values: pa.ChunkedArray, rows: np.ndarray):
    """A search over ``values[rows]`` as the dedupe library calls it: on a subset of those
    rows (one per exact group), returning pairs in that subset's numbering."""
    values = values.combine_chunks().take(pa.array(rows, pa.int64()))

    def search(subset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return pairs_of(values.take(pa.array(subset, pa.int64())))

    return search


RESOLVED = pa.schema([("rep_id", pa.string()), ("survivor", pa.string()), ("kind", pa.string())])


def _rows(uri: str) -> int:
    import pyarrow.parquet as pq

    fs, path = storage.fs_and_path(uri)
    return pq.read_metadata(path, filesystem=fs).num_rows


def _resolve_in_one_task(stage: DedupeStage, reps: list[str]) -> pa.Table:
    """Ray task: every representative at once, through the in-memory ``find``."""
    table = storage.read_parquet(reps) if reps else None
    if table is None or table.num_rows == 0:
        return RESOLVED.empty_table()
    found = stage.find(table.sort_by("sample_id"), lambda rows: None)
    return found.rename_columns(RESOLVED.names).cast(RESOLVED)


def _match_references(stage: DedupeStage, uri: str, out_uri: str, threshold: float) -> pa.Table:
    """Ray task: one file's representatives against ``dedupe.against``; the matched ones are
    resolved (``<run>/<sample_id>``), the rest go to ``out_uri`` for the search within the run."""
    table = storage.read_parquet([uri])
    matched = np.full(table.num_rows, None, dtype=object)
    if stage.cfg.dedupe.against and table.num_rows:
        emb = _embeddings(table.column("emb"))
        for entry in stage.cfg.dedupe.against:  # earlier runs first: what they kept stays the survivor
            name, index = _reference(entry)
            found = index.match(emb, threshold)
            for row in np.flatnonzero((found != None) & (matched == None)):  # noqa: E711
                matched[row] = f"{name}/{found[row]}"
    rest = matched == None  # noqa: E711
    storage.write_parquet(out_uri, table.filter(pa.array(rest)))
    hit = np.flatnonzero(~rest)
    ids = table.column("sample_id").to_pylist()
    return pa.table({"rep_id": [ids[r] for r in hit], "survivor": [matched[r] for r in hit],
                     "kind": ["embedding"] * len(hit)}, schema=RESOLVED)


def _matcher_pairs(matcher, files: list[str]) -> pa.Table:
    """Ray task: a matcher's pairs among the representatives of ``files`` (its key column is
    narrow: 8 bytes a row for pHash), as (a, b, score_a, score_b)."""
    from curate.dedupe.cells import PAIRS

    name = matcher.match_column()[0]
    table = storage.read_parquet(files, columns=["sample_id", "score", name]).sort_by("sample_id")
    i, j = matcher.duplicate_pairs(table.column(name).combine_chunks())
    ids, scores = table.column("sample_id").to_pylist(), table.column("score").to_numpy(zero_copy_only=False)
    return pa.table({"a": [ids[x] for x in i], "b": [ids[x] for x in j], "score_a": scores[i],
                     "score_b": scores[j]}, schema=PAIRS)


def _components(edges: list[tuple[str, pa.Table]], keep: str) -> pa.Table:
    """Duplicate groups of the representatives joined by ``edges`` ((kind, pairs) in order of
    precedence), their survivors (curate.dedupe.choose_survivors) and each duplicate's kind:
    the first kind of edge that touches it."""
    ids = sorted({x for _, pairs in edges for col in ("a", "b") for x in pairs.column(col).to_pylist()})
    if not ids:
        return RESOLVED.empty_table()
    where = {x: n for n, x in enumerate(ids)}
    scores = np.full(len(ids), np.nan)
    i_all, j_all, kind = [], [], np.full(len(ids), None, dtype=object)
    for name, pairs in reversed(edges):  # earlier kinds overwrite later ones
        i = np.array([where[x] for x in pairs.column("a").to_pylist()], np.int64)
        j = np.array([where[x] for x in pairs.column("b").to_pylist()], np.int64)
        scores[i], scores[j] = pairs.column("score_a").to_numpy(zero_copy_only=False), pairs.column(
            "score_b").to_numpy(zero_copy_only=False)
        kind[np.concatenate([i, j])] = name
        i_all.append(i)
        j_all.append(j)
    labels = dedupe.duplicate_groups(len(ids), (np.concatenate(i_all), np.concatenate(j_all)))
    survivor = dedupe.choose_survivors(ids, labels, None if keep == "first" else scores, keep)
    dup = np.flatnonzero(survivor != None)  # noqa: E711
    return pa.table({"rep_id": [ids[r] for r in dup], "survivor": [survivor[r] for r in dup],
                     "kind": [kind[r] for r in dup]}, schema=RESOLVED)


def _write_index(files: list[str], path: str) -> None:
    """Ray task: the kept samples' embeddings as an index directory (curate.dedupe.save_index)."""
    table = storage.read_parquet(files) if files else None
    storage.remove_tree(path)
    if table is None or table.num_rows == 0:
        return
    dedupe.save_index(Path(path), _embeddings(table.column("emb")), table.column("sample_id").to_pylist())
