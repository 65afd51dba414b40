"""One call for a run: exact groups + near-duplicate pairs -> groups -> ``duplicate_of`` per row."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from curate.dedupe import _faiss as fx
from curate.dedupe.exact import exact_groups
from curate.dedupe.near import Method, near_duplicate_pairs
from curate.dedupe.survivors import Keep, check_ids, choose_survivors, duplicate_groups, id_order
from curate.dedupe.threshold import DEFAULT_THRESHOLD


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
    """``duplicate_of`` per row (None = kept) over exact-key and near-duplicate edges.

    A group is a connected component of "same exact key" and "cosine >= threshold" edges, so
    A~B (same bytes) and B~C (near) put A, B, C in one group with one survivor
    (:func:`curate.dedupe.choose_survivors`). ``emb=None`` does exact dedupe only.

    Independent of input row order: rows are processed in sample_id order, and the result is
    mapped back. Near search runs on one representative per exact group (its smallest
    sample_id), since identical bytes/pixels give the same embedding; this keeps a logo
    repeated 10,000 times from producing 50 million pairs. ``near_options`` go to
    :func:`curate.dedupe.near_duplicate_pairs` (e.g. ``use_ray``, ``n_partitions``).
    ``on_searched(rows)`` follows progress: the calls add up to N rows.
    """
    ids = check_ids(sample_ids)
    n = len(ids)
    order = id_order(ids)  # canonical row order: sorted sample_ids
    ids_c = ids[order]

    if exact_keys is not None:
        if len(exact_keys) != n:
            raise ValueError(f"exact_keys: expected {n} keys, got {len(exact_keys)}")
        exact = exact_groups([exact_keys[r] for r in order])
    else:
        exact = np.arange(n, dtype=np.int64)
    edge_i, edge_j = [np.flatnonzero(exact != np.arange(n))], []
    edge_j.append(exact[edge_i[0]])

    if emb is not None:
        emb = fx.check_embeddings(emb)
        if len(emb) != n:
            raise ValueError(f"emb: expected {n} rows, got {len(emb)}")
        reps = np.flatnonzero(exact == np.arange(n))  # first row of each exact group, and nulls
        on_searched(n - len(reps))  # exact copies are settled: they go with their group's first row
        i, j, _ = near_duplicate_pairs(emb[order][reps], threshold, method=method, on_searched=on_searched,
                                       **near_options)
        edge_i.append(reps[i])
        edge_j.append(reps[j])
    else:
        on_searched(n)  # exact dedupe only: every row is settled by its key
    labels = duplicate_groups(n, (np.concatenate(edge_i), np.concatenate(edge_j)))
    scores_c = None if scores is None else np.asarray(scores, np.float64)[order]
    dup_c = choose_survivors(ids_c, labels, scores_c, keep)
    out = np.empty(n, dtype=object)
    out[order] = dup_c
    return out
