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
    {"download"},  # the downloader: infrastructure below the stages (DESIGN.md)
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


def import_graph(annotations: bool = False) -> dict[str, set[str]]:
    """Module -> the curate modules it imports, at module level or inside functions; the
    annotation-only imports under ``if TYPE_CHECKING:`` only when ``annotations``."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        tree = ast.parse(path.read_text())
        skip = set() if annotations else _type_checking_blocks(tree)
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
    """Not even through annotations: a module whose types need another's is below it (the
    kinds and the Plan they take are in curate.flow.kind; only curate.flow.plan, which
    builds a plan, imports the concrete kinds)."""
    graph = import_graph(annotations=True)
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


def test_the_downloader_is_infrastructure_of_its_own():
    """curate/download/ (fetching, politeness, deadlines) uses only the infrastructure below it,
    and no stage fetches: stages/ holds stages, not the downloader."""
    graph = import_graph()
    downloader = {m for m in graph if _package(m) == "download"}
    assert "curate.download.safe_fetch" in downloader
    above = [(m, t) for m in downloader for t in graph[m] if _package(t) not in {"__root__", "schemas", "core", "download"}]
    assert above == []
    fetching = ("img2dataset", "socket", "ssl", "http.client", "urllib.request")
    outside = []
    for path in (PACKAGE / "stages").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            outside += [(_module_name(path), n) for n in names if n.split(".")[0] in fetching or n in fetching]
    assert outside == []


# Modules outside stages/ that still name a stage's key or a column a stage writes, each with
# why. The test below fails on any other name there, and on an entry no longer needed, so this
# list only shrinks. (core/config.py holds one section per stage by design.)
NAMES_A_STAGE = {
    "curate.dedupe": ({"dedupe"}, "the dedupe library's own name, in its docstring example"),
    "curate.dedupe.combined": ({"clip_score"}, "the library's keep mode, older than the stage's keep_scores"),
    "curate.dedupe.survivors": ({"clip_score", "itm"}, "the library's keep modes, older than the stage's keep_scores"),
    "curate.dedupe.partitioned": ({"duplicate_of", "duplicate_kind"}, "the pair table the dedupe stage reads back"),
    "curate.demo_documents": ({"synthetic_captions"}, "the demo prints what the captioner wrote"),
    "curate.flow.captions": ({"alternate_caption_texts", "clip_score", "itm_prob", "synthetic_captions"},
                             "CapFilt: the judges and the candidate captions (docs/stages.md)"),
    "curate.flow.documents": ({"clip", "clip_score", "itm_prob", "sentence_itm_probs",
                               "sentence_sims", "synthetic_captions"},
                              "placement reads the CLIP and ITM text scores by name (docs/stages.md), "
                              "and interleaved.placement_by's values"),
    "curate.flow.interleave": ({"itm"}, "interleaved.placement_by's value: placement by ITM"),
    "curate.flow.pair_record": ({"clip_score", "clip_tokens", "duplicate_kind", "itm_cosine", "itm_prob", "itm_tokens"},
                                "the shard record's caption scores (docs/formats.md)"),
    "curate.flow.pairs": ({"caption_text", "synthetic_votes"}, "CapFilt's candidates of a pair"),
    "curate.models.blip": ({"itm"}, "the BLIP head's own name in transformers"),
    "curate.pipeline.export": ({"clip", "clip_image_embedding"}, "the clip-retrieval export is of CLIP's embeddings"),
    "curate.report.build": ({"clip", "dedupe"}, "the summary line's dedupe threshold, whose default follows the CLIP model"),
    "curate.eval.selections": ({"clip", "itm"}, "the named selections (the demo's table) and the stages each needs"),
    "curate.report.stats": ({"caption_chars", "caption_words"}, "`curate stats`' alt-text length measures"),
    "curate.schemas.columns": ({"clip_score", "clip_tokens", "itm_cosine", "itm_prob", "itm_tokens"},
                               "the manifest's candidate-caption struct (docs/manifest.md)"),
    "curate.schemas.reasons": ({"caption_junk", "duplicate_of"}, "reason codes named for what they record"),
}


def _stage_names_used(tree: ast.Module, names: set[str], keys: set[str]) -> set[str]:
    """The names among ``names`` a module uses as a string (not in a docstring), and the
    stage keys among ``keys`` it reads as a config section (``cfg.clip``, ``self.cfg.itm``)."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in names and id(node) not in docstrings:
            used.add(node.value)
        elif isinstance(node, ast.Attribute) and node.attr in keys:
            owner = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", None)
            if owner in ("cfg", "config"):
                used.add(node.attr)
    return used


