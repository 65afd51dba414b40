"""The stage contract: a stage is one class (docs/stages.md, DESIGN.md "The stage contract").

A stage declares its config section, the columns it reads and writes, which of those reach
the manifest, the config keys a refilter may change, and its decisions as :class:`Rule`
objects. The runner, the decision, refilter, progress, the report and ``curate describe``
read these declarations; none of them names a stage.

- :class:`BatchStage` runs in the score step on pyarrow batches: a Ray Data task, or an
  actor pool when it ``uses_model`` (``setup()`` loads the model once per actor).
- :class:`GlobalStage` needs every candidate at once (dedupe): ``find()`` returns a table
  by sample_id that its rules read.

Rules are SQL over stored columns, so every decision is re-made from stored results
(``curate refilter``) without running a model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable, ClassVar, Literal

import pyarrow as pa

from curate.schemas import reasons as R
from curate.schemas.reasons import Code
from curate.schemas.status import Status

if TYPE_CHECKING:
    from curate.core.config import CurateConfig, ModelComputeConfig

# image: one row per image; caption: one row per candidate caption (a pair's original and
# synthetic captions, a document image's synthetic ones); document: one row per document of
# a documents run, over its facts after placement (curate.flow.document_rules).
Scope = Literal["image", "caption", "document"]
# A batch stage's rows: every row of the batch, the downloaded ones, or the "live" ones
# (downloaded and not rejected by a gating rule: the rows worth a model's time).
Rows = Literal["all", "downloaded", "live"]
IMAGE = "image"  # the column name stages use for the image bytes (download.encode_format)


@dataclass(frozen=True)
class Rule:
    """A decision as data: rows where ``when`` holds get ``status`` and ``reason``.

    ``when`` and ``reason`` are SQL expressions over stored columns (``reason`` evaluates to
    the reason string); ``codes`` are the reason codes it can produce. ``scope`` is
    ``image`` (one row per image), ``caption`` (one row per candidate caption: ``text``,
    ``source``, and the stages' per-caption scores) or ``document`` (one row per document of
    a documents run: its facts after placement). The first rule that matches a row decides it.
    """

    when: str
    reason: str
    codes: tuple[Code, ...]
    status: Status = Status.FILTERED
    scope: Scope = "image"

    @classmethod
    def fixed(cls, when: str, code: Code, detail: object | None = None, *, status: Status | None = None,
              scope: Scope = "image") -> "Rule":
        """A rule whose reason is one fixed string, ``code`` or ``code:detail``."""
        return cls(when, code.sql(detail), (code,), status or code.status, scope)

    def describe(self) -> str:
        return f"{self.when}  ->  {self.status.value} {self.reason}"


@dataclass(frozen=True)
class Score:
    """What a stored score means: the declaration the report, ``curate stats``, quantile
    thresholds (``keep_fraction``) and the funnel read, instead of guessing from a column name.

    ``label``: what people read (plot titles, the funnel's step); ``higher_is_better``: which
    way passes (False: a rule drops high values, e.g. an NSFW probability); ``low``/``high``:
    the range the score lies in (None: unbounded that way; e.g. 0 and 1 for a probability,
    -1 and 1 for a cosine); ``threshold``: the config key of its threshold (None: none);
    ``reason``: the reason code its threshold rule records (the funnel's step, the threshold
    read back from a run's reasons).
    """

    label: str
    threshold: str | None = None
    reason: Code | None = None
    higher_is_better: bool = True
    low: float | None = None
    high: float | None = None

    @property
    def passes(self) -> str:
        """The comparison a value that passes the threshold makes with it: ``>=`` or ``<=``."""
        return ">=" if self.higher_is_better else "<="

    def passing_sql(self, column: str, threshold: float) -> str:
        """SQL: ``column`` passes ``threshold`` (a NULL does not)."""
        return f"{column} {self.passes} {float(threshold)!r}"


class Stage:
    """Base of every stage; an instance is bound to one run's config.

    Class attributes (the declaration):
      key: the stage's name: its progress entry and, unless ``section`` says otherwise,
        its config section.
      label: its name for people (the report); None: the key.
      switch: the config key that turns it on (``clip.model``); None: always on for its kinds.
      reads: columns it needs, each written by an earlier stage or present in the
        downloaded shards (``image`` is the image bytes column); checked at start.
      optional_reads: columns it uses when an earlier enabled stage writes them.
      writes: the columns it adds (RUN/scored/ for batch stages).
      manifest: which of ``writes`` reach the manifest.
      thresholds: config keys a refilter may change (decided from stored columns).
      kinds: the input kinds it runs for (``pairs``, ``documents``).
      caption_columns: what it adds to each candidate caption (see below).
      text_columns: documents runs: its scores of an image against each text of its
        document, as list columns aligned with the document's texts (see below).
      token_columns: a text model's token counts and limit (see below).
      scores: its manifest score columns and what they mean (:class:`Score`).
      keep_fractions: fraction keys resolved into its thresholds over the whole run.
    """

    key: ClassVar[str]
    label: ClassVar[str | None] = None  # what people read (the report's "CLIP <model>"); None: the key
    section: ClassVar[str | None] = None
    switch: ClassVar[str | None] = None
    reads: ClassVar[tuple[str, ...]] = ()
    optional_reads: ClassVar[tuple[str, ...]] = ()
    writes: ClassVar[pa.Schema] = pa.schema([])
    manifest: ClassVar[tuple[str, ...]] = ()
    thresholds: ClassVar[tuple[str, ...]] = ()
    kinds: ClassVar[tuple[str, ...]] = ("pairs", "documents")
    # Per candidate caption: column name -> (its column for the original caption or None,
    # the list column of its synthetic captions or None, the list column of its alternates
    # (pairs: the captions of the other rows with the same URL) or None). Caption-scope rules
    # read these (curate.flow.captions).
    caption_columns: ClassVar[dict[str, tuple[str | None, str | None, str | None]]] = {}
    # Documents runs: score name -> the list column holding this score of an image against
    # each text of its document, aligned with the texts (NULL where not scored). Placement
    # (curate.flow.interleave) reads them by score name: clip_score, itm_prob.
    text_columns: ClassVar[dict[str, str]] = {}
    # Pairs: a text model's tokens: (its caption column of each caption's length in the
    # model's tokenizer, its row column of the model's token limit). The decision records in
    # every caption which models read only its first tokens; filters.max_caption_tokens reads
    # the counts.
    token_columns: ClassVar[tuple[str, str] | None] = None
    # Manifest score columns -> what each means (label, direction, range, threshold key, reason):
    # the report plots these with the threshold line, `curate stats` and keep_fraction read them.
    scores: ClassVar[dict[str, Score]] = {}
    # Quantile thresholds: a config key holding a fraction -> the threshold key it sets,
    # resolved over the whole run from the score column ``scores`` names for that threshold
    # (curate.pipeline.quantiles). E.g. {"clip.keep_fraction": "clip.min_score"}.
    keep_fractions: ClassVar[dict[str, str]] = {}
    # A judge of captions whose threshold may be ``auto``: (the threshold key, the score
    # column of the original caption, the value when calibration cannot run), calibrated
    # against the other judges from the stored scores (curate.pipeline.calibration).
    calibration: ClassVar[tuple[str, str, float | None] | None] = None

    def __init__(self, cfg: CurateConfig):
        self.cfg = cfg

    @property
    def config_section(self) -> str:
        return self.section or self.key

    def configured(self) -> bool:
        """Whether the config asks for this stage (its model is set, its switch is on)."""
        return True

    def enabled(self) -> bool:
        """Whether it runs in this run: configured, and built for the run's input kind."""
        return self.configured() and self.cfg.input.kind in self.kinds

    def check(self) -> None:
        """Fail before anything is written (ConfigError, ModelReferenceError) when the
        stage's config or model reference is bad. Default: nothing to check."""

    def rules(self) -> list[Rule]:
        """This stage's decisions, in the order they apply."""
        return []

    def keep_scores(self) -> dict[str, str]:
        """``dedupe.keep`` options this stage offers: name -> SQL score over the decided rows
        (the highest-scoring copy of a duplicate group is kept)."""
        return {}

    def manifest_schema(self) -> pa.Schema:
        return pa.schema([self.writes.field(name) for name in self.manifest])


@dataclass(frozen=True)
class Pool:
    """One model stage's actor pool: ``actors`` actors, each reserving ``num_cpus`` CPUs and
    ``num_gpus`` GPUs and running torch with ``threads`` intra-op threads."""

    actors: int
    num_cpus: float
    num_gpus: float
    threads: int

    def describe(self) -> str:
        gpu = f", {self.num_gpus:g} GPU" if self.num_gpus else ""
        return f"{self.actors} x ({self.num_cpus:g} CPU{gpu}, {self.threads} thread{'s' * (self.threads > 1)})"

    def as_dict(self) -> dict:
        return asdict(self)


class BatchStage(Stage):
    """A stage of the score step: ``__call__`` takes a pyarrow batch of downloaded rows and
    returns it with the ``writes`` columns appended (NULL where the stage does not apply).

    ``uses_model``: run as a Ray actor pool, one ``setup()`` per actor (``compute`` gives
    the pool's size and resources); else as light Ray tasks. ``rows``: which rows it works
    on (see :data:`Rows`). ``gates``: its image rules mark rows not live, so later stages
    skip them (only for rules a refilter may not change: a row never scored could not be
    re-decided).
    """

    uses_model: ClassVar[bool] = False
    rows: ClassVar[Rows] = "live"
    gates: ClassVar[bool] = False
    # A model stage's work per image relative to CLIP ViT-B/32 scoring an image and its
    # captions (docs/scaling.md): the share of GPUs or CPUs its pool gets when the config
    # leaves them unset (curate.pipeline.pools).
    relative_cost: ClassVar[float] = 1.0
    # The pool it runs with, set when the run starts (curate.pipeline.pools.size_pools).
    pool: Pool | None = None
    # The keys of a model stage's config section (a ModelComputeConfig) that size its pool, not
    # its results (captions are drawn per sample): a run may resume with other values.
    POOL_KEYS: ClassVar[tuple[str, ...]] = ("actors", "num_cpus", "num_gpus", "threads", "batch_size")

    @classmethod
    def resource_keys(cls) -> tuple[str, ...]:
        """Dotted config keys (``clip.actors``, ...) that set this stage's resources, not its
        results; none for a stage that is not a model stage."""
        return tuple(f"{cls.section or cls.key}.{key}" for key in cls.POOL_KEYS) if cls.uses_model else ()

    def setup(self) -> None:
        """Load what the stage needs once per process (a model, weights)."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        raise NotImplementedError

    @property
    def compute(self) -> ModelComputeConfig | None:
        """The actor pool's settings as configured (a model stage's config section; unset
        values are sized at start into ``pool``), else None."""
        return None

    @property
    def image_col(self) -> str:
        return self.cfg.download.encode_format

    def todo(self, batch: pa.Table) -> list[int]:
        """Row indices of ``batch`` this stage works on, by its ``rows`` policy."""
        if self.rows == "all":
            return list(range(batch.num_rows))
        column = "_live" if self.rows == "live" and "_live" in batch.column_names else "download_reason"
        values = batch.column(column).to_pylist()
        if column == "_live":
            return [i for i, live in enumerate(values) if live]
        images = batch.column(self.image_col).to_pylist()
        return [i for i, failed in enumerate(values) if failed is None and images[i]]

    def token_rules(self) -> list[Rule]:
        """A text model's (``token_columns``) ``filters.max_caption_tokens``: a caption longer
        than that in its tokenizer fails, ``caption_too_long:<n>_<key>_tokens``. A text rule,
        not a score threshold: it holds in every ``capfilt.mode``."""
        limit = self.cfg.filters.max_caption_tokens
        if limit is None or self.token_columns is None or self.cfg.input.kind != "pairs":
            return []
        return [Rule.fixed(f"{self.token_columns[0]} > {limit}", R.CAPTION_TOO_LONG, f"{limit}_{self.key}_tokens",
                           scope="caption")]

    def append(self, batch: pa.Table, columns: dict[str, list]) -> pa.Table:
        """``batch`` with this stage's ``writes`` columns appended, in declared order and types."""
        for field in self.writes:
            values = columns.get(field.name, [None] * batch.num_rows)
            batch = batch.append_column(field, pa.array(values, field.type))
        return batch


class GlobalStage(Stage):
    """A stage that needs every candidate at once (dedupe). ``candidates()`` names the
    columns it needs, as SQL over the decided rows; ``find()`` returns a table keyed by
    ``sample_id`` with its ``writes`` columns, which its rules read."""

    def bind(self, upstream: list[BatchStage], every: list[Stage]) -> None:
        """``upstream``: the enabled batch stages before it (dedupe asks them for duplicate
        matchers); ``every``: every stage of the list, enabled or not."""
        self.upstream, self.all_stages = upstream, every

    def candidates(self) -> dict[str, str]:
        """Candidate column name -> SQL expression over the decided rows (``decided``)."""
        return {}

    def find(self, candidates: pa.Table, advance: Callable[[int], None]) -> pa.Table:
        raise NotImplementedError

    def find_partitioned(self, candidates: dict[str, str], work: str, out: Callable[[str], str],
                         advance: Callable[[int], None]) -> dict[str, int]:
        """``find`` over the run's partitions, as Ray tasks: ``candidates`` maps a partition
        to its candidates file; what is found for a partition goes to ``out(partition)``
        (a table keyed by sample_id, the stage's ``writes``); ``work`` is the stage's scratch
        folder. Returns the rows found per partition."""
        raise NotImplementedError

    def partition_done(self, con, plan, work: str, partition: str) -> None:
        """After a partition's final decision (table ``final``): keep what the stage needs of it."""

    def run_done(self, work: str, run) -> None:
        """After every partition: write what the stage keeps of a run."""
