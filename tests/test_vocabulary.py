"""The manifest's vocabulary: every reason code curate can emit is documented in
docs/manifest.md, every documented one is emitted somewhere in the code, and no SQL spells a
status as a string literal outside curate.schemas."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from curate.schemas import reasons as R
from curate.schemas.status import Status

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "curate"


def _tables(markdown: str) -> list[list[list[str]]]:
    """Markdown tables as rows of cells (header first, the |---| line dropped)."""
    tables, current = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def documented_codes() -> set[str]:
    """Codes in the reason column of every table of docs/manifest.md that has one."""
    codes = set()
    for table in _tables((ROOT / "docs" / "manifest.md").read_text()):
        columns = [i for i, name in enumerate(table[0]) if "reason" in name.lower()]
        for row in table[1:]:
            for i in columns:
                for token in re.findall(r"`([^`]+)`", row[i]):
                    codes.add(token.split(":")[0].strip())
    return codes


def test_every_code_is_documented_and_every_documented_code_exists():
    registered = {code.name for code in R.CODES}
    documented = documented_codes()
    assert registered - documented == set(), "codes curate emits but docs/manifest.md does not list"
    assert documented - registered == set(), "codes docs/manifest.md lists but curate.schemas.reasons does not know"


def _sources() -> str:
    return "\n".join(p.read_text() for p in PACKAGE.rglob("*.py") if p != PACKAGE / "schemas" / "reasons.py")


@pytest.mark.parametrize("code", R.CODES, ids=lambda c: c.name)
def test_every_code_is_emitted_by_some_code(code):
    """Named by its constant (``R.CLIP_SCORE_BELOW``) or spelled in a reason() call."""
    constant = next(name for name, value in vars(R).items() if value is code)
    literal = code.name.split("<")[0]
    source = _sources()
    assert re.search(rf"\b{constant}\b", source) or f'"{literal}' in source, f"nothing emits {code.name}"


def test_reason_refuses_codes_it_does_not_know():
    assert R.reason("http_404") == "http_404" and R.reason("clip_score_below", 0.28) == "clip_score_below:0.28"
    assert R.reason("timeout", "max fetch: seconds") == "timeout:max_fetch_seconds"
    with pytest.raises(ValueError, match="not a reason code"):
        R.reason("made_up_code")
    with pytest.raises(ValueError, match="not a reason code"):
        R.reason("http_abc")


def test_rules_of_every_stage_name_registered_codes():
    from curate.flow.plan import make_plan
    from stage_helpers import config

    cfg = config("clip.model=curate:tiny-clip", "clip.min_score=0.2", "itm.model=curate:tiny-blip-itm",
                 "itm.min_prob=0.5", "caption.model=curate:tiny-blip-captioner")
    plan = make_plan(cfg)
    rules = plan.rules("image") + plan.rules("caption") + plan.rules("global")
    assert {c.name for r in rules for c in r.codes} <= {c.name for c in R.CODES}
    assert {r.status for r in rules} <= set(Status)


def test_no_sql_spells_a_status_literal_outside_schemas():
    # a status compared in SQL: = 'kept', <> 'kept', IN ('kept', ...)
    literal = re.compile(r"(=|<>|\bIN\s*\(|,)\s*'(" + "|".join(s.value for s in Status) + r")'")
    offenders = [f"{p.relative_to(ROOT)}:{n}" for p in PACKAGE.rglob("*.py") if "schemas" not in p.parts
                 for n, line in enumerate(p.read_text().splitlines(), 1) if literal.search(line)]
    assert offenders == []