def test_no_module_outside_stages_names_a_stage_or_its_columns():
    """The runner, the report, export, describe and pools read the stages' declarations; a
    module outside stages/ that names a stage's key or column (as a string, or its config
    section) must be one of NAMES_A_STAGE, for the reason given there."""
    from curate.schemas import columns
    from curate.stages.registry import STAGES

    keys = {cls.key for cls in STAGES}
    base = {name for value in vars(columns).values() if isinstance(value, pa.Schema) for name in value.names}
    names = (keys | {name for cls in STAGES for name in cls.writes.names}) - base  # "caption": the input's column too
    found = {}
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        if _package(module) == "stages" or module == "curate.core.config":
            continue
        used = _stage_names_used(ast.parse(path.read_text()), names, keys)
        if used:
            found[module] = used
    unexpected = {m: sorted(used - NAMES_A_STAGE.get(m, (set(), ""))[0]) for m, used in found.items()}
    assert {m: u for m, u in unexpected.items() if u} == {}, "read the stage declarations instead"
    stale = {m: sorted(allowed - found.get(m, set())) for m, (allowed, _) in NAMES_A_STAGE.items()}
    assert {m: s for m, s in stale.items() if s} == {}, "no longer named there: drop it from NAMES_A_STAGE"


def test_the_stage_name_check_sees_a_leak():
    tree = ast.parse('"""clip_score in a docstring is prose."""\nRESOURCE = ("clip", "itm_prob")\nx = cfg.aesthetic.model\n')
    assert _stage_names_used(tree, {"clip", "itm_prob", "clip_score"}, {"clip", "aesthetic"}) == {"clip", "itm_prob", "aesthetic"}


def test_the_checks_above_see_real_imports():
    graph = import_graph()
    assert "curate.stages.base" in graph["curate.stages.clip_score"]
    assert "curate.flow.plan" in graph["curate.pipeline.runner"]
    assert "curate.core.progress" not in graph["curate.flow.decision"]  # an annotation only
    assert "curate.core.progress" in import_graph(annotations=True)["curate.flow.decision"]


# --------------------------------------------------------------------------- the stage contract


from curate.core.config import CurateConfig  # noqa: E402


def _stages():
    from curate.stages.registry import STAGES

    return STAGES


@pytest.mark.parametrize("cls", _stages(), ids=lambda c: c.key)
def test_every_stage_declares_the_contract(cls):
    from curate.stages.base import BatchStage, GlobalStage, Score

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
    for column, score in cls.scores.items():  # a score says what it means (the report reads it)
        assert isinstance(score, Score) and score.label and column in cls.manifest
        assert score.threshold is None or score.threshold in cls.thresholds
        assert score.low is None or score.high is None or score.low < score.high
        assert score.reason is None or any(score.reason in rule.codes for rule in _rules_with_thresholds(cls, score))
    for key in cls.thresholds:  # refilter-able keys are real config keys (or whole sections)
        section, _, name = key.partition(".")
        fields = CurateConfig.model_fields
        assert section in fields and (not name or name in fields[section].annotation.model_fields), key


def _rules_with_thresholds(cls, score):
    """The stage's rules with every threshold it declares set (so each threshold rule exists)."""
    from curate.core.config import validate

    data = {"input": {"path": "in.parquet"}, "output": {"path": "run"}}
    section, _, name = score.threshold.partition(".")
    data.setdefault(section, {})[name] = 0.5
    if cls.switch:
        switch_section, _, switch_name = cls.switch.partition(".")
        data.setdefault(switch_section, {})[switch_name] = "any reference"  # rules() loads no model
    return [rule for rule in cls(validate(data)).rules()]


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
