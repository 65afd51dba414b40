"""A fault-injecting HTTP reverse proxy on 127.0.0.1 in front of a real S3 server.

Every request is forwarded unchanged (method, path, headers, body) to the upstream server
and its answer returned unchanged, until the proxy is switched to refuse writes: from then
on every upload (PUT: PutObject, UploadPart, CopyObject, CreateBucket; POST: multipart
create and complete) is answered with a real S3 error, as a bucket does whose policy stopped
allowing ``s3:PutObject`` (403 AccessDenied) or that throttles uploads (503 SlowDown).
Reads, listings and deletes (DeleteObject, the DeleteObjects POST) still pass. The fault lasts until the test calls ``pass_through()``, so client
retries (botocore's, s3fs's) meet the same answer every time and the test is deterministic.

The switch can be flipped by the test, or armed with ``refuse_after(trigger)``: the proxy
itself starts refusing right after forwarding the first successful write whose key
satisfies ``trigger``, so no race with a polling test decides where the run is hit.
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

BODY_METHODS = ("PUT", "POST")  # forwarded with their body even when it is empty
MULTIPART_QUERY = ("uploads", "uploadId")  # POST ?uploads creates an upload, POST ?uploadId= completes it
# Hop-by-hop headers (RFC 9110 7.6.1) and those the proxy recomputes.
_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "expect",
        "content-length"}

ERRORS = {
    "AccessDenied": (403, "Access Denied"),
    "SlowDown": (503, "Please reduce your request rate."),
}


def error_body(code: str, resource: str, request_id: str) -> bytes:
    message = ERRORS[code][1]
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message><Resource>{resource}</Resource>"
        f"<RequestId>{request_id}</RequestId><HostId>fault-proxy</HostId></Error>"
    ).encode()


class S3FaultProxy:
    """``with S3FaultProxy(upstream_port) as proxy:`` then point clients at ``proxy.url``."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self._lock = threading.Lock()
        self._error: str | None = None  # the S3 error code answered to writes, None: pass through
        self._trigger: tuple[Callable[[str], bool], str] | None = None
        self.forwarded_writes: list[str] = []  # keys of uploads that reached the server
        self.refused_writes: list[str] = []  # keys of uploads answered with the error
        self.requests = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- switching ---------------------------------------------------------------------

    def refuse_writes(self, code: str = "AccessDenied") -> None:
        with self._lock:
            self._error, self._trigger = code, None

    def refuse_after(self, trigger: Callable[[str], bool], code: str = "AccessDenied") -> None:
        """Start refusing uploads once an upload of a key with ``trigger(key)`` succeeded."""
        with self._lock:
            self._error, self._trigger = None, (trigger, code)

    def pass_through(self) -> None:
        with self._lock:
            self._error, self._trigger = None, None

    @property
    def refusing(self) -> bool:
        return self._error is not None

    # -- serving -----------------------------------------------------------------------

    @staticmethod
    def is_upload(method: str, query: str) -> bool:
        keys = urllib.parse.parse_qs(query, keep_blank_values=True)
        return method == "PUT" or (method == "POST" and any(k in keys for k in MULTIPART_QUERY))

    def _decide(self, upload: bool, key: str) -> str | None:
        """The error to answer this request with, or None to forward it."""
        with self._lock:
            if upload and self._error:
                self.refused_writes.append(key)
                return self._error
            return None

    def _forwarded(self, upload: bool, key: str, status: int) -> None:
        if not upload or status >= 300:
            return
        with self._lock:
            self.forwarded_writes.append(key)
            if self._trigger and self._trigger[0](key):
                self._error, self._trigger = self._trigger[1], None

    def _handler_class(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

            def log_message(self, format, *args):  # noqa: A002 - the base class's name
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailer fields
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes, length: int | None = None):
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                proxy.requests += 1
                body = self._body()  # always read: the connection stays usable after a refusal
                url = urllib.parse.urlsplit(self.path)
                key, upload = urllib.parse.unquote(url.path), proxy.is_upload(self.command, url.query)
                error = proxy._decide(upload, key)
                if error:
                    request_id = uuid.uuid4().hex[:16].upper()
                    status = ERRORS[error][0]
                    self._reply(status, [("Content-Type", "application/xml"), ("x-amz-request-id", request_id)],
                                error_body(error, key, request_id))
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    upstream.request(self.command, self.path, body=body if body or self.command in BODY_METHODS else None,
                                     headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    out = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP]
                    declared = response.getheader("Content-Length")
                    length = int(declared) if self.command == "HEAD" and declared else None
                    proxy._forwarded(upload, key, response.status)
                    self._reply(response.status, out, data, length)
                finally:
                    upstream.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

        return Handler

    def __enter__(self) -> "S3FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
