"""Dedupe core (curate.dedupe): exact groups, FAISS near pairs vs brute force, survivors,
order and worker-count independence, cross-run matching and the index file set."""

from __future__ import annotations

import json
import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # before ray is imported anywhere

import numpy as np
import pytest

import faiss

from curate.dedupe import (
    DEFAULT_THRESHOLD,
    EmbeddingIndex,
    choose_method,
    choose_survivors,
    clustered_pairs,
    dedupe,
    duplicate_groups,
    exact_groups,
    load_index,
    match_against,
    near_duplicate_pairs,
    save_index,
)
from curate.dedupe import _faiss as fx

THR = 0.95


# --- data -----------------------------------------------------------------------------------


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def at_cosine(src: np.ndarray, cos: np.ndarray, rng) -> np.ndarray:
    """Rows with exactly cosine ``cos`` to the unit rows ``src`` (before float32 rounding)."""
    u = rng.standard_normal(src.shape)
    u -= (u * src).sum(1, keepdims=True) * src
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return unit(cos[:, None] * src + np.sqrt(1 - cos[:, None] ** 2) * u)


def planted(n_base=1500, d=64, seed=0, n_dup=120, n_miss=60, n_copy=20):
    """Gaussian blobs + near-duplicates (cos >= THR + 0.003), near-misses (cos <= THR - 0.003)
    and exact copies, shuffled."""
    rng = np.random.default_rng(seed)
    centers = unit(rng.standard_normal((12, d)))
    base = unit(centers[rng.integers(0, 12, n_base)] + 0.9 * rng.standard_normal((n_base, d)) / np.sqrt(d))
    dups = at_cosine(base[rng.integers(0, n_base, n_dup)], rng.uniform(THR + 0.003, 0.999, n_dup), rng)
    misses = at_cosine(base[rng.integers(0, n_base, n_miss)], rng.uniform(THR - 0.03, THR - 0.003, n_miss), rng)
    copies = base[rng.integers(0, n_base, n_copy)]
    emb = np.concatenate([base, dups, misses, copies])
    return np.ascontiguousarray(emb[rng.permutation(len(emb))])


def brute_pairs(emb: np.ndarray, threshold: float):
    sims = emb.astype(np.float64) @ emb.T.astype(np.float64)
    i, j = np.nonzero(np.triu(sims >= threshold, k=1))
    return i, j, sims[i, j]


@pytest.fixture(scope="module")
def data():
    return planted()


@pytest.fixture(scope="module")
def ray_local():
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    yield ray
    if started:
        ray.shutdown()


# --- exact ----------------------------------------------------------------------------------


def test_exact_groups_equal_keys_share_first_row_and_nulls_are_singletons():
    keys = ["a", None, "b", "a", float("nan"), "b", "c", None, ""]
    assert exact_groups(keys).tolist() == [0, 1, 2, 0, 4, 2, 6, 7, 8]
    assert exact_groups([]).tolist() == []


# --- near pairs -----------------------------------------------------------------------------


def test_planted_data_has_pairs_and_near_misses(data):
    i, j, sims = brute_pairs(data, THR)
    assert len(i) >= 140  # dups + copies
    all_sims = data.astype(np.float64) @ data.T.astype(np.float64)
    np.fill_diagonal(all_sims, 0)
    assert ((all_sims > THR - 0.03) & (all_sims < THR)).sum() >= 2 * 50  # near-misses exist
    # nothing sits so close to the threshold that float rounding could flip it
    assert np.abs(all_sims - THR).min() > 1e-6


@pytest.mark.parametrize("method", ["flat", "ivf", "clustered"])
def test_near_pairs_equal_brute_force(data, method):
    bi, bj, bs = brute_pairs(data, THR)
    i, j, sims = near_duplicate_pairs(data, THR, method=method, use_ray=False)
    assert i.dtype == np.int64 and j.dtype == np.int64 and sims.dtype == np.float64
    assert np.array_equal(i, bi) and np.array_equal(j, bj)
    np.testing.assert_allclose(sims, bs, rtol=0, atol=1e-12)
    assert (i < j).all()


