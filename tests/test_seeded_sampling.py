"""Per-caption seeded nucleus sampling (curate.models.seeded_sampling): the nucleus and the
distribution of transformers' own top-p sampling, with a stream per generated sequence."""

from __future__ import annotations

import numpy as np
import torch
from transformers import TopPLogitsWarper

from curate.models.seeded_sampling import SeededNucleusSampler, sequence_seed


def _sample(logits: torch.Tensor, seeds: list[int], top_p: float) -> list[int]:
    out = SeededNucleusSampler(seeds, top_p)(torch.zeros((len(seeds), 1), dtype=torch.long), logits)
    assert torch.isfinite(out).sum(dim=-1).tolist() == [1] * len(seeds)  # one token allowed per row
    return out.argmax(dim=-1).tolist()


def test_draws_follow_the_nucleus_distribution_of_transformers_top_p():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 50, generator=generator) * 2
    warped = TopPLogitsWarper(top_p=0.9)(torch.zeros((1, 1), dtype=torch.long), logits.clone())
    nucleus = torch.softmax(warped, dim=-1)[0].numpy()
    n = 20_000
    tokens = _sample(logits.repeat(n, 1), [sequence_seed(0, f"s{i}", 0) for i in range(n)], 0.9)
    counts = np.bincount(tokens, minlength=50) / n
    assert set(np.flatnonzero(counts)) <= set(np.flatnonzero(nucleus))  # never outside the nucleus
    np.testing.assert_allclose(counts, nucleus, atol=0.015)  # ~4 standard errors at n = 20,000


def test_a_row_draws_the_same_tokens_whatever_else_is_in_the_batch():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 30, generator=generator)
    seeds = [sequence_seed(3, f"sample-{i}", i % 2) for i in range(6)]
    together = _sample(logits, seeds, 0.9)
    alone = [_sample(logits[i:i + 1], [seeds[i]], 0.9)[0] for i in range(6)]
    reordered = _sample(logits[[5, 2, 0]], [seeds[5], seeds[2], seeds[0]], 0.9)
    assert together == alone and reordered == [together[5], together[2], together[0]]


def test_seeds_differ_per_sample_caption_and_run_seed():
    seeds = {sequence_seed(s, sid, k) for s in (0, 1) for sid in ("a", "b") for k in (0, 1)}
    assert len(seeds) == 8 and all(0 <= x < 2**63 for x in seeds)
