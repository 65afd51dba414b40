"""A real HTTP server on 127.0.0.1 serving a corpus of bodies, for the demo and the tests.

Routes are registered as ``path -> Route``; a Route carries the body and how to answer
(status, content type, delay, redirect; failing its first requests; never answering). The
server runs in a daemon thread and stops itself on ``close()`` (or leaving the ``with``
block). It binds only to loopback. ``requests`` lists every request target in order and
``log`` every (``time.monotonic()``, target) as it arrived.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Route:
    body: bytes = b""
    status: int = 200
    content_type: str = "image/jpeg"
    delay: float = 0.0  # seconds before the first byte (a slow endpoint)
    redirect_to: str | None = None  # Location header; use with status 301/302
    headers: tuple[tuple[str, str], ...] = ()
    fail_first: int = 0  # answer the first N requests for this path with fail_status (a flaky server)
    fail_status: int = 503
    fail_headers: tuple[tuple[str, str], ...] = ()  # e.g. (("Retry-After", "2"),)
    stall: bool = False  # read the request and never answer (until the server closes)
    stall_first: int = 0  # never answer the first N requests for this path, then answer normally


class _Handler(BaseHTTPRequestHandler):
    routes: dict[str, Route] = {}
    requests: list[str] = []  # request targets as received (path and query, still encoded)
    log: list[tuple[float, str]] = []
    seen: dict[str, int] = {}  # requests per decoded path so far
    in_flight: dict[str, int] = {}  # requests being answered now, per Host header
    max_in_flight: dict[str, int] = {}  # the most ever at once, per Host header
    lock = threading.Lock()
    closing = threading.Event()
    latency: float = 0.0
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        with self.lock:
            self.in_flight[host] = self.in_flight.get(host, 0) + 1
            self.max_in_flight[host] = max(self.max_in_flight.get(host, 0), self.in_flight[host])
        try:
            self._answer()
        finally:
            with self.lock:
                self.in_flight[host] -= 1

    def _answer(self) -> None:
        # Routes are keyed by the decoded path, as a static file server finds its files.
        path = urllib.parse.unquote(self.path.split("?", 1)[0])
        with self.lock:
            self.requests.append(self.path)
            self.log.append((time.monotonic(), self.path))
            self.seen[path] = nth = self.seen.get(path, 0) + 1
        route = self.routes.get(path)
        if self.latency:
            time.sleep(self.latency)
        if route is None:
            route = Route(body=b"not found", status=404, content_type="text/plain")
        if route.stall or nth <= route.stall_first:
            self.closing.wait()  # a server that accepted the request and went silent
            return
        if nth <= route.fail_first:
            route = Route(body=b"try again later", status=route.fail_status, content_type="text/plain",
                          headers=route.fail_headers)
        if route.delay:
            time.sleep(route.delay)
        try:
            self.send_response(route.status)
            if route.redirect_to:
                self.send_header("Location", route.redirect_to)
            self.send_header("Content-Type", route.content_type)
            self.send_header("Content-Length", str(len(route.body)))
            for name, value in route.headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(route.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeouts): nothing to do

    def log_message(self, *args) -> None:  # keep test and demo output clean
        return


class CorpusServer:
    """Serve ``routes`` on 127.0.0.1 at a free port; ``latency`` is added to every request."""

    def __init__(self, routes: dict[str, Route], latency: float = 0.0):
        self.requests: list[str] = []  # every request target received, in order
        self.log: list[tuple[float, str]] = []  # (time.monotonic(), target) of every request
        self.max_in_flight: dict[str, int] = {}  # the most requests answered at once, per Host header
        self._closing = threading.Event()
        handler = type("Handler", (_Handler,), {
            "routes": dict(routes), "latency": latency, "requests": self.requests, "log": self.log, "seen": {},
            "lock": threading.Lock(), "closing": self._closing, "in_flight": {}, "max_in_flight": self.max_in_flight})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def start(self) -> "CorpusServer":
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()  # stalled requests end
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "CorpusServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
