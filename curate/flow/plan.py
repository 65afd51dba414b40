"""The plan of a run: its kind and its enabled stages, in order, checked before anything runs.

Built once per run from the config and the stage list (curate.stages.registry), and read by
the runner, the decision, refilter, progress, the report and ``curate describe``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from curate.core.config import ConfigError, CurateConfig
from curate.flow.documents import DocumentsKind
from curate.flow.kind import Kind
from curate.flow.pairs import PairsKind
from curate.schemas import columns
from curate.stages.base import IMAGE, BatchStage, GlobalStage, Rule, Stage
from curate.stages.registry import STAGES

KINDS: dict[str, type[Kind]] = {"pairs": PairsKind, "documents": DocumentsKind}
# Config keys a refilter may change beyond the stages' and the kind's thresholds: the
# output layout and resources (decided again from stored results, no model).
REFILTER_KEYS = ("output.formats", "output.samples_per_shard", "report.", "manifest.memory_limit")


@dataclass
class Plan:
    cfg: CurateConfig
    kind: Kind
    batch: list[BatchStage]  # enabled, in run order
    globals: list[GlobalStage]  # enabled
    every: list[Stage] = field(default_factory=list)  # the whole stage list, enabled or not

    @property
    def stages(self) -> list[Stage]:
        return [*self.batch, *self.globals]

    @property
    def written(self) -> set[str]:
        """Columns a scored row has: the downloaded ones and every enabled batch stage's."""
        return set(columns.DOWNLOADED.names) | set(self.kind.download_columns) | {
            name for stage in self.batch for name in stage.writes.names}

    def rules(self, scope: str) -> list[Rule]:
        """``image`` or ``caption``: the enabled batch stages' rules of that scope, in run
        order; ``global``: the global stages' rules."""
        if scope == "global":
            return [rule for stage in self.globals for rule in stage.rules()]
        return [rule for stage in self.batch for rule in stage.rules() if rule.scope == scope]

    def scored_schema(self) -> pa.Schema:
        """RUN/scored/'s columns: the base, what the kind's rows carry and every enabled batch stage's writes."""
        return columns.concat_schemas(columns.SCORED_BASE, self.kind.carried, *(s.writes for s in self.batch))

    def unsupported(self) -> list[Stage]:
        """Stages the config asks for that are not built for this run's kind."""
        return [s for s in self.every if s.switch and s.configured() and self.cfg.input.kind not in s.kinds]

    def refilter_keys(self) -> tuple[str, ...]:
        """Config keys (or ``section.`` prefixes) a refilter may change."""
        keys = [k for s in self.stages for k in s.thresholds] + list(self.kind.thresholds) + list(REFILTER_KEYS)
        return tuple(dict.fromkeys(keys))

    def check(self, models: bool = True) -> None:
        """Every stage's and the kind's checks: a bad reference or config stops here, before
        anything is written. ``models=False`` skips the model stages' reference checks (a
        refilter runs no model: its model files may be gone)."""
        self.kind.check(self)
        for stage in self.stages:
            if models or not getattr(stage, "uses_model", False):
                stage.check()


def make_plan(cfg: CurateConfig) -> Plan:
    """The plan for ``cfg``; ConfigError when a stage reads a column no enabled stage writes."""
    every = [cls(cfg) for cls in STAGES]
    enabled = [s for s in every if s.enabled()]
    kind = KINDS[cfg.input.kind](cfg)
    batch = order_batch_stages([s for s in enabled if isinstance(s, BatchStage)], kind)
    globals_ = [s for s in enabled if isinstance(s, GlobalStage)]
    for stage in globals_:
        stage.bind(batch, every)
    return Plan(cfg, kind, batch, globals_, every)


def order_batch_stages(stages: list[BatchStage], kind: Kind) -> list[BatchStage]:
    """``stages`` in an order where each runs after the stages that write what it reads
    (stable: otherwise in list order). ConfigError names a read nothing provides."""
    base = set(columns.DOWNLOADED.names) | set(kind.download_columns) | {IMAGE}
    producers: dict[str, BatchStage] = {}
    for stage in stages:
        for name in stage.writes.names:
            producers.setdefault(name, stage)
    for stage in stages:
        for name in stage.reads:
            if name not in base and name not in producers:
                writers = [cls.key for cls in STAGES if name in getattr(cls, "writes", pa.schema([])).names]
                hint = f"; the {' or '.join(writers)} stage writes it: enable it" if writers else ""
                raise ConfigError(f"the {stage.key} stage reads {name!r}, which no enabled stage writes{hint}")
    ordered: list[BatchStage] = []
    pending = list(stages)
    while pending:
        for stage in pending:
            needs = {producers[n] for n in (*stage.reads, *stage.optional_reads) if n in producers} - {stage}
            if all(dep in ordered for dep in needs):
                ordered.append(stage)
                pending.remove(stage)
                break
        else:
            raise ConfigError(f"the stages {[s.key for s in pending]} read each other's columns: no order works")
    return ordered
