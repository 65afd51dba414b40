"""Exact duplicates: rows with the same key (sha256 of the bytes, or a hash of decoded pixels)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def is_null(key: object) -> bool:
    """None, NaN and pandas/pyarrow nulls; an empty string is a key like any other."""
    if key is None:
        return True
    if isinstance(key, float):
        return math.isnan(key)
    try:  # pd.NA, pd.NaT and friends, without importing pandas here
        return bool(key != key)
    except (TypeError, ValueError):
        return False


def exact_groups(keys: Sequence[str | None]) -> np.ndarray:
    """Group label per row: rows with equal non-null keys share a label; null keys are singletons.

    The label of a group is its smallest row number, so labels are stable and readable
    (``labels[r] == r`` exactly for the first row of each group and for every null row).
    """
    labels = np.arange(len(keys), dtype=np.int64)
    first: dict[object, int] = {}
    for row, key in enumerate(keys):
        if is_null(key):
            continue
        labels[row] = first.setdefault(key, row)
    return labels
