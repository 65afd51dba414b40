"""One call for a run: exact groups + near-duplicate pairs -> groups -> ``duplicate_of`` per row."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from curate.dedupe import _faiss as fx
from curate.dedupe.exact import exact_groups
from curate.dedupe.near import Method, near_duplicate_pairs
from curate.dedupe.survivors import Keep, check_ids, choose_survivors, duplicate_groups, id_order
from curate.dedupe.threshold import DEFAULT_THRESHOLD

# A near-duplicate search of one kind: given row numbers (one per exact group), the pairs
# (i, j) among them, in the numbering of that subset.
Search = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def dedupe(
    sample_ids: Sequence[str],
    emb: np.ndarray | None,
    scores: np.ndarray | None,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    keep: Keep = "clip_score",
    exact_keys: Sequence[str | None] | None = None,
    method: Method = "auto",
    on_searched: fx.Searched = fx.no_report,
    **near_options,
) -> np.ndarray:
    """``duplicate_of`` per row (None = kept) over exact-key and embedding edges: see
    :func:`find_duplicates`, of which this is the embedding-only form."""
    duplicate_of, _ = find_duplicates(sample_ids, scores, keep=keep, exact_keys=exact_keys, emb=emb,
                                      threshold=threshold, method=method, on_searched=on_searched, **near_options)
    return duplicate_of


def find_duplicates(
    sample_ids: Sequence[str],
    scores: np.ndarray | None,
    *,
    keep: Keep = "clip_score",
    exact_keys: Sequence[str | None] | None = None,
    searches: Sequence[tuple[str, Search]] = (),
    emb: np.ndarray | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    method: Method = "auto",
    on_searched: fx.Searched = fx.no_report,
    **near_options,
) -> tuple[np.ndarray, np.ndarray]:
    """(``duplicate_of``, ``duplicate_kind``) per row; None for the rows kept.

    A group is a connected component of edges of every kind: "same exact key", each of
    ``searches`` (``(kind, search)``, e.g. pHash within a Hamming distance) and, with
    ``emb`` (float32 (N, d), L2-normalised), "cosine >= threshold" (kind ``embedding``). One
    survivor per group (:func:`curate.dedupe.choose_survivors`). A duplicate's kind is
    ``exact`` when it shares its key with another row, else the first kind (searches in
    order, then ``embedding``) that links it to its group.

    Independent of input row order: rows are processed in sample_id order and the result is
    mapped back. Searches run on one representative per exact group (its smallest
    sample_id): identical bytes/pixels give identical hashes and embeddings, and a logo
    repeated 10,000 times must not produce 50 million pairs. ``near_options`` go to
    :func:`curate.dedupe.near_duplicate_pairs`. ``on_searched(rows)`` follows the last
    search's progress (the calls add up to N rows).
    """
    ids = check_ids(sample_ids)
    n = len(ids)
    order = id_order(ids)  # canonical row order: sorted sample_ids
    if exact_keys is not None:
        if len(exact_keys) != n:
            raise ValueError(f"exact_keys: expected {n} keys, got {len(exact_keys)}")
        exact = exact_groups([exact_keys[r] for r in order])
    else:
        exact = np.arange(n, dtype=np.int64)
    copies = np.flatnonzero(exact != np.arange(n))
    edges = [("exact", copies, exact[copies])]
    reps = np.flatnonzero(exact == np.arange(n))  # first row of each exact group, and nulls
    kinds = [(kind, search) for kind, search in searches]
    if emb is not None:
        emb = fx.check_embeddings(emb)
        if len(emb) != n:
            raise ValueError(f"emb: expected {n} rows, got {len(emb)}")
        emb_sorted = emb[order][reps]

        def embedding(subset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            i, j, _ = near_duplicate_pairs(emb_sorted, threshold, method=method, on_searched=on_searched, **near_options)
            return i, j

        kinds.append(("embedding", embedding))
    if not kinds:
        on_searched(n)  # exact dedupe only: every row is settled by its key
    else:
        on_searched(n - len(reps))  # exact copies are settled: they go with their group's first row
    for k, (kind, search) in enumerate(kinds):
        i, j = search(order[reps])
        edges.append((kind, reps[np.asarray(i, np.int64)], reps[np.asarray(j, np.int64)]))
        if k == len(kinds) - 1 and kind != "embedding":
            on_searched(len(reps))
    labels = duplicate_groups(n, (np.concatenate([e[1] for e in edges]), np.concatenate([e[2] for e in edges])))
    scores_c = None if scores is None else np.asarray(scores, np.float64)[order]
    dup_c = choose_survivors(ids[order], labels, scores_c, keep)
    kind_c = _kinds(n, dup_c, edges)
    duplicate_of, duplicate_kind = np.empty(n, dtype=object), np.empty(n, dtype=object)
    duplicate_of[order], duplicate_kind[order] = dup_c, kind_c
    return duplicate_of, duplicate_kind


def _kinds(n: int, duplicate_of: np.ndarray, edges: list[tuple[str, np.ndarray, np.ndarray]]) -> np.ndarray:
    """The kind of each duplicate: the first kind of edge (in ``edges`` order) touching it."""
    kind = np.full(n, None, dtype=object)
    for name, i, j in reversed(edges):  # earlier kinds overwrite later ones
        touched = np.unique(np.concatenate([i, j])).astype(np.int64)
        kind[touched] = name
    kind[np.equal(duplicate_of, None)] = None
    return kind
