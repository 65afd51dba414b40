"""Nucleus sampling with a random stream per generated sequence, for batched ``generate()``.

``transformers``' sampling draws every token of a batch from the one global torch generator,
so a caption depends on which other images shared its batch, how many actors there were and
in which order batches ran: the same command gives other captions, and a resumed run others
than the uninterrupted one. ``generate()`` has no per-row generator, so this processor does
the sampling itself: each sequence has its own ``torch.Generator`` seeded from its image's
sample_id and its index among the image's K captions; per step it keeps the nucleus (the
smallest set of most likely tokens whose probability reaches ``top_p``, as Holtzman et al.
2020 and transformers' ``TopPLogitsWarper``), draws one uniform number from the sequence's
generator and takes the token where the nucleus' cumulative probability passes it. It returns
logits that put all probability on that token, so ``generate(do_sample=True)``'s own draw
can only pick it. Each sequence draws once per step, so its tokens do not depend on the rest
of the batch (but for the last float bits of the logits, which can move a draw that lands
within ~1e-7 of a boundary).
"""

from __future__ import annotations

import hashlib

import torch
from transformers import LogitsProcessor


def sequence_seed(seed: int, sample_id: str, index: int) -> int:
    """A 63-bit seed for caption ``index`` of sample ``sample_id`` under ``caption.seed``."""
    digest = hashlib.sha256(f"{seed}\0{sample_id}\0{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class SeededNucleusSampler(LogitsProcessor):
    """Pass as ``logits_processor`` to ``generate(do_sample=True, top_k=0, top_p=1.0,
    num_return_sequences=K)``; ``seeds``: one per generated row (image-major: the K captions
    of image 0, then of image 1, ...), ``top_p`` in (0, 1]."""

    def __init__(self, seeds: list[int], top_p: float, device: str | torch.device = "cpu"):
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.top_p = top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """``scores``: (rows, vocab) logits of this step -> logits that allow one token per row."""
        if scores.shape[0] != len(self.generators):
            raise ValueError(f"{scores.shape[0]} rows to sample but {len(self.generators)} seeds")
        probs = torch.softmax(scores.float(), dim=-1)
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        nucleus = torch.where(mass_before < self.top_p, sorted_probs, torch.zeros_like(sorted_probs))
        cumulative = nucleus.cumsum(dim=-1)
        draws = torch.stack([torch.rand((), generator=g, device=g.device) for g in self.generators])
        target = (draws.to(cumulative.device) * cumulative[:, -1]).unsqueeze(-1)
        position = torch.searchsorted(cumulative, target, right=True).clamp(max=scores.shape[-1] - 1)
        token = order.gather(-1, position)
        chosen = torch.full_like(scores, float("-inf"))
        return chosen.scatter_(-1, token, 0.0)
