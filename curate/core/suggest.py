"""Close matches for a name the user mistyped: a config key, an input column, a model name.

Python's own ``difflib.get_close_matches`` (Ratcliff/Obershelp similarity), with a name that
differs only in case first: ``url`` for ``URL`` is the likeliest mistake in a column name.
"""

from __future__ import annotations

import difflib
from typing import Iterable


def close_matches(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` of ``candidates`` close to ``name``, the closest first; a candidate equal
    to it but for case comes before any other."""
    pool = list(dict.fromkeys(str(c) for c in candidates))
    same_case = [c for c in pool if c.lower() == name.lower() and c != name]
    lowered = {c.lower(): c for c in pool}
    near = [lowered[m] for m in difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)]
    return list(dict.fromkeys(same_case + [c for c in near if c != name]))[:n]


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``" (did you mean 'URL'?)"`` or ``""`` when nothing is close: to append to an error line."""
    found = close_matches(name, candidates)
    if not found:
        return ""
    return " (did you mean " + " or ".join(repr(f) for f in found) + "?)"
