"""Helpers shared by the bench/ scripts: machine description, fresh-subprocess runs,
peak RSS over a process tree (driver + Ray workers), result tables.

Every measurement runs in a fresh Python subprocess (no warm caches, no Ray left over from
another measurement); the subprocess writes its figures as JSON to a file the parent reads.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ENV = {
    "RAY_AUTH_MODE": "disabled",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "RAY_DEDUP_LOGS": "0",
}
for _k, _v in ENV.items():
    os.environ.setdefault(_k, _v)


def machine() -> dict:
    """CPU model, cores, RAM and the load average now (the machine is shared and busy)."""
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = int(re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text()).group(1))
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kib / 2**20, 1),
        "python": platform.python_version(),
        "loadavg": list(os.getloadavg()),
    }


def describe(start: dict, end_load: list[float]) -> str:
    return (
        f"{start['cpu']}, {start['cores']} cores, {start['ram_gib']} GiB RAM, Python {start['python']}; "
        f"load average (1/5/15 min) {fmt_load(start['loadavg'])} at start, {fmt_load(end_load)} at end "
        "(a shared machine, busy with other engineers' jobs)"
    )


class Session:
    """One benchmark invocation: prints the load average at the start; ``end()`` prints the
    machine, its load at the end and the total time; ``meta`` starts every JSON result."""

    def __init__(self):
        self.machine = machine()
        self.began = time.perf_counter()
        self.load_end: list[float] | None = None
        print(f"load average at start: {self.machine['loadavg']}", flush=True)

    def end(self, prefix: str = "", suffix: str = "") -> None:
        self.load_end = list(os.getloadavg())
        print()
        print(describe(self.machine, self.load_end))
        print(f"{prefix}total {(time.perf_counter() - self.began) / 60:.1f} min{suffix}\n")

    @property
    def meta(self) -> dict:
        return {"machine": self.machine, "load_end": self.load_end}


def fmt_load(load) -> str:
    return "/".join(f"{x:.1f}" for x in load)


def run_sub(script: str, *argv: str, timeout: float | None = None) -> dict:
    """Run ``script _measure ...argv --result FILE`` in a fresh interpreter; return its JSON."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result = f.name
    try:
        cmd = [sys.executable, script, *argv, "--result", result]
        subprocess.run(cmd, check=True, timeout=timeout, env={**os.environ, **ENV})
        return json.loads(Path(result).read_text())
    finally:
        Path(result).unlink(missing_ok=True)


# --- peak RSS over a process tree -------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _tree(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _children(p)
    return seen


def _status(pid: int) -> dict | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(re.findall(r"^(\w+):\s+(\d+) kB", text, re.M))
    name = re.search(r"^Name:\s+(.*)$", text, re.M).group(1)
    return {"name": name, "hwm": int(fields.get("VmHWM", 0)) * 1024, "rss": int(fields.get("VmRSS", 0)) * 1024,
            "shared": (int(fields.get("RssFile", 0)) + int(fields.get("RssShmem", 0))) * 1024}


def _title(pid: int) -> str:
    """The process title: Ray renames its workers ``ray::Class.method`` / ``ray::task``."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:70]


class TreeMemory:
    """Polls the process tree under ``pid`` (this process by default: the driver, and the
    Ray head, raylet and workers it started, which are its descendants).

    ``peak_hwm_sum``: the sum over every process ever seen of its VmHWM (each process's own
    peak; an upper bound of the tree's simultaneous peak, and it counts shared pages, e.g.
    the object store's /dev/shm mappings, once per process that maps them).
    ``peak_rss_sum``: the largest simultaneous sum of VmRSS seen by the poller.
    ``peak_private_sum``: the largest simultaneous sum of (RSS - file and shmem pages).
    """

    def __init__(self, pid: int | None = None, interval: float = 0.25, label=None):
        self.pid = pid or os.getpid()
        self.interval = interval
        self.label = label  # callable -> current phase name; peaks are also kept per phase
        self.by_label: dict[str, dict] = {}
        self.hwm: dict[int, tuple[str, int]] = {}
        self.peak_rss_sum = self.peak_private_sum = 0
        self.at_peak: list[dict] = []  # the processes at the moment of peak_rss_sum
        self.phase_at_peak = None
        self._last: str | None = None  # the last phase label seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        rss = private = 0
        procs = []
        for p in _tree(self.pid):
            s = _status(p)
            if s is None:
                continue
            self.hwm[p] = (s["name"], max(s["hwm"], self.hwm.get(p, ("", 0))[1]))
            rss += s["rss"]
            private += s["rss"] - s["shared"]
            procs.append((p, s))
        name = self._phase()
        if rss > self.peak_rss_sum:
            self.phase_at_peak = name
            self.at_peak = [{"title": _title(p), "rss_bytes": s["rss"], "private_bytes": s["rss"] - s["shared"]}
                            for p, s in sorted(procs, key=lambda ps: -ps[1]["rss"])]
        self.peak_rss_sum = max(self.peak_rss_sum, rss)
        self.peak_private_sum = max(self.peak_private_sum, private)
        if self.label:
            peak = self.by_label.setdefault(name, {"rss_sum_bytes": 0, "private_sum_bytes": 0, "driver_rss_bytes": 0})
            peak["rss_sum_bytes"] = max(peak["rss_sum_bytes"], rss)
            peak["private_sum_bytes"] = max(peak["private_sum_bytes"], private)
            own = _status(self.pid)
            if own:
                peak["driver_rss_bytes"] = max(peak["driver_rss_bytes"], own["rss"])

    def _phase(self) -> str:
        """The label now; between two labelled phases, "after <the last one>"."""
        if not self.label:
            return "-"
        try:
            name = self.label()
        except Exception:  # noqa: BLE001 - a label read while a file is being replaced
            name = None
        if name:
            self._last = name
            return name
        return f"after {self._last}" if self._last else "-"

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._sample()
        self._stop.set()
        self._thread.join()

    def report(self) -> dict:
        by_name: dict[str, int] = {}
        for name, hwm in self.hwm.values():
            by_name[name] = by_name.get(name, 0) + hwm
        return {
            "peak_hwm_sum_bytes": sum(h for _, h in self.hwm.values()),
            "peak_rss_sum_bytes": self.peak_rss_sum,
            "peak_private_sum_bytes": self.peak_private_sum,
            "driver_hwm_bytes": self.hwm.get(self.pid, ("", 0))[1],
            "processes": len(self.hwm),
            "hwm_by_name_bytes": dict(sorted(by_name.items(), key=lambda kv: -kv[1])[:8]),
            "peaks_by_phase": self.by_label,
            "processes_at_peak": self.at_peak,
            "phase_at_peak": self.phase_at_peak,
        }


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def tree_cpu_seconds(pid: int | None = None) -> float:
    """user + system CPU seconds of every live process under ``pid`` (this one by default).

    On a shared, overloaded machine wall time measures the neighbours as much as the code;
    CPU time measures the work done. (Processes that exited before the call are missed.)"""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in _tree(pid or os.getpid()):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / tick
