"""Deadlines over whole fetches: one request (connect, headers, body), one download shard.

A socket timeout (``download.timeout``) bounds each connect and each read, not their sum: a
server that answers one byte just inside the timeout, or a handshake that stalls between
reads, keeps a fetch alive forever, and img2dataset's shard with it (img2dataset #289, a run
stuck at 99%). Here a fetch runs inside :func:`fetch_within` a :class:`Deadline`: connects
get at most the time left, and a watchdog thread shuts down the sockets of a fetch whose
deadline passed, so a read blocked on a silent server returns at once (plain HTTP and TLS
alike: the socket is shut down under the TLS layer). The fetch then fails, and the caller
records the deadline's ``cause`` as the row's reason.

The thread-local context also carries the status and ``Retry-After`` of the last HTTP answer
of the fetch (:func:`last_answer`), which img2dataset's downloader reduces to a message.
"""

from __future__ import annotations

import contextlib
import email.utils
import heapq
import itertools
import socket
import threading
import time
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class Deadline:
    """A point in time (``time.monotonic()`` seconds) and the reason code a fetch it ends gets
    (``timeout:max_fetch_seconds``, ``shard_timeout``)."""

    at: float
    cause: str

    def remaining(self) -> float:
        """Seconds left (negative once passed)."""
        return self.at - time.monotonic()

    def passed(self) -> bool:
        return self.remaining() <= 0

    @staticmethod
    def earliest(*deadlines: "Deadline | None") -> "Deadline | None":
        present = [d for d in deadlines if d is not None]
        return min(present, key=lambda d: d.at) if present else None


@dataclass(frozen=True)
class Answer:
    """The last HTTP answer of a fetch: its status and ``Retry-After`` in seconds (None: absent
    or unreadable)."""

    status: int
    retry_after: float | None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (RFC 9110 10.2.3: delay-seconds or an
    HTTP-date); None when absent or unreadable, 0 for a date in the past.

    Header values are parsed as ASCII only (RFC 9110 5.5: other octets are opaque data):
    ``str.isdigit`` accepts ``²`` and other Latin-1 digits that ``float`` refuses, and
    ``int``/``float`` accept Unicode digits no server means; nothing here raises."""
    if value is None:
        return None
    value = value.strip(" \t")
    if not value.isascii():
        return None
    if value.isdigit():  # ASCII digits only, after the check above
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class Watchdog:
    """One daemon thread per process that shuts down watched sockets when their time comes."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, socket.socket]] = []
        self._live: set[int] = set()
        self._ids = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, sock: socket.socket, at: float) -> int:
        """Shut ``sock`` down at monotonic time ``at`` unless :meth:`unwatch` comes first; returns a handle."""
        with self._wake:
            handle = next(self._ids)
            heapq.heappush(self._heap, (at, handle, sock))
            self._live.add(handle)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="curate-fetch-watchdog", daemon=True)
                self._thread.start()
            self._wake.notify()
            return handle

    def unwatch(self, handle: int) -> None:
        with self._wake:
            self._live.discard(handle)

    def _loop(self) -> None:
        while True:
            with self._wake:
                while self._heap and self._heap[0][1] not in self._live:
                    heapq.heappop(self._heap)  # finished in time
                wait = self._heap[0][0] - time.monotonic() if self._heap else None
                if wait is None or wait > 0:
                    self._wake.wait(wait)
                    continue
                _, handle, sock = heapq.heappop(self._heap)
                self._live.discard(handle)
            with contextlib.suppress(OSError):  # already closed: nothing to end
                sock.shutdown(socket.SHUT_RDWR)


WATCHDOG = Watchdog()
_local = threading.local()


@contextlib.contextmanager
def fetch_within(deadline: Deadline) -> Iterator[Deadline]:
    """Run one fetch (every connection it opens, redirects included) under ``deadline``."""
    _local.deadline, _local.handles, _local.answer = deadline, [], None
    try:
        yield deadline
    finally:
        for handle in _local.handles:
            WATCHDOG.unwatch(handle)
        _local.deadline, _local.handles = None, []


def current_deadline() -> Deadline | None:
    """The deadline of the fetch this thread is making (None outside :func:`fetch_within`)."""
    return getattr(_local, "deadline", None)


def watch_socket(sock: socket.socket) -> None:
    """Have the watchdog end ``sock`` at the current fetch's deadline (no-op outside a fetch)."""
    deadline = current_deadline()
    if deadline is not None:
        _local.handles.append(WATCHDOG.watch(sock, deadline.at))


def note_answer(status: int, retry_after: str | None) -> None:
    """Record an HTTP answer of the current fetch (called by the opener for every response)."""
    try:
        wait = parse_retry_after(retry_after)
    except Exception:  # noqa: BLE001 - a header the server wrote never decides a row's verdict
        wait = None
    _local.answer = Answer(status, wait)


def last_answer() -> Answer | None:
    """The last HTTP answer of this thread's latest fetch, or None if none came."""
    return getattr(_local, "answer", None)
