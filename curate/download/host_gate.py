"""Polite fetching: per-host concurrency, request rate and Retry-After pauses, for a whole run.

img2dataset has no per-host control: every thread of every shard fetches as fast as it can,
and the answer to rate limiting (img2dataset #400, #430, #456) was fewer threads by hand.
:class:`HostSchedule` decides when a request to a host may start: at most
``download.max_per_host`` in flight, starts at least ``1 / download.per_host_rps`` apart, and
none before a host's Retry-After pause ends. One schedule serves every download shard of a
download step (a Ray actor, ``start_host_gate``), so the limits hold for the run, not per
shard process.

The schedule never blocks: :meth:`HostSchedule.acquire` reserves a start time and says how
long to wait for it, or says when to ask again (the host is at its concurrency limit). So a
single-threaded actor serves every caller, and a caller that would wait past its own
deadline (its shard's) is told so instead of waiting.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

# How long a caller waits before asking again while a host is at its concurrency limit.
POLL_SECONDS = 0.05
# Hosts remembered before idle ones (nothing in flight, no pause or slot ahead) are forgotten:
# a web crawl asks millions of hosts once each.
MAX_HOSTS = 100_000


@dataclass
class _Host:
    in_flight: int = 0
    next_start: float = 0.0  # monotonic time of the next free start slot (rate limit)
    paused_until: float = 0.0  # Retry-After


@dataclass
class HostSchedule:
    """When requests to each host may start. ``max_per_host``: requests in flight per host
    (None: no limit); ``per_host_rps``: starts per second per host (None: no limit). Times are
    ``clock()`` seconds (this process's monotonic clock); callers only ever see durations."""

    max_per_host: int | None = None
    per_host_rps: float | None = None
    clock: Callable[[], float] = time.monotonic
    hosts: dict[str, _Host] = field(default_factory=dict)

    def acquire(self, host: str, limit: float) -> tuple[bool, float | None]:
        """Ask to start a request to ``host`` within ``limit`` seconds.

        Returns ``(True, wait)``: a start is reserved ``wait`` seconds from now (call
        :meth:`release` when the request ends); ``(False, wait)``: the host is at its
        concurrency limit, ask again in ``wait`` seconds; ``(False, None)``: no start is
        possible within ``limit``."""
        now = self.clock()
        if host not in self.hosts and len(self.hosts) >= MAX_HOSTS:
            self._forget_idle(now)
        state = self.hosts.setdefault(host, _Host())
        start = max(now, state.next_start, state.paused_until)
        if start - now > limit:
            return False, None
        if self.max_per_host is not None and state.in_flight >= self.max_per_host:
            return (False, min(POLL_SECONDS, limit)) if limit > 0 else (False, None)
        state.in_flight += 1
        if self.per_host_rps:
            state.next_start = start + 1.0 / self.per_host_rps
        return True, start - now

    def _forget_idle(self, now: float) -> None:
        idle = [h for h, s in self.hosts.items() if s.in_flight == 0 and max(s.next_start, s.paused_until) <= now]
        for host in idle:
            del self.hosts[host]

    def release(self, host: str) -> None:
        """A request reserved by :meth:`acquire` ended."""
        state = self.hosts.get(host)
        if state is not None and state.in_flight > 0:
            state.in_flight -= 1

    def pause(self, host: str, seconds: float) -> None:
        """No request to ``host`` starts in the next ``seconds`` (its Retry-After)."""
        state = self.hosts.setdefault(host, _Host())
        state.paused_until = max(state.paused_until, self.clock() + seconds)


class LocalGate:
    """A :class:`HostSchedule` for the threads of one process (no Ray)."""

    def __init__(self, max_per_host: int | None = None, per_host_rps: float | None = None):
        self._schedule = HostSchedule(max_per_host, per_host_rps)
        self._lock = threading.Lock()

    def acquire(self, host: str, limit: float) -> tuple[bool, float | None]:
        with self._lock:
            return self._schedule.acquire(host, limit)

    def release(self, host: str) -> None:
        with self._lock:
            self._schedule.release(host)

    def pause(self, host: str, seconds: float) -> None:
        with self._lock:
            self._schedule.pause(host, seconds)


class ActorGate:
    """The same calls on a :class:`HostSchedule` Ray actor shared by every download shard.

    Answers are awaited with ``ObjectRef.future()``, not ``ray.get``: a Ray task blocked in
    ``ray.get`` lends its CPU back to the scheduler, which would start more download shards
    than there are CPUs while the fetch threads wait here."""

    # A fetch thread that gets no answer from the actor in this long carries on ungated
    # (the actor died with its node): politeness must never stop a download.
    ANSWER_SECONDS = 30.0

    def __init__(self, actor):
        self.actor = actor

    def acquire(self, host: str, limit: float) -> tuple[bool, float | None]:
        try:
            return tuple(self.actor.acquire.remote(host, limit).future().result(self.ANSWER_SECONDS))
        except Exception:  # noqa: BLE001 - see ANSWER_SECONDS
            return True, 0.0

    def release(self, host: str) -> None:
        self.actor.release.remote(host)  # nothing to wait for

    def pause(self, host: str, seconds: float) -> None:
        self.actor.pause.remote(host, seconds)


def start_host_gate(max_per_host: int | None, per_host_rps: float | None) -> ActorGate:
    """A host schedule actor for one download step (it holds no CPU: a 2-core machine's
    download tasks must never wait for it). Ends with :func:`stop_host_gate` or the driver."""
    import ray

    actor = ray.remote(num_cpus=0, max_restarts=-1)(HostSchedule).remote(max_per_host, per_host_rps)
    return ActorGate(actor)


def stop_host_gate(gate: ActorGate) -> None:
    import ray

    ray.kill(gate.actor)
