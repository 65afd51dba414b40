"""A run's download passes: the first download, then one per `curate retry`.

Pass 0 is the run's own download: ``RUN/download_list/`` -> ``RUN/downloaded/NNNNN``. Retry
pass ``k`` (1, 2, ...) downloads the rows it selected again: ``RUN/retry/KK/download_list/``
-> ``RUN/downloaded/retry-KK/NNNNN``, whose shard name is ``retry-KK/NNNNN`` everywhere a
download shard is named (``RUN/scored/retry-KK/NNNNN/``, the manifest's ``download_shard``).
Shards already written are never rewritten: a row's latest download wins when the run is
decided (its ``attempt``, curate.core.duck.create_latest_copy_view).

A retry pass lists its rows per input part (``part-FFFFF-SSSS-KKKKK.parquet``), so each of
its shards belongs to one input part and the manifest step's partitions (runs of whole
input parts) find it. Its record (``RUN/_done/retry-KK-select``: reasons, rows, parts) is
what :func:`load_prepared` adds to the prepare step's result for the manifest step.
"""

from __future__ import annotations

import json

from curate.core import storage
from curate.core.rundir import RunDir

RETRY_PREFIX = "retry-"


def pass_name(number: int) -> str:
    """``retry-KK``: the folder of retry pass ``number`` under RUN/downloaded/ and RUN/scored/."""
    return f"{RETRY_PREFIX}{number:02d}"


def list_dir(run: RunDir, number: int) -> str:
    return storage.join(run.retries, f"{number:02d}", "download_list")


def downloaded_dir(run: RunDir, number: int) -> str:
    return storage.join(run.downloaded, pass_name(number))


def marker(run: RunDir, number: int, step: str | None = None) -> str:
    """``_done/retry-KK-<step>`` (select, download) or, without a step, the pass's end."""
    return run.marker(pass_name(number) + (f"-{step}" if step else ""))


def recorded_passes(run: RunDir) -> list[dict]:
    """Every retry pass that selected its rows (its select marker), in order: ``{"pass",
    "reasons", "rows", "parts": [{"part", "download_parts"}]}``, plus ``"downloaded"`` and
    ``"finished"`` flags and, once finished, its ``"outcome"``."""
    passes, number = [], 1
    while storage.exists(marker(run, number, "select")):
        record = json.loads(storage.read_text(marker(run, number, "select")))
        record["downloaded"] = storage.exists(marker(run, number, "download"))
        end = marker(run, number)
        record["finished"] = storage.exists(end)
        if record["finished"]:
            record["outcome"] = json.loads(storage.read_text(end)).get("outcome")
        passes.append(record)
        number += 1
    return passes


def load_prepared(run: RunDir) -> dict:
    """The prepare step's result (its parts and their download-list parts) with ``retries``:
    the retry passes whose downloads are committed, for the manifest step's partitions."""
    prepared = json.loads(storage.read_text(run.marker("prepare")))
    prepared["retries"] = [p for p in recorded_passes(run) if p["downloaded"]]
    return prepared


def shard_numbers(download_parts: list[str], prefix: str = "") -> dict[str, str]:
    """Download-list part name -> its shard's name: its position among ``download_parts`` in
    name order, as img2dataset numbers the files of its input folder (``prefix/`` before it)."""
    names = sorted(download_parts)
    width = max(5, len(str(max(len(names) - 1, 0))))
    return {name: f"{prefix}{k:0{width}d}" for k, name in enumerate(names)}


def shards_by_part(prepared: dict) -> dict[str, list[str]]:
    """Input part -> the names of every download shard holding its rows, pass by pass."""
    out: dict[str, list[str]] = {p["part"]: [] for p in prepared["parts"]}
    passes = [("", prepared["parts"])] + [(pass_name(r["pass"]) + "/", r["parts"]) for r in prepared.get("retries", [])]
    for prefix, parts in passes:
        number = shard_numbers([n for p in parts for n in p["download_parts"]], prefix)
        for part in parts:
            out.setdefault(part["part"], []).extend(number[n] for n in part["download_parts"])
    return out
