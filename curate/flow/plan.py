"""The plan of a run: its kind and its enabled stages, in order, checked before anything runs.

Built once per run from the config and the stage list (curate.stages.registry), and read by
the runner, the decision, refilter, progress, the report and ``curate describe``. The
``Plan`` itself is defined next to the ``Kind`` base (curate.flow.kind), which the kinds
import: this module imports the kinds, and nothing in the flow imports it back.
"""

from __future__ import annotations

import pyarrow as pa

from curate.core.config import ConfigError, CurateConfig
from curate.flow.documents import DocumentsKind
from curate.flow.kind import REFILTER_KEYS, Kind, Plan
from curate.flow.pairs import PairsKind
from curate.schemas import columns
from curate.stages.base import IMAGE, BatchStage, GlobalStage
from curate.stages.registry import STAGES

__all__ = ["KINDS", "REFILTER_KEYS", "Plan", "make_plan", "order_batch_stages"]

KINDS: dict[str, type[Kind]] = {"pairs": PairsKind, "documents": DocumentsKind}


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
