"""A kind of input: pairs (one image, one text) or documents (many of each), two kinds of one flow.

Download, score, the image decision and dedupe are written once, for image rows. A kind
says what differs: how its input is read into image rows, which columns go to download,
its own rules, how units are decided from the decided image rows (a pair's captions; a
document's images and placement), and how a unit is written to the manifest and the
training shards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import pyarrow as pa

from curate.core.config import CurateConfig
from curate.core.inputs import InputPart
from curate.core.rundir import RunDir
from curate.stages.base import Rule

if TYPE_CHECKING:
    from curate.flow.plan import Plan


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
