"""Each row's fetch in a download shard: deadlines, per-host politeness, Retry-After, retries.

img2dataset fetches a row with ``download_image_with_retry(row, timeout, retries, ...)``,
which calls ``download_image`` up to ``retries + 1`` times at once, whatever the error. It
has no deadline for a shard, no per-host limit, and reads no ``Retry-After``. Its shard
loop calls that function by its module-global name, so :func:`install` puts
:func:`download_image_with_retry` below in its place in the worker process, and
``curate.download.safe_downloader.SafeDownloader`` opens a :class:`ShardFetches` around each
shard it downloads. A row's fetch is still img2dataset's own ``download_image`` (its
User-Agent, its X-Robots-Tag check), made:

- under a deadline: ``download.max_fetch_seconds`` from before the connect, or the shard's
  ``download.shard_timeout``, whichever comes first (``curate.download.fetch_deadline``). Rows
  the shard's deadline ends, in flight or not yet started, fail with ``shard_timeout``, so a
  shard always ends and ``curate retry`` fetches those rows again;
- when the host gate lets it start (``curate.download.host_gate``: ``download.max_per_host``,
  ``download.per_host_rps``, Retry-After pauses shared by every shard);
- again after a 429 or 503 with ``Retry-After``: the host is paused that long and the row
  waits, up to ``download.max_retry_after`` seconds in all; past that it fails with the
  status;
- again, at once, up to ``download.retries`` times, for transient failures only
  (``TRANSIENT_REASONS``; img2dataset retries a 404 too, which only asks a server again for
  what it said is not there).

Per host, each shard counts requests, rows fetched and failed, 429/5xx answers, Retry-After
waits and seconds waited (:class:`HostFigures`); they are written as
``RUN/downloaded/NNNNN_hosts.parquet`` just before the shard's stats file, its commit marker.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from dataclasses import dataclass

import pyarrow as pa
from img2dataset.downloader import download_image  # a download worker imports img2dataset anyway

from curate.schemas.columns import DOWNLOAD_HOSTS as HOSTS_SCHEMA
from curate.download.download_errors import TRANSIENT_REASONS, ReasonSet, download_reason
from curate.download.fetch_deadline import Deadline, fetch_within, last_answer
from curate.download.host_gate import LocalGate
from curate.download.safe_fetch import FetchRefused, verified_reason

# Retry-After answers that make a row wait instead of failing (RFC 9110: 503; RFC 6585: 429).
WAIT_STATUSES = (429, 503)
# A Retry-After of 0 (or in the past) still waits this long, so a server repeating it
# spends a row's max_retry_after budget instead of looping.
MIN_RETRY_AFTER = 1.0
_RETRY_AT_ONCE = ReasonSet([r for r in TRANSIENT_REASONS if r != "shard_timeout"])



def host_of(url: str | None) -> str:
    """The host a URL's request goes to, lower-cased ('' when there is none)."""
    try:
        return (urllib.parse.urlsplit(url or "").hostname or "").lower()
    except ValueError:
        return ""


