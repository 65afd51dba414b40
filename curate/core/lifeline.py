"""Helper processes end with the driver, even when the driver is SIGKILLed.

A run starts helpers that outlive a driver that dies without cleaning up: img2dataset's
logger process (a multiprocessing ``spawn`` child that loops until told to stop) and the
multiprocessing resource tracker it keeps alive, and Ray's node processes (Ray ties its
GCS server and raylet to the driver, but the raylet's dashboard and runtime-env agents
stay up for minutes once the raylet is gone). Two mechanisms, for the two kinds:

- ``die_with_parent()``: a child curate starts itself asks the kernel for SIGKILL when its
  parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``); no window, no polling.
- ``start_watchdog()``: a small process in its own session that notes the driver's
  descendants once a second and, when the driver is gone, ends the ones still running
  (SIGTERM, then SIGKILL after a grace period). It judges a process by its pid *and*
  its start time, so a pid reused by an unrelated process is never touched, and it only
  ever looks at descendants of the driver. A helper started in the last second before
  the driver died, and reparented by then, can escape it; Ray's own workers end by
  themselves once their raylet is gone.

Linux only (``/proc``, ``prctl``); elsewhere both are no-ops.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1
SCAN_SECONDS = 1.0
GRACE_SECONDS = 3.0
_started: dict[int, subprocess.Popen] = {}  # driver pid -> its watchdog


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent exits; returns
    False where that is not available. Exits at once if the parent is already gone."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os._exit(1)
    return True


def start_time(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (``/proc/PID/stat`` field 22), or
    None if it is gone: with the pid, it names one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def descendants(roots: set[int]) -> dict[int, int]:
    """Every running process under any of ``roots`` (not the roots): pid -> start time."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            parent = _parent(int(entry.name))
            if parent is not None:
                parents[int(entry.name)] = parent
    found: dict[int, int] = {}
    for pid in parents:
        ancestor = parents.get(pid)
        while ancestor is not None and ancestor > 1:
            if ancestor in roots:
                started = start_time(pid)
                if started is not None:
                    found[pid] = started
                break
            ancestor = parents.get(ancestor)
    return found


def _alive(known: dict[int, int]) -> dict[int, int]:
    return {pid: started for pid, started in known.items() if start_time(pid) == started}


def _end(known: dict[int, int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        # Also whatever the known helpers started meanwhile (their children stay theirs).
        known = _alive({**known, **descendants(set(known))})
        for pid in known:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + GRACE_SECONDS
        while _alive(known) and time.monotonic() < deadline:
            time.sleep(0.1)


def watch(driver: int, driver_started: int) -> None:
    """The watchdog's loop: note the driver's descendants until the driver is gone, then
    end the ones still running."""
    me = os.getpid()
    known: dict[int, int] = {}
    while start_time(driver) == driver_started:
        known.update(descendants({driver}))
        known.pop(me, None)
        known = _alive(known)
        time.sleep(SCAN_SECONDS)
    known.pop(me, None)
    _end(known)


def start_watchdog() -> None:
    """Start (once per driver process) the watchdog that ends this process's helpers when
    it dies. It runs in its own session: a Ctrl-C or a kill of the driver's process group
    does not stop it before it has done its job."""
    if not sys.platform.startswith("linux") or os.getpid() in _started:
        return
    started = start_time(os.getpid())
    if started is None:
        return
    _started[os.getpid()] = subprocess.Popen(
        [sys.executable, "-m", "curate.core.lifeline", str(os.getpid()), str(started)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )


if __name__ == "__main__":
    watch(int(sys.argv[1]), int(sys.argv[2]))
