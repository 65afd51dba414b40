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
from curate.core.inputs import InputFile
from curate.core.rundir import RunDir
from curate.stages.base import Rule

if TYPE_CHECKING:
    from curate.flow.plan import Plan


class Kind:
    """Base of the kinds. ``rows_schema``: RUN/rows/'s schema; ``download_columns``: the
    download list's columns (img2dataset carries them into RUN/downloaded/);
    ``thresholds``: config keys of its own decision a refilter may change."""

    name: ClassVar[str]
    rows_schema: ClassVar[pa.Schema]
    download_columns: ClassVar[tuple[str, ...]]
    thresholds: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: CurateConfig):
        self.cfg = cfg

    def check(self, plan: Plan) -> None:
        """Fail before anything is written when the config can't work for this kind."""

    def read(self, item: InputFile, run: RunDir) -> pa.Table:
        """The image rows of one input file (``rows_schema`` without ``blocked_reason``)."""
        raise NotImplementedError

    def image_rules(self) -> list[Rule]:
        """The kind's rules over each image row, after the stages' image rules."""
        return []

    def decide(self, con, plan: Plan) -> None:
        """Create DuckDB table ``decided`` from ``image_decisions`` (curate.flow.decision)."""
        raise NotImplementedError

    def write_manifest(self, con, run: RunDir, plan: Plan) -> int:
        """Write RUN/manifest/ from table ``final``; returns the manifest's rows."""
        raise NotImplementedError

    def preview(self, con, run: RunDir, plan: Plan) -> dict[str, pa.Table]:
        """The manifest tables ``cfg`` would give, in memory; nothing is written."""
        raise NotImplementedError

    def write_shard(self, rows: pa.Table, name: str, out_dir: str, downloaded_dir: str) -> int:
        """Write one output shard of kept units (manifest rows) in every output format."""
        raise NotImplementedError

    def summary(self, run: RunDir) -> dict:
        """Kind-specific figures for summary.json."""
        return {}
