"""Deduplication: exact (same key) and near (CLIP-embedding cosine >= threshold) with FAISS.

Typical use (docs/dedupe.md)::

    from curate.dedupe import dedupe
    duplicate_of = dedupe(sample_ids, emb, clip_scores, threshold=0.95, keep="clip_score",
                          exact_keys=sha256s)

Building blocks: :func:`exact_groups`, :func:`near_duplicate_pairs`, :func:`duplicate_groups`,
:func:`choose_survivors`; across runs: :func:`match_against`, :func:`save_index`,
:func:`load_index`.
"""

from curate.dedupe._faiss import Searched, gpu_available, no_report
from curate.dedupe.clustered import ClusterStats, clustered_pairs, default_n_clusters
from curate.dedupe.combined import Search, dedupe, find_duplicates
from curate.dedupe.exact import exact_groups
from curate.dedupe.index import EmbeddingIndex, load_index, match_against, save_index
from curate.dedupe.near import choose_method, ivf_nlist, ivf_nprobe, near_duplicate_pairs
from curate.dedupe.survivors import KEEP_MODES, choose_survivors, duplicate_groups
from curate.dedupe.threshold import DEFAULT_THRESHOLD

__all__ = [
    "DEFAULT_THRESHOLD",
    "KEEP_MODES",
    "ClusterStats",
    "EmbeddingIndex",
    "Search",
    "Searched",
    "choose_method",
    "choose_survivors",
    "clustered_pairs",
    "dedupe",
    "default_n_clusters",
    "duplicate_groups",
    "exact_groups",
    "find_duplicates",
    "gpu_available",
    "ivf_nlist",
    "ivf_nprobe",
    "load_index",
    "match_against",
    "near_duplicate_pairs",
    "no_report",
    "save_index",
]
