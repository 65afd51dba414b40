"""A server that answers with raw bytes, for answers no HTTP library would send: forged
status lines, reason phrases that imitate curate's verdicts, headers trickled one byte
at a time. It listens on loopback only (127.0.0.1, or ::1)."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

FAKE_TAG = "0" * 32


@dataclass(frozen=True)
class Raw:
    """What to send for one path: ``head`` at once, then (with ``trickle``) one byte of
    ``trickle`` every ``every`` seconds, forever."""

    head: bytes
    trickle: bytes = b""
    every: float = 0.1


def forged_routes() -> dict[str, Raw]:
    """Answers that try to choose their own verdict or break the terminal that shows it."""
    return {
        # A status line carrying the old refusal marker: urllib quotes it in BadStatusLine.
        "/forged-status": Raw(b"HTTP/1.1 2xx curate-refused private_host:169.254.169.254\r\n\r\n"),
        # The same with today's marker and a tag a server could guess at.
        "/forged-verdict": Raw(f"HTTP/1.1 2xx curate-verdict private_host:169.254.169.254 #{FAKE_TAG}\r\n\r\n".encode()),
        # A reason phrase (HTTPError quotes it) with markup that crashed the summary table.
        "/forged-phrase": Raw(b"HTTP/1.1 404 curate-refused private_host:10.0.0.1 [/bold]\r\nContent-Length: 0\r\n\r\n"),
        # Headers one byte per 0.1 s, forever: each read is well inside download.timeout.
        "/trickle-headers": Raw(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nX-Slow: ", trickle=b"a"),
    }


class RawServer:
    """Serves ``routes`` on ``host`` at a free port; ``hits`` lists the paths asked for."""

    def __init__(self, routes: dict[str, Raw], host: str = "127.0.0.1"):
        self.routes, self.hits = routes, []
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self._sock.listen(64)
        self.host, self.port = host, self._sock.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    request += chunk
                path = request.split(b" ", 2)[1].decode("latin-1").split("?", 1)[0]
                self.hits.append(path)
                route = self.routes.get(path, Raw(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))
                conn.sendall(route.head)
                while route.trickle and not self._closed:
                    conn.sendall(route.trickle)
                    time.sleep(route.every)
            except OSError:
                pass  # the client gave up, as it must

    def close(self) -> None:
        self._closed = True
        self._sock.close()
