"""``curate query`` runs its SQL in a child process: the terminal's Ctrl-C and ``--timeout``
end it at once, and DuckDB failing hard ends only the child.

DuckDB does not stop a running query on SIGINT (``SELECT count(*) FROM range(1e13)`` ran on),
and some calls abort the whole process from C++ (``CALL enable_logging(storage='file')`` on a
locked connection: SIGABRT, exit 134, at the next statement that logs). The parent holds no
DuckDB: it starts ``python -m curate.pipeline.query_process``, which opens the run's views
(curate.core.views, locked unless external access is allowed), runs the SQL and writes the
result as an Arrow IPC stream to a file the parent names. The parent kills the child on
Ctrl-C (``QueryInterrupted``) or when ``timeout`` seconds pass, and turns any other way the
child ends into one ``QueryError`` line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile

import pyarrow as pa

from curate.core.views import QueryError

_ERROR_MARK = "curate-query-error:"


class QueryInterrupted(QueryError):
    """The user pressed Ctrl-C: the query was stopped."""


def run_query_in_child(run_root: str, sql: str, external_access: bool = False,
                       timeout: float | None = None) -> pa.Table:
    """The result of ``sql`` over the views of the run at ``run_root``, computed in a child
    process. Raises QueryError (one line) for SQL that fails or is refused, a child that
    dies, or a query past ``timeout`` seconds; QueryInterrupted on Ctrl-C."""
    with tempfile.TemporaryDirectory(prefix="curate-query-") as folder:
        result = os.path.join(folder, "result.arrow")
        request = json.dumps({"run": run_root, "sql": sql, "external": external_access, "out": result})
        child = subprocess.Popen([sys.executable, "-m", "curate.pipeline.query_process"], stdin=subprocess.PIPE,
                                 stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                 start_new_session=True)  # our Ctrl-C is handled here, not by its DuckDB
        try:
            _, errors = child.communicate(request, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(child)
            raise QueryError(f"query stopped after {timeout:g} s (--timeout)") from None
        except KeyboardInterrupt:
            _kill(child)
            raise QueryInterrupted("query interrupted (Ctrl-C)") from None
        if child.returncode == 0:
            with pa.memory_map(result) as source:
                return pa.ipc.open_stream(source).read_all()
        said = [line[len(_ERROR_MARK):] for line in (errors or "").splitlines() if line.startswith(_ERROR_MARK)]
        if said:
            raise QueryError(said[-1])
        how = (f"signal {signal.Signals(-child.returncode).name}" if child.returncode < 0
               else f"exit status {child.returncode}")
        last = next((line for line in reversed((errors or "").splitlines()) if line.strip()), "")
        raise QueryError(f"query failed: DuckDB ended the query process ({how})" + (f": {last.strip()}" if last else ""))


def _kill(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.wait()


def _main() -> None:
    """The child: read the request on stdin, write the result, or one error line on stderr."""
    from curate.core.views import run_query

    request = json.loads(sys.stdin.read())
    try:
        table = run_query(request["run"], request["sql"], request["external"])
    except QueryError as error:
        sys.stderr.write(_ERROR_MARK + str(error).replace("\n", " ") + "\n")
        sys.exit(2)
    with pa.OSFile(request["out"], "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


if __name__ == "__main__":
    _main()