def test_near_pairs_threshold_is_inclusive_and_one_pair_per_couple():
    rng = np.random.default_rng(3)
    a = unit(rng.standard_normal((1, 32)))
    b = at_cosine(a.astype(np.float64), np.array([0.96]), rng)
    emb = np.concatenate([a, b, a])  # rows 0 and 2 are identical
    exact_cos = float(fx.pair_cosines(emb, emb, np.array([0]), np.array([1]))[0])
    i, j, sims = near_duplicate_pairs(emb, exact_cos, method="flat")
    assert list(zip(i.tolist(), j.tolist())) == [(0, 1), (0, 2), (1, 2)]
    i, j, _ = near_duplicate_pairs(emb, np.nextafter(exact_cos, 2.0), method="flat")
    assert list(zip(i.tolist(), j.tolist())) == [(0, 2)]


def test_flat_block_boundaries_are_covered(monkeypatch, data):
    from curate.dedupe import near

    monkeypatch.setattr(near, "FLAT_BLOCK", 97)  # many blocks, pairs across block edges
    bi, bj, _ = brute_pairs(data, THR)
    i, j, _ = near_duplicate_pairs(data, THR, method="flat")
    assert np.array_equal(i, bi) and np.array_equal(j, bj)


def test_clustered_with_unbounded_halo_is_exact_on_hard_data():
    # Uniform random data near a low threshold: many pairs cross cell boundaries.
    rng = np.random.default_rng(7)
    emb = unit(rng.standard_normal((1200, 8)))
    bi, bj, _ = brute_pairs(emb, 0.8)
    assert len(bi) > 500
    i, j, _, stats = clustered_pairs(emb, 0.8, n_clusters=20, max_assign=20, n_candidates=20, use_ray=False)
    assert np.array_equal(i, bi) and np.array_equal(j, bj)
    assert stats.n_capped == 0 and stats.mean_assign > 1  # boundary rows joined other cells
    # Plain SemDeDup (own cell only) loses boundary pairs on the same data.
    i1, _, _, stats1 = clustered_pairs(emb, 0.8, n_clusters=20, max_assign=1, use_ray=False)
    assert len(i1) < len(bi) and stats1.n_capped > 0


def test_knn_then_range_fallback_matches_range_search():
    # The GPU path (kNN with k, CPU range_search for rows whose k-th hit still qualifies),
    # exercised with a CPU index standing in for the GPU one.
    rng = np.random.default_rng(1)
    base = unit(rng.standard_normal((50, 32)))
    emb = np.concatenate([base, np.repeat(base[:1], 6, axis=0)])  # row 0 has 6 copies
    index = faiss.IndexFlatIP(32)
    index.add(emb)
    want = fx.range_search(index, emb, 0.99)
    got = fx.range_search(index, emb, 0.99, gpu_index=index, knn_k=3)
    as_set = lambda r: set(zip(r[0].tolist(), r[1].tolist()))  # noqa: E731
    assert as_set(got) == as_set(want)
    assert len(as_set(want)) == 56 + 7 * 6  # self-hits + ordered pairs of the 7 identical rows


def test_rejects_unnormalised_embeddings():
    with pytest.raises(ValueError, match="L2-normalised"):
        near_duplicate_pairs(np.ones((3, 4), np.float32), THR)


def test_auto_method_by_size():
    from curate.dedupe.near import FLAT_MAX_N, IVF_MAX_N

    assert choose_method(10) == "flat"
    assert choose_method(FLAT_MAX_N) == "flat"
    assert choose_method(FLAT_MAX_N + 1) == ("ivf" if IVF_MAX_N > FLAT_MAX_N else "clustered")
    assert choose_method(10 * IVF_MAX_N) == "clustered"


# --- groups and survivors -------------------------------------------------------------------


