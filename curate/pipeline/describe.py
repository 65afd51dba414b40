"""``curate describe CONFIG``: the run a config would make, without running it.

Prints the kind, then every enabled stage in run order with what it reads and writes, where
it runs (a light task, or an actor pool and its resources) and its rules, then the decision
in the order it is made (first match wins). Modelled on NeMo Curator's
``Pipeline.describe()``. Nothing is read or written; model references are not resolved.
"""

from __future__ import annotations

import json

from rich.console import Console
from rich.markup import escape

from curate.flow.decision import image_rules
from curate.flow.plan import Plan
from curate.stages.base import BatchStage, Rule, Stage


def describe(plan: Plan) -> dict:
    """The plan as data: ``kind``, ``stages`` (in run order) and ``decision`` (rule order)."""
    return {
        "kind": plan.kind.name,
        "stages": [_stage(s) for s in plan.stages],
        "not_enabled": [s.key for s in plan.every if s not in plan.stages],
        "decision": {
            "image rules": [_rule(r) for r in image_rules(plan)],
            "caption rules (each candidate caption)": [_rule(r) for r in plan.rules("caption")],
            **{title: [_rule(r) for r in rules] for title, rules in plan.kind.decision_rules(plan).items()},
            "global rules": [_rule(r) for r in plan.rules("global")],
            **{title: [_rule(r) for r in rules] for title, rules in plan.kind.final_rules(plan).items()},
        },
        "refilter_keys": list(plan.refilter_keys()),
        "resolved_at_decision": resolved_at_decision(plan),
    }


def resolved_at_decision(plan: Plan) -> list[str]:
    """The thresholds the decision resolves from the run's scores, whose rules are not above:
    each ``auto`` judge (curate.pipeline.calibration) and each keep fraction (quantiles)."""
    from curate.pipeline import calibration, quantiles

    judges = calibration.judges(plan)
    out = []
    for judge in judges:
        if quantiles.config_value(plan.cfg, judge.threshold_key) == calibration.AUTO:
            others = [j.column for j in judges if j is not judge]
            against = f"calibrated against {', '.join(others)}" if others else "no other judge: falls back"
            fallback = "none, score only" if judge.fallback is None else f"{judge.fallback:g}"
            out.append(f"{judge.threshold_key}: auto ({against}; fallback {fallback})")
    out += [f"{k.threshold_key}: the top {k.fraction:g} of the run's {k.column} (keep_fraction)"
            for k in quantiles.wanted(plan)]
    return out


def _stage(stage: Stage) -> dict:
    out = {
        "key": stage.key,
        "type": "global" if not isinstance(stage, BatchStage) else "model" if stage.uses_model else "task",
        "config": stage.config_section,
        "switch": stage.switch,
        "reads": list(stage.reads) + [f"{c} (if written)" for c in stage.optional_reads],
        "writes": {f.name: str(f.type) for f in stage.writes},
        "manifest": list(stage.manifest),
        "thresholds": list(stage.thresholds),
        "rules": [_rule(r) for r in stage.rules()],
    }
    if isinstance(stage, BatchStage) and stage.uses_model:
        c = stage.compute
        auto = "sized at start from the cluster (docs/config.md, Compute)"
        out["resources"] = {key: getattr(c, key) if getattr(c, key) is not None else auto
                            for key in ("actors", "num_cpus", "num_gpus", "threads")}
        out["resources"]["batch_size"] = c.batch_size
    elif isinstance(stage, BatchStage):
        out["resources"] = "light Ray task (0.5 CPU)"
    return out


def _rule(rule: Rule) -> dict:
    return {"when": rule.when, "status": rule.status.value, "reason": rule.reason, "scope": rule.scope}


def print_description(plan: Plan, fmt: str, console: Console) -> None:
    """``fmt``: ``text`` (for people) or ``json``."""
    data = describe(plan)
    console = Console(file=console.file, soft_wrap=True, highlight=False)  # rules stay whole, one per line
    if fmt == "json":
        console.file.write(json.dumps(data, indent=2) + "\n")
        return
    console.print(f"[bold]kind[/bold]: {data['kind']}")
    for i, stage in enumerate(data["stages"], 1):
        on = f", on when {stage['switch']} is set" if stage["switch"] else ""
        console.print(f"\n[bold]{i}. {stage['key']}[/bold] ({stage['type']}, config section {stage['config']}{on})")
        console.print(f"   reads:    {escape(', '.join(stage['reads']) or '-')}")
        console.print(f"   writes:   {escape(', '.join(f'{k}: {v}' for k, v in stage['writes'].items()) or '-')}")
        console.print(f"   manifest: {escape(', '.join(stage['manifest']) or '-')}")
        if stage.get("resources"):
            resources = stage["resources"]
            text = resources if isinstance(resources, str) else ", ".join(f"{k} {v}" for k, v in resources.items())
            console.print(f"   runs as:  {escape(text)}")
        if stage["thresholds"]:
            console.print(f"   refilter: {escape(', '.join(stage['thresholds']))}")
        for rule in stage["rules"]:
            console.print(f"   rule:     {escape(_rule_line(rule))}")
    if data["not_enabled"]:
        console.print(f"\n[dim]not enabled: {', '.join(data['not_enabled'])}[/dim]")
    console.print("\n[bold]decision[/bold] (first match wins)")
    for title, rules in data["decision"].items():
        if rules:
            console.print(f"  {title}:")
            for rule in rules:
                console.print(f"    {escape(_rule_line(rule))}")
    console.print("  otherwise: kept")
    for line in data["resolved_at_decision"]:
        console.print(f"  resolved at the decision, then a rule like the above: {escape(line)}")
    console.print(f"\n[bold]refilter may change[/bold]: {escape(', '.join(data['refilter_keys']))}")


def _rule_line(rule: dict) -> str:
    return f"{rule['when']}  ->  {rule['status']}, reason {rule['reason']}"
