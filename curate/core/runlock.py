"""One run at a time in a run directory: a lock for local directories, a lease in buckets.

Two ``curate run`` on one ``--out`` write the same download shards and scored parts and
leave committed files that don't read; so the second one is refused, saying who holds
the directory. A holder that died leaves nothing that blocks the next run:

- local: ``RUN/_lock`` is locked with ``flock``, which the kernel releases when the
  holder dies, however it dies (SIGKILL included); the file holds the holder's pid, host
  and start time for the message. (On NFS, flock works through the NFS lock manager.)
- bucket (s3://, gs://): ``RUN/_lock`` is a lease object ``{owner, host, pid, expires}``
  renewed every ``RENEW_SECONDS`` while the run goes and valid for ``LEASE_SECONDS``. A
  run takes it over once it has expired, or at once when its holder ran on this machine
  and that process is gone. Creating and taking over are conditional writes on S3
  (``If-None-Match: *``, ``If-Match: <etag>``), so two runs racing for a stale lease
  can't both win. Other object stores get a plain write and a read-back check.
  Machines sharing a bucket run directory need clocks that agree to well within
  ``LEASE_SECONDS``.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

from curate.core import storage
from curate.core.config import ConfigError
from curate.core.lifeline import start_time

LOCK_NAME = "_lock"
LEASE_SECONDS = 60.0
RENEW_SECONDS = 15.0


class RunInUse(ConfigError):
    """Another run holds the run directory."""


def machine() -> str:
    """This machine and pid namespace: a pid named in a lock means the same process here
    only if the hostname, the kernel's boot id and the pid namespace all match."""
    parts = [socket.gethostname()]
    for path in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        with contextlib.suppress(OSError):
            parts.append(Path(path).read_text().strip() if "boot_id" in path else os.readlink(path))
    return " ".join(parts)