def test_duplicate_groups_connected_components():
    labels = duplicate_groups(7, (np.array([1, 0, 5]), np.array([2, 1, 4]), np.array([0.99, 0.97, 0.96])))
    assert labels.tolist() == [0, 0, 0, 3, 4, 4, 6]
    assert duplicate_groups(3, np.empty((0, 2), np.int64)).tolist() == [0, 1, 2]


@pytest.mark.parametrize("keep", ["clip_score", "itm", "resolution"])
def test_survivor_is_highest_score_ties_to_smallest_id(keep):
    ids = ["s3", "s1", "s2", "t1", "t2"]
    labels = np.array([0, 0, 0, 3, 3])
    scores = np.array([0.9, 0.5, 0.9, 1.0, 2.0])
    if keep == "resolution":
        scores = np.array([640 * 480, 320 * 240, 640 * 480, 100, 200], dtype=float)
    out = choose_survivors(ids, labels, scores, keep)
    assert out.tolist() == ["s2", "s2", None, "t2", None]


def test_survivor_nan_scores_rank_last():
    ids = ["a", "b", "c", "x", "y"]
    labels = np.array([0, 0, 0, 3, 3])
    scores = np.array([np.nan, 0.1, -5.0, np.nan, np.nan])
    out = choose_survivors(ids, labels, scores, "clip_score")
    assert out.tolist() == ["b", None, "b", None, "x"]  # all-NaN group: smallest id


def test_survivor_first_ignores_scores():
    out = choose_survivors(["b", "a", "c"], np.zeros(3, np.int64), np.array([9.0, 1.0, 5.0]), "first")
    assert out.tolist() == ["a", None, "a"]
    out = choose_survivors(["b", "a", "c"], np.zeros(3, np.int64), None, "first")
    assert out.tolist() == ["a", None, "a"]


def test_survivor_argument_errors():
    with pytest.raises(ValueError, match="needs scores"):
        choose_survivors(["a", "b"], np.zeros(2, np.int64), None, "clip_score")
    with pytest.raises(ValueError, match="keep must be"):
        choose_survivors(["a", "b"], np.zeros(2, np.int64), None, "largest")
    with pytest.raises(ValueError, match="unique"):
        choose_survivors(["a", "a"], np.zeros(2, np.int64), None, "first")


# --- dedupe (exact + near) and order independence -------------------------------------------


def test_dedupe_joins_exact_and_near_edges():
    rng = np.random.default_rng(5)
    base = unit(rng.standard_normal((4, 32)))
    near_b = at_cosine(base[1:2].astype(np.float64), np.array([0.97]), rng)[0]
    emb = np.stack([base[0], base[1], near_b, base[2], base[3]])
    ids = ["A", "B", "C", "D", "E"]
    keys = ["k1", None, None, "k1", None]  # A and D: same bytes (different embeddings here)
    scores = np.array([0.1, 0.2, 0.9, 0.5, 0.3])
    out = dedupe(ids, emb, scores, threshold=THR, keep="clip_score", exact_keys=keys)
    assert out.tolist() == ["D", "C", None, None, None]
    only_exact = dedupe(ids, None, scores, keep="clip_score", exact_keys=keys)
    assert only_exact.tolist() == ["D", None, None, None, None]


@pytest.mark.parametrize("method", ["flat", "clustered"])
def test_dedupe_is_independent_of_row_order(data, method):
    n = len(data)
    rng = np.random.default_rng(11)
    ids = np.array([f"{k:06d}" for k in rng.permutation(n)], dtype=object)
    scores = rng.uniform(0.2, 0.4, n)
    scores[rng.integers(0, n, 40)] = np.nan
    scores[:30] = 0.3  # some ties
    keys = np.array([None] * n, dtype=object)
    keys[:50] = [f"h{k % 25}" for k in range(50)]  # 25 exact-duplicate couples

    def mapping(order):
        out = dedupe(ids[order], data[order], scores[order], threshold=THR, keep="clip_score",
                     exact_keys=list(keys[order]), method=method, use_ray=False)
        return dict(zip(ids[order].tolist(), out.tolist()))

    first = mapping(np.arange(n))
    n_dups = sum(v is not None for v in first.values())
    assert n_dups >= 150
    for seed in range(2):
        assert mapping(np.random.default_rng(seed).permutation(n)) == first


