"""A kind of input: pairs (one image, one text) or documents (many of each), two kinds of one flow.

Download, score, the image decision and dedupe are written once, for image rows. A kind
says what differs: how its input is read into image rows, which columns go to download,
its own rules, how units are decided from the decided image rows (a pair's captions; a
document's images and placement), and how a unit is written to the manifest and the
training shards.

The ``Plan`` (a run's kind and its enabled stages, in order) is defined here too: a kind's
methods take the plan, and the plan holds its kind. ``curate.flow.plan.make_plan`` builds
it and is the one module of the flow that imports the concrete kinds (no import circle).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import pyarrow as pa

from curate.core.config import CurateConfig
from curate.core.inputs import InputPart
from curate.core.rundir import RunDir
from curate.schemas import columns
from curate.stages.base import BatchStage, GlobalStage, Rule, Score, Stage

class Kind:
    """Base of the kinds. ``rows_schema``: RUN/rows/'s schema; ``download_columns``: the
    download list's columns (img2dataset carries them into RUN/downloaded/), ``carried``
    the types of those that are not rows/ columns (they reach RUN/scored/ too);
    ``thresholds``: config keys of its own decision a refilter may change."""

    name: ClassVar[str]
    rows_schema: ClassVar[pa.Schema]
    download_columns: ClassVar[tuple[str, ...]]
    carried: ClassVar[pa.Schema] = pa.schema([])
    thresholds: ClassVar[tuple[str, ...]] = ()
    # Whether its decision reads the stages' ``text_columns`` (an image's score per text of its
    # document). A run of a kind that doesn't may lack them (scored before a stage wrote them).
    reads_text_scores: ClassVar[bool] = False
    # Score columns of its manifest that the kind writes or gives its own meaning (a
    # documents run's image scores): they replace the stages' declarations of the same name.
    scores: ClassVar[dict[str, Score]] = {}

    def __init__(self, cfg: CurateConfig):
        self.cfg = cfg

    @property
    def merges_same_url(self) -> bool:
        """Whether rows with the same URL become one sample (curate.pipeline.same_url)."""
        return False

    def check(self, plan: Plan) -> None:
        """Fail before anything is written when the config can't work for this kind."""

    def read(self, part: InputPart, run: RunDir) -> pa.Table:
        """The image rows of one input part (``rows_schema`` without ``blocked_reason``); runs
        in a prepare task. What else the kind keeps of the input goes to the run directory
        under the part's name."""
        raise NotImplementedError

    def unfetched_rules(self) -> list[Rule]:
        """The kind's rules over rows it did not send to download (besides blocked ones),
        decided before any download rule."""
        return []

    def image_rules(self) -> list[Rule]:
        """The kind's rules over each image row, after the stages' image rules."""
        return []

    def decision_rules(self, plan: Plan) -> dict[str, list[Rule]]:
        """The kind's own rules of its unit decision before the global stages (dedupe), by a
        title saying what they judge, for ``curate describe``."""
        return {}

    def final_rules(self, plan: Plan) -> dict[str, list[Rule]]:
        """The kind's rules after the global stages (a document's rules, after placement)."""
        return {}

    def decide(self, con, plan: Plan) -> None:
        """Create DuckDB table ``decided`` from ``image_decisions`` (curate.flow.decision)."""
        raise NotImplementedError

    def write_partition(self, con, plan: Plan, name: str, files, out) -> dict:
        """Write one partition's manifest part(s) from table ``final`` (curate.pipeline.decide:
        ``name`` the partition's, ``files`` its PartitionFiles, ``out`` its Outputs), output
        shards left NULL. Returns ``{"manifest": [{"uri", "units",
        "kept"}], "statuses": {status: n}, "reasons": {'["status", "code"]': n}, "extra": {...}}``."""
        raise NotImplementedError

    def image_manifest_parts(self, written: dict, out) -> list[str]:
        """The manifest parts with one row per image (``download_shard``, ``status``,
        ``reason``) among what ``write_partition`` returned (``written``): its manifest parts."""
        return [part["uri"] for part in written["manifest"]]

    def write_shard(self, rows: pa.Table, name: str, out_dir: str, downloaded_dir: str) -> int:
        """Write one output shard of kept units (manifest rows) in every output format."""
        raise NotImplementedError

    def summary(self, counts: dict) -> dict:
        """Kind-specific figures for summary.json, from the decision's merged counts."""
        return {}


# Config keys a refilter may change beyond the stages' and the kind's thresholds: the
# output layout and resources (decided again from stored results, no model).
REFILTER_KEYS = ("output.formats", "output.samples_per_shard", "report.", "manifest.memory_limit")


@dataclass
class Plan:
    """A run's plan: its config, its kind, its enabled batch stages in run order, its enabled
    global stages, and the whole stage list (``every``) for hints and ``curate describe``.
    Built by ``curate.flow.plan.make_plan``."""

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