def _holder_info() -> dict:
    pid = os.getpid()
    return {"pid": pid, "pid_start": start_time(pid), "host": socket.gethostname(), "machine": machine(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _describe(holder: dict) -> str:
    if not holder:
        return "another curate run"
    return (f"another curate run (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"since {holder.get('started', '?')})")


def holder_is_gone(holder: dict) -> bool:
    """True when ``holder`` ran on this machine and that process no longer runs (a pid
    reused by another process has another start time)."""
    if holder.get("machine") != machine() or not isinstance(holder.get("pid"), int):
        return False
    return start_time(holder["pid"]) != holder.get("pid_start")


class LocalLock:
    """flock on ``RUN/_lock``; see the module docstring."""

    def __init__(self, root: str):
        self.root = root
        self.path = os.path.join(root, LOCK_NAME)
        self.fd: int | None = None
        self.created_root = False

    def acquire(self) -> "LocalLock":
        if not os.path.isdir(self.root):
            os.makedirs(self.root, exist_ok=True)
            self.created_root = True
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_json(lambda: os.pread(fd, 65536, 0))
                os.close(fd)
                raise RunInUse(
                    f"{self.root} is in use by {_describe(holder)}: two runs in one run directory overwrite "
                    "each other's work. Wait for that run to finish or stop it (a run that died releases the "
                    "directory by itself), or use another --out."
                ) from None
            # The holder before us may have removed the file between our open and our
            # flock: then we locked a file nobody else will see; start over.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder_info()).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # while still holding it: see the inode check in acquire
        os.close(self.fd)
        self.fd = None
        if self.created_root:  # nothing was written (an input error stopped the run): leave nothing
            with contextlib.suppress(OSError):
                os.rmdir(self.root)


def _read_json(read) -> dict:
    try:
        value = json.loads(read() or b"{}")
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


class BucketLease:
    """A lease object in a bucket; see the module docstring."""

    def __init__(self, root: str, lease_seconds: float = LEASE_SECONDS, renew_seconds: float = RENEW_SECONDS,
                 on_lost=None):
        """``on_lost()`` runs (in the renewing thread) if another run takes the lease over;
        by default it interrupts the main thread, which stops the run."""
        self.root, self.uri = root, storage.join(root, LOCK_NAME)
        self.on_lost = on_lost or _interrupt_main
        self.fs, self.path = storage.fs_and_path(self.uri)
        self.lease_seconds, self.renew_seconds = lease_seconds, renew_seconds
        self.owner = uuid.uuid4().hex
        self.etag: str | None = None
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the object --

    def _body(self) -> bytes:
        return json.dumps({**_holder_info(), "owner": self.owner, "expires": time.time() + self.lease_seconds}).encode()

    def _s3(self) -> bool:
        return "s3" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def _put(self, if_match: str | None) -> None:
        """Write our lease: only if there is none (``if_match`` None) or only if it is still
        the object with ETag ``if_match``. FileExistsError / OSError(EINVAL) if not."""
        body = self._body()
        if self._s3():
            bucket, key, _ = self.fs.split_path(self.path)
            condition = {"IfMatch": if_match} if if_match else {"IfNoneMatch": "*"}
            answer = self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body, **condition)
            self.etag = answer.get("ETag")
            return
        # Other stores: no conditional write; write, then read back to see who won.
        if if_match is None and self.fs.exists(self.path):
            raise FileExistsError(self.uri)
        self.fs.pipe_file(self.path, body)
        time.sleep(0.5)
        current, self.etag = self._read()
        if current.get("owner") != self.owner:
            raise OSError(errno.EINVAL, f"{self.uri} was taken by another run")

    def _read(self) -> tuple[dict, str | None]:
        self.fs.invalidate_cache(self.path)
        try:
            info = self.fs.info(self.path)
            body = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return {}, None
        etag = info.get("ETag") or info.get("etag") or info.get("generation") or str(info.get("mtime"))
        return _read_json(lambda: body), etag

    # -- the protocol --

    def acquire(self) -> "BucketLease":
        for _ in range(3):
            try:
                self._put(None)
                break
            except FileExistsError:
                pass
            holder, etag = self._read()
            if holder and not (float(holder.get("expires", 0) or 0) < time.time() or holder_is_gone(holder)):
                until = datetime.datetime.fromtimestamp(float(holder["expires"]), datetime.timezone.utc)
                raise RunInUse(
                    f"{self.root} is in use by {_describe(holder)}: two runs in one run directory overwrite "
                    "each other's work. Wait for that run to finish or stop it; if it died, its lease "
                    f"expires at {until.isoformat(timespec='seconds')} and a run started after that takes over."
                )
            try:
                self._put(etag)  # take over the stale (or unreadable) lease, unless someone else just did
                break
            except FileNotFoundError:
                continue  # it was removed meanwhile: create it afresh
            except OSError as error:
                if error.errno != errno.EINVAL:
                    raise
                raise RunInUse(f"{self.root} was just taken by another curate run; use another --out") from None
        else:
            raise RunInUse(f"{self.root}: could not take its lease (it keeps changing); is another run starting?")
        self._thread = threading.Thread(target=self._renew, name="curate-lease", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_seconds):
            try:
                self._put(self.etag)
            except Exception as error:  # noqa: BLE001 - anything: we may no longer hold the directory
                current, _ = self._read()
                if current.get("owner") == self.owner:
                    continue  # a transient error; the lease is still ours, try again next time
                if not current:
                    return  # removed with the run directory (a fresh run stopped by its input)
                self.lost = f"the lease on {self.root} was taken over by {_describe(current)} ({error})"
                print(f"curate: {self.lost}; stopping this run", file=sys.stderr, flush=True)
                self.on_lost()
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        current, _ = self._read()
        if current.get("owner") == self.owner:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(self.path)


def _interrupt_main() -> None:
    import _thread

    _thread.interrupt_main()


def acquire(root: str) -> LocalLock | BucketLease:
    """Hold the run directory ``root`` (local path or bucket URI) for this process;
    raises RunInUse, naming the holder, if another run holds it."""
    return (BucketLease(root) if storage.is_remote(root) else LocalLock(root)).acquire()


@contextlib.contextmanager
def hold(root: str):
    """``acquire`` for the length of a ``with`` block."""
    lock = acquire(root)
    try:
        yield lock
    finally:
        lock.release()
