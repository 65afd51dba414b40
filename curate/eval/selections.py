"""Selections of a finished run: which downloaded images train, each with which caption.

A selection is made from the run's stored columns, never by running a model again: the
run's own decision (its manifest), ``raw`` (DataComp's "no filtering" baseline: every
downloaded image, once per exact image (sha256), with its alt-text), a named decision of
the demo's comparison table re-decided from stored scores as ``curate refilter`` does
(``clip``, ``itm``, ``clip+itm``, ``capfilt``), a ``set:KEY=VALUE,...`` variant of the run's
own config, or ``uids:PATH``, a DataComp subset file (uids.npy of dtype ``u8,u8`` as
``curate export --format datacomp-uids`` and DataComp's resharder use, or a text file with
one 32-hex-digit uid a line) applied to the raw pool with its alt-text, as DataComp trains
on a uid subset of its pool.

Every selection is a table of ``SELECTION_SCHEMA``: sample_id, download_shard (where its
image bytes are in RUN/downloaded/), caption (the training caption of that selection) and
uid (DataComp's md5 of URL and alt-text).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from curate.core import storage
from curate.core.rundir import RunDir
from curate.flow.pair_record import sample_uid
from curate.schemas.status import Status

SELECTION_SCHEMA = pa.schema([("sample_id", pa.string()), ("download_shard", pa.string()),
                              ("caption", pa.string()), ("uid", pa.string())])

# The demo's comparison table (curate.demo.VARIANTS, which sits above this package: the
# same overrides, checked by tests/test_eval.py), by short name: each keeps the cheap rules
# and dedupe and differs in which judges a caption must pass; then the stages it needs.
NAMED = {
    "clip": (["capfilt.mode=filter_only", "itm.min_prob=null"], "clip"),
    "itm": (["capfilt.mode=filter_only", "clip.min_score=null"], "itm"),
    "clip+itm": (["capfilt.mode=filter_only"], "clip", "itm"),  # CapFilt's own filter without the captioner
    "capfilt": ([], "clip", "itm", "caption"),
}
BUILTIN = ("run", "raw", *NAMED)
DEFAULT = ("run", "raw", "clip+itm", "capfilt")


class SelectionError(ValueError):
    """A selection that cannot be made from this run (unknown name, a stage it needs did not run)."""


@dataclass(frozen=True)
class Selection:
    """A selection's spec: its ``name`` (also its folder under RUN/eval/) and what it is."""

    name: str
    spec: str

    @property
    def folder(self) -> str:
        """A file-system-safe folder name (``set:clip.min_score=0.6`` -> ``set_clip.min_score_0.6``)."""
        return re.sub(r"[^A-Za-z0-9.+_-]+", "_", self.name)


def parse(specs: list[str]) -> list[Selection]:
    """Selections from their names; SelectionError for an unknown one (one line, listing them)."""
    out = []
    for spec in specs:
        spec = spec.strip()
        if spec in BUILTIN or spec.startswith("set:") and "=" in spec:
            out.append(Selection(spec, spec))
        elif spec.startswith("uids:") and len(spec) > 5:
            out.append(Selection(f"uids:{Path(spec[5:]).stem}", spec))
        else:
            raise SelectionError(f"unknown selection {spec!r}: use {', '.join(BUILTIN)}, set:KEY=VALUE[,KEY=VALUE] "
                                 "or uids:PATH (a DataComp uid file)")
    if len({s.folder for s in out}) != len(out):
        raise SelectionError(f"selections named twice: {', '.join(s.name for s in out)}")
    return out


def check_finished(run: RunDir) -> None:
    """SelectionError unless ``run`` is a finished pairs run (its summary written last)."""
    if not storage.exists(run.config) or not storage.list_files(run.manifest, ".parquet") \
            or not storage.exists(run.summary):
        raise SelectionError(f"{run.root} is not a finished curate run (no config.yaml, manifest/ or summary.json); "
                             "finish it with `curate run` first")
    config = yaml.safe_load(storage.read_text(run.config)) or {}
    if (config.get("input") or {}).get("kind") == "documents":
        raise SelectionError(f"{run.root} is a documents run: `curate eval` trains CLIP on pairs runs only")


def _manifest(run: RunDir) -> pa.Table:
    return storage.read_parquet(storage.list_files(run.manifest, ".parquet"),
                                columns=["sample_id", "url", "caption", "status", "caption_chosen", "sha256",
                                         "download_shard"])


def _kept(manifest: pa.Table) -> pa.Table:
    kept = manifest.filter(pc.equal(manifest.column("status"), Status.KEPT.value))
    return _table(kept, kept.column("caption_chosen").to_pylist())


