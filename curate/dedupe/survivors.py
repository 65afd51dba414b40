"""Groups and survivors: which row of each duplicate group is kept, and what the others point to.

The survivor rule depends only on (sample_id, score) of the members, never on row order or on
how the pairs were found, so a run gives the same ``duplicate_of`` whatever the input order,
partitioning or number of workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

Keep = Literal["score", "clip_score", "itm", "resolution", "first"]
# "first" ignores scores; every other mode keeps the highest score it is given (the name
# says which score the caller passed).
KEEP_MODES = ("score", "clip_score", "itm", "resolution", "first")


def duplicate_groups(n: int, pairs) -> np.ndarray:
    """Connected components over ``pairs`` -> label per row (the component's smallest row).

    ``pairs`` is ``(i, j)`` or ``(i, j, sim)`` as returned by
    :func:`curate.dedupe.near_duplicate_pairs` (extra items are ignored), or an (m, 2) array.
    Rows in no pair are singletons.
    """
    i, j = _pair_arrays(pairs)
    if len(i) and (min(i.min(), j.min()) < 0 or max(i.max(), j.max()) >= n):
        raise ValueError(f"pair row numbers must be in [0, {n})")
    graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    # Canonical labels: smallest row of each component (scipy's numbering is arbitrary).
    smallest = np.full(comp.max() + 1 if n else 0, n, np.int64)
    np.minimum.at(smallest, comp, np.arange(n, dtype=np.int64))
    return smallest[comp]


def _pair_arrays(pairs) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(pairs, np.ndarray) and pairs.ndim == 2:
        return pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
    i, j = pairs[0], pairs[1]
    return np.asarray(i, np.int64).ravel(), np.asarray(j, np.int64).ravel()


def check_ids(sample_ids: Sequence[str]) -> np.ndarray:
    ids = np.asarray(list(sample_ids), dtype=object)
    if any(not isinstance(x, str) for x in ids):
        raise TypeError("sample_ids must all be str")
    if len(set(ids.tolist())) != len(ids):
        raise ValueError("sample_ids must be unique")
    return ids


def id_order(ids: np.ndarray) -> np.ndarray:
    """Row order that sorts sample_ids (code-point order, like SQL ORDER BY on UTF-8 text)."""
    return np.argsort(ids.astype(str), kind="stable")


def choose_survivors(
    sample_ids: Sequence[str],
    labels: np.ndarray,
    scores: np.ndarray | None,
    keep: Keep,
) -> np.ndarray:
    """``duplicate_of`` per row: None for survivors, else the survivor's sample_id.

    One survivor per label group: the highest score (``keep`` names the score the caller
    passes: "clip_score", "itm" image-text matching, or "resolution", e.g. width * height),
    ties broken by the smallest sample_id; NaN scores rank below every number. ``keep="first"``
    ignores scores and keeps the smallest sample_id.
    """
    if keep not in KEEP_MODES:
        raise ValueError(f"keep must be one of {', '.join(KEEP_MODES)}, got {keep!r}")
    ids = check_ids(sample_ids)
    labels = np.asarray(labels, np.int64)
    n = len(ids)
    if labels.shape != (n,):
        raise ValueError(f"labels: expected shape ({n},), got {labels.shape}")
    id_rank = np.empty(n, np.int64)
    id_rank[id_order(ids)] = np.arange(n)

    if keep == "first":
        score_keys: list[np.ndarray] = []
    else:
        if scores is None:
            raise ValueError(f"keep={keep!r} needs scores (one per row); use keep='first' without them")
        s = np.asarray(scores, np.float64)
        if s.shape != (n,):
            raise ValueError(f"scores: expected shape ({n},), got {s.shape}")
        nan = np.isnan(s)
        score_keys = [-np.where(nan, 0.0, s), nan]  # NaN last, then higher score first

    # np.lexsort: last key is primary -> by label, then NaN flag, then -score, then sample_id.
    order = np.lexsort([id_rank, *score_keys, labels])
    first_of_group = np.ones(n, bool)
    first_of_group[1:] = labels[order][1:] != labels[order][:-1]
    survivor_row = np.empty(n, np.int64)
    group_start = np.maximum.accumulate(np.where(first_of_group, np.arange(n), 0))
    survivor_row[order] = order[group_start]

    out = np.full(n, None, dtype=object)
    dup = survivor_row != np.arange(n)
    out[dup] = ids[survivor_row[dup]]
    return out
