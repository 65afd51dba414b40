"""Ctrl-C and SIGTERM stop a run cleanly and say how to resume; a resume says where it stands.

Every unit of work is committed atomically (docs/run-directory.md, Resume), so a run
stopped at any point resumes with the same command. What was missing is the saying of it:
an interrupted run ended silently with status 130, and a resume did not say how much was
already done (issue #30).
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading

from rich.console import Console

from curate.core import storage
from curate.core.rundir import RunDir


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal (SIGINT: Ctrl-C, or SIGTERM); ``signum`` says which,
    so a command line exits with 128 + signum as shells expect."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_received: list[int] = []  # the signals that stopped runs in this process, the latest last


def _raise(signum, frame):
    _received.append(signum)
    raise Interrupted(signum)


def received_signal() -> int:
    """The signal that stopped the run: the latest one received here (Ray's ``get`` may
    raise a plain KeyboardInterrupt in place of ours), SIGINT when none was (a Ctrl-C that
    img2dataset's handler took)."""
    return _received[-1] if _received else signal.SIGINT


def take_signals() -> None:
    """SIGINT and SIGTERM raise ``Interrupted`` again in this (main) thread: ``ray.init``
    installs its core worker's own SIGTERM handler, which aborts the driver (status -6) with
    a stack dump, so this runs again once Ray has started."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _raise)


@contextlib.contextmanager
def stops_cleanly_on_signals(console: Console):
    """SIGINT and SIGTERM raise ``Interrupted`` in the driver while the block runs (SIGTERM
    would otherwise end the process with no word); when one arrives, one line says that the
    committed work is kept and the same command resumes. Handlers are set only from the main
    thread (Python allows no other) and restored after."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _raise)
    try:
        yield
    except KeyboardInterrupt as error:
        name = signal.Signals(getattr(error, "signum", None) or received_signal()).name
        console.print(f"[bold yellow]stopped ({name}):[/bold yellow] the work committed so far is kept; "
                      "run the same command again to resume", soft_wrap=True)
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def resume_status(run: RunDir) -> str | None:
    """One line of what an earlier attempt of this run committed and what is left, read from
    the step markers and the committed files (curate.core.progress); None for a new run."""
    from curate.core.progress import downloaded_rows, prepared_rows, scored_rows

    if not storage.exists(run.config):
        return None
    done, left = [], []
    if storage.exists(run.marker("prepare")):
        prepared = json.loads(storage.read_text(run.marker("prepare")))
        to_fetch = prepared["rows"] - prepared.get("blocked", 0) - prepared.get("merged", 0)
        done.append(f"prepared {prepared['rows']:,} rows")
    else:
        to_fetch = None
        done.append(f"prepared {prepared_rows(run)():,} rows so far")
        left.append("prepare")
    downloaded = downloaded_rows(run)()
    if storage.exists(run.marker("download")):
        done.append(f"downloaded {downloaded:,} rows")
    else:
        done.append(f"downloaded {downloaded:,}" + (f" of {to_fetch:,} rows" if to_fetch is not None else " rows"))
        left.append("download" + (f" ({to_fetch - downloaded:,} rows)" if to_fetch is not None else ""))
    scored = scored_rows(run)()
    done.append(f"scored {scored:,} rows")
    if scored < downloaded or "download" in " ".join(left):
        left.append(f"score ({downloaded - scored:,} downloaded rows)" if scored < downloaded else "score")
    left += ["manifest", "output"]
    finished = " (it finished: the manifest and output are made again)" if storage.exists(run.summary) else ""
    return f"resume: already committed: {', '.join(done)}; left: {', '.join(left)}{finished}"