def test_clustered_independent_of_partitions_and_ray_tasks(data, ray_local):
    base = clustered_pairs(data, THR, n_clusters=16, use_ray=False, n_partitions=1)
    for parts in (3, 7):
        i, j, sims, stats = clustered_pairs(data, THR, n_clusters=16, use_ray=True, n_partitions=parts)
        assert stats.used_ray and stats.n_partitions == parts
        assert stats.worker_peak_rss_bytes and stats.worker_peak_rss_bytes > 0
        assert np.array_equal(i, base[0]) and np.array_equal(j, base[1]) and np.array_equal(sims, base[2])
    bi, bj, _ = brute_pairs(data, THR)
    assert np.array_equal(base[0], bi) and np.array_equal(base[1], bj)


# --- cross-run and index files --------------------------------------------------------------


def _ref_and_new():
    rng = np.random.default_rng(21)
    ref = unit(rng.standard_normal((300, 32)))
    ref_ids = [f"ref-{k:03d}" for k in range(300)]
    ref[7] = ref[3]  # identical references: the tie goes to the smallest sample_id
    ref_ids[3], ref_ids[7] = "zz-late", "aa-early"
    ref[41] = at_cosine(ref[40:41].astype(np.float64), np.array([0.98]), rng)[0]
    ref_ids[41] = "a-first"  # smaller id than ref-040, but less similar to new row 4
    new = np.concatenate([
        at_cosine(ref[10:11].astype(np.float64), np.array([0.99]), rng),  # -> ref-010
        ref[3:4],  # -> aa-early
        unit(rng.standard_normal((1, 32))),  # -> None
        at_cosine(ref[20:21].astype(np.float64), np.array([0.94]), rng),  # just below: None
        at_cosine(ref[40:41].astype(np.float64), np.array([0.99]), rng),  # -> ref-040
    ])
    return ref, ref_ids, new


def test_match_against_picks_best_reference():
    ref, ref_ids, new = _ref_and_new()
    sims = new.astype(np.float64) @ ref.T.astype(np.float64)
    assert sims[4, 41] >= THR  # row 4 really has two candidates
    out = match_against(new, ref, ref_ids, THR)
    assert out.tolist() == ["ref-010", "aa-early", None, None, "ref-040"]
    # A lower threshold lets row 3 match its source.
    assert match_against(new, ref, ref_ids, 0.93)[3] == "ref-020"


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_save_load_index_round_trip(tmp_path, kind):
    rng = np.random.default_rng(2)
    ref = unit(rng.standard_normal((2000, 32)))
    ids = [f"r{k}" for k in range(2000)]
    new = np.concatenate([ref[[5, 1500]], unit(rng.standard_normal((3, 32)))])
    path = save_index(tmp_path / "idx", ref, ids, kind=kind)
    assert sorted(p.name for p in path.iterdir()) == ["ids.parquet", "index.faiss", "meta.json"]
    meta = json.loads((path / "meta.json").read_text())
    assert meta["kind"] == kind and meta["count"] == 2000 and meta["dim"] == 32
    loaded = load_index(path)
    assert isinstance(loaded, EmbeddingIndex) and len(loaded) == 2000
    assert loaded.ids.tolist() == ids
    out = loaded.match(new, DEFAULT_THRESHOLD)
    assert out.tolist() == ["r5", "r1500", None, None, None]
    assert out.tolist() == EmbeddingIndex.build(ref, ids, kind=kind).match(new).tolist()
    # The three files must agree.
    meta["count"] = 1999
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="count"):
        load_index(path)
