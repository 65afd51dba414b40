"""The package's structure: packages import only downward, no module imports itself back
(directly or through others), and the stage contract holds for every stage of the list."""

from __future__ import annotations

import ast
from pathlib import Path

import pyarrow as pa
import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "curate"
# Lowest first: a package may import from its own layer and below, never above.
LAYERS = [
    {"__root__", "schemas", "core"},
    {"models", "dedupe", "synth"},
    {"stages"},
    {"flow"},
    {"report"},
    {"pipeline"},
    {"eval"},
    {"demo", "demo_documents", "cli", "api"},
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_blocks(tree: ast.Module) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (annotations only: no import at run time)."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            inside.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return inside


def import_graph() -> dict[str, set[str]]:
    """Module -> the curate modules it imports, at module level or inside functions (not the
    annotation-only imports under ``if TYPE_CHECKING:``)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        tree = ast.parse(path.read_text())
        skip = _type_checking_blocks(tree)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                base = node.module
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in modules else base)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__root__"  # `import curate`: the package itself


def _layer(package: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if package in layer)


def test_packages_import_only_their_own_layer_and_below():
    upward = [(m, t) for m, targets in import_graph().items() for t in targets
              if _layer(_package(t)) > _layer(_package(m))]
    assert upward == []


def test_no_import_cycles_between_modules():
    graph = import_graph()
    cycles, index, low, stack, on_stack = [], {}, {}, [], set()

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    assert cycles == []


def test_the_checks_above_see_real_imports():
    graph = import_graph()
    assert "curate.stages.base" in graph["curate.stages.clip_score"]
    assert "curate.flow.plan" in graph["curate.pipeline.runner"]


# --------------------------------------------------------------------------- the stage contract


from curate.core.config import CurateConfig  # noqa: E402


def _stages():
    from curate.stages.registry import STAGES

    return STAGES


@pytest.mark.parametrize("cls", _stages(), ids=lambda c: c.key)
def test_every_stage_declares_the_contract(cls):
    from curate.stages.base import BatchStage, GlobalStage

    assert isinstance(cls.key, str) and cls.key and cls.__doc__, "a stage says what it does in its docstring"
    assert issubclass(cls, (BatchStage, GlobalStage))
    assert isinstance(cls.writes, pa.Schema)
    assert set(cls.manifest) <= set(cls.writes.names), "manifest columns must be among the writes"
    carried = ("caption_bad_encoding", "alternate_caption_bad_encoding")  # the input's, through the download list
    for name, (original, synthetic, alternate) in cls.caption_columns.items():
        assert original is None or original in cls.writes.names or original in carried
        assert synthetic is None or synthetic in cls.writes.names
        assert alternate is None or alternate in cls.writes.names or alternate in carried
    assert set(cls.text_columns.values()) <= set(cls.writes.names), "a document's per-text scores are among the writes"
    for key in cls.thresholds:  # refilter-able keys are real config keys (or whole sections)
        section, _, name = key.partition(".")
        fields = CurateConfig.model_fields
        assert section in fields and (not name or name in fields[section].annotation.model_fields), key


def test_stage_keys_and_written_columns_are_unique():
    stages = _stages()
    keys = [cls.key for cls in stages]
    assert len(keys) == len(set(keys))
    written = [name for cls in stages for name in cls.writes.names]
    assert len(written) == len(set(written)), "two stages write the same column"


def test_every_stage_in_every_shipped_config_plans_and_checks_its_rules(repo_root):
    """Each config in configs/ (and the demo's) plans, and every rule it generates is SQL
    DuckDB accepts over the columns the plan says exist."""
    import duckdb

    from curate.core.config import load_config
    from curate.flow.decision import case_sql, image_rules
    from curate.flow.document_rules import FACTS
    from curate.flow.plan import make_plan

    configs = sorted((repo_root / "configs").glob("*.yaml")) + sorted((repo_root / "curate/assets").glob("demo*.yaml"))
    assert len(configs) >= 6
    for path in configs:
        paths = ["input.path=in.parquet", "output.path=run"] if path.parent.name == "assets" else []
        cfg = load_config(path, paths, fill_missing={"input.path": "in.parquet", "output.path": "run"})
        plan = make_plan(cfg)
        plan.kind.check(plan)
        columns = plan.scored_schema()
        con = duckdb.connect()
        con.register("scored", columns.empty_table())
        con.register("rows_in", plan.kind.rows_schema.empty_table())
        con.execute("CREATE VIEW joined AS SELECT r.*, s.* EXCLUDE (sample_id, url, caption, caption_bad_encoding, "
                    "status, error_message), true AS _downloaded FROM rows_in r LEFT JOIN scored s USING (sample_id)")
        status, reason = case_sql(image_rules(plan))
        con.execute(f"SELECT {status}, {reason} FROM joined").fetchall()
        # the kind's own rules: a document image's match rules, a document's rules over its facts
        con.register("facts", FACTS.empty_table())
        kind_rules = [r for rules in (*plan.kind.decision_rules(plan).values(), *plan.kind.final_rules(plan).values())
                      for r in rules]
        for scope, table in (("image", "joined"), ("document", "facts")):
            rules = [r for r in kind_rules if r.scope == scope]
            if rules:
                con.execute(f"SELECT {', '.join(case_sql(rules))} FROM {table}").fetchall()
        con.close()