class HostFigures:
    """Per-host counters of one shard (HOSTS_SCHEMA), updated from its fetch threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, dict[str, float]] = {}

    def add(self, host: str, **counts: float) -> None:
        with self._lock:
            row = self._rows.setdefault(host, {name: 0 for name in HOSTS_SCHEMA.names[1:]})
            for name, value in counts.items():
                row[name] += value

    def table(self) -> pa.Table:
        with self._lock:
            rows = [{"host": host, **counts} for host, counts in sorted(self._rows.items())]
        return pa.Table.from_pylist(rows, schema=HOSTS_SCHEMA)


@dataclass(frozen=True)
class FetchSettings:
    """What a shard's fetches need beyond img2dataset's own arguments (from DownloadConfig),
    and the host gate the download step shares between its shards (None: one per shard)."""

    shard_timeout: float = 3600.0
    max_fetch_seconds: float = 60.0
    max_retry_after: float = 60.0
    gate: object | None = None

    @classmethod
    def from_config(cls, cfg, gate=None) -> "FetchSettings":
        return cls(cfg.shard_timeout, cfg.max_fetch_seconds, cfg.max_retry_after, gate)


class ShardFetches:
    """The fetches of one download shard: its deadline (from now), the host gate, its figures."""

    def __init__(self, settings: FetchSettings):
        self.settings = settings
        self.deadline = Deadline(time.monotonic() + settings.shard_timeout, "shard_timeout")
        self.gate = settings.gate or LocalGate()
        self.figures = HostFigures()

    def fetch(self, row, timeout, retries, user_agent_token, disallowed_header_directives):
        """img2dataset's ``download_image_with_retry`` contract: ``row`` is (key, url); returns
        (key, BytesIO or None, error message or None)."""
        key, url = row
        host = host_of(url)
        waited_on_retry_after, retried = 0.0, 0
        while True:
            if not self._start(host):
                self.figures.add(host, failed=1, shard_timeout=1)
                return key, None, str(FetchRefused.by(self.deadline))
            deadline = Deadline.earliest(
                Deadline(time.monotonic() + self.settings.max_fetch_seconds, "timeout:max_fetch_seconds"), self.deadline)
            try:
                with fetch_within(deadline):
                    key, stream, error = download_image(row, timeout, user_agent_token, disallowed_header_directives)
                answer = last_answer()
                if stream is None and deadline.passed():
                    error = str(FetchRefused.by(deadline))  # the watchdog ended it: say which deadline
                wait = self._retry_after(answer, error, waited_on_retry_after)
                if wait is not None:
                    self.gate.pause(host, wait)  # before the release: no request to the host slips in
            finally:
                self.gate.release(host)
            self._count(host, answer, stream, wait)
            if stream is not None:
                return key, stream, None
            if wait is not None:
                waited_on_retry_after += wait
                continue  # delayed, not failed: the gate holds the next start until the pause ends
            verdict = download_reason("failed_to_download", error, verified_reason(error))
            if retried < retries and _RETRY_AT_ONCE.matches(verdict):
                retried += 1
                continue
            self.figures.add(host, failed=1, shard_timeout=int(deadline is self.deadline and deadline.passed()))
            return key, None, error

    def _start(self, host: str) -> bool:
        """Wait for the gate to let a request to ``host`` start; False if the shard's deadline comes first."""
        waited = 0.0
        while True:
            left = self.deadline.remaining()
            if left <= 0:
                return False
            granted, wait = self.gate.acquire(host, left)
            if wait is None:
                return False
            if wait > 0:
                time.sleep(wait)
                waited += wait
            if granted:
                self.figures.add(host, waited_seconds=waited)
                return True

    def _retry_after(self, answer, error: str | None, waited: float) -> float | None:
        """Seconds to wait before asking again when the answer was a 429/503 with a Retry-After
        the row's budget (download.max_retry_after) and the shard's deadline leave room for."""
        if error is None or answer is None or answer.status not in WAIT_STATUSES or answer.retry_after is None:
            return None
        wait = max(answer.retry_after, MIN_RETRY_AFTER)
        if waited + wait > self.settings.max_retry_after or wait >= self.deadline.remaining():
            return None
        return wait

    def _count(self, host: str, answer, stream, wait: float | None) -> None:
        status = answer.status if answer is not None else None
        self.figures.add(host, requests=1, fetched=int(stream is not None), http_429=int(status == 429),
                         http_5xx=int(status is not None and 500 <= status < 600), retry_after_waits=int(wait is not None))


_current: list[ShardFetches] = []  # the shard this process is downloading (a Ray task runs one at a time)
_lock = threading.Lock()


def download_image_with_retry(row, timeout, retries, user_agent_token, disallowed_header_directives):
    """Stands in for ``img2dataset.downloader.download_image_with_retry`` (same arguments and
    result) while a :class:`ShardFetches` is open in this process; img2dataset's own otherwise."""
    shard = _current[0] if _current else None
    if shard is None:
        return _ORIGINAL(row, timeout, retries, user_agent_token, disallowed_header_directives)
    return shard.fetch(row, timeout, retries, user_agent_token, disallowed_header_directives)


_ORIGINAL = None


def install() -> None:
    """Make img2dataset's shard loop in this process fetch rows through :func:`download_image_with_retry`."""
    global _ORIGINAL
    import img2dataset.downloader as i2d

    with _lock:
        if i2d.download_image_with_retry is not download_image_with_retry:
            _ORIGINAL = i2d.download_image_with_retry
            i2d.download_image_with_retry = download_image_with_retry


class shard_fetches:  # noqa: N801 - a context manager, used as `with shard_fetches(...)`
    """Open a :class:`ShardFetches` for the shard this process downloads next."""

    def __init__(self, settings: FetchSettings):
        self.shard = ShardFetches(settings)

    def __enter__(self) -> ShardFetches:
        install()
        with _lock:
            _current[:] = [self.shard]
        return self.shard

    def __exit__(self, *exc) -> None:
        with _lock:
            _current[:] = []