def _table(rows: pa.Table, captions: list) -> pa.Table:
    uids = [sample_uid(u, c) for u, c in zip(rows.column("url").to_pylist(), rows.column("caption").to_pylist())]
    return pa.table({"sample_id": rows.column("sample_id"), "download_shard": rows.column("download_shard"),
                     "caption": pa.array([c or "" for c in captions], pa.string()), "uid": pa.array(uids, pa.string())},
                    schema=SELECTION_SCHEMA).sort_by("sample_id")


def raw_pool(manifest: pa.Table) -> pa.Table:
    """Every downloaded image once (the first sample_id of each sha256), with its alt-text:
    rows neither blocked nor failed to download, whose bytes are in RUN/downloaded/."""
    failed = pc.is_in(manifest.column("status"), pa.array([Status.DOWNLOAD_FAILED.value, Status.BLOCKED.value]))
    usable = manifest.filter(pc.and_(pc.invert(failed), pc.and_(pc.is_valid(manifest.column("download_shard")),
                                                                 pc.is_valid(manifest.column("sha256")))))
    usable = usable.sort_by("sample_id")
    seen, keep = set(), []
    for i, digest in enumerate(usable.column("sha256").to_pylist()):
        keep.append(digest not in seen)
        seen.add(digest)
    usable = usable.filter(pa.array(keep, pa.bool_()))
    return _table(usable, usable.column("caption").to_pylist())


def read_uids(path: str) -> set[str]:
    """A DataComp uid subset: ``.npy`` of dtype ``u8,u8`` (high, low 64-bit halves) or a text
    file of 32-hex-digit uids, one a line; SelectionError if missing or unreadable."""
    if not storage.exists(path):
        raise SelectionError(f"uid file {path} does not exist")
    if path.endswith(".npy"):
        fs, local = storage.fs_and_path(path)
        with fs.open(local, "rb") as handle:
            try:
                array = np.load(handle)
            except ValueError as error:
                raise SelectionError(f"uid file {path} is not a NumPy array: {error}") from None
        if array.dtype.names is None or len(array.dtype.names) != 2:
            raise SelectionError(f"uid file {path}: expected dtype u8,u8 (DataComp's uid halves), not {array.dtype}")
        a, b = array.dtype.names
        return {f"{int(high):016x}{int(low):016x}" for high, low in zip(array[a], array[b])}
    uids = {line.strip().lower() for line in storage.read_text(path).splitlines() if line.strip()}
    bad = [u for u in uids if not re.fullmatch(r"[0-9a-f]{32}", u)]
    if bad:
        raise SelectionError(f"uid file {path}: {bad[0]!r} is not a 32-hex-digit uid")
    return uids


def _redecided(run: RunDir, overrides: list[str]) -> pa.Table:
    """The run re-decided with ``overrides`` from its stored scores (curate.pipeline.decide.preview)."""
    from curate.core.config import ConfigError, apply_overrides, validate
    from curate.flow.plan import make_plan
    from curate.pipeline.decide import preview

    stored = yaml.safe_load(storage.read_text(run.config))
    try:
        cfg = validate(apply_overrides(stored, overrides))
    except ConfigError as error:
        raise SelectionError(str(error)) from None
    return _kept(preview(make_plan(cfg), run)["manifest"])


def _stage_keys(run: RunDir) -> set[str]:
    from curate.core.config import validate
    from curate.flow.plan import make_plan

    return {stage.key for stage in make_plan(validate(yaml.safe_load(storage.read_text(run.config)))).stages}


def make_selection(run: RunDir, selection: Selection) -> pa.Table:
    """The samples of ``selection`` (SELECTION_SCHEMA, in sample_id order). Needs Ray for
    the re-decided ones (the run's decision runs as Ray tasks); SelectionError when a stage
    the selection judges with did not run in this run."""
    spec = selection.spec
    if spec == "run":
        return _kept(_manifest(run))
    if spec == "raw":
        return raw_pool(_manifest(run))
    if spec.startswith("uids:"):
        wanted = read_uids(spec[5:])
        pool = raw_pool(_manifest(run))
        return pool.filter(pc.is_in(pool.column("uid"), pa.array(sorted(wanted), pa.string())))
    if spec.startswith("set:"):
        return _redecided(run, [item for item in spec[4:].split(",") if item])
    overrides, *needs = NAMED[spec]
    missing = [key for key in needs if key not in _stage_keys(run)]
    if missing:
        raise SelectionError(f"selection {spec} needs the run's {', '.join(missing)} stage, which this run did not "
                             "have enabled (its scores are not stored)")
    return _redecided(run, overrides)
