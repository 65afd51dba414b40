"""A hostile corpus: bodies, redirects, hosts and input cells built to break a downloader or
a pipeline, each with the exact (status, reason) the manifest must record for it.

Everything is served on loopback. Three listeners:
- ``CorpusServer`` on 127.0.0.1 (allowed by ``allowed_networks``): fixed bodies, redirects;
- ``StreamServer`` on 127.0.0.1: bodies without a length that never end (fast or trickling);
- a canary ``StreamServer`` on 127.0.0.2 (NOT allowed): it must never see a request.
Names resolve through ``download.resolve`` and only ever to 127.x addresses, so no test
traffic can leave the machine even if a check were broken.
"""

from __future__ import annotations

import struct
import threading
import time
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from corpus import image_bytes
from curate.synth.http_server import CorpusServer, Route

MAX_BODY = 256 * 1024
MAX_PIXELS = 1_000_000
ALLOWED = "127.0.0.1/32"
CANARY_HOST = "127.0.0.2"
GOOD = "a photo of a red bicycle leaning on a wall"


def png_declaring(width: int, height: int) -> bytes:
    """A tiny, valid-header PNG that declares width x height (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width * 3 + 1) * 4)  # a few rows; the decoder would want all
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class _StreamHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # no Content-Length: the body ends when the server closes
    hits: list[str]

    def do_GET(self) -> None:  # noqa: N802
        self.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.end_headers()
        try:
            if self.path.startswith("/endless"):
                while True:  # 1 MiB at a time, forever: only a body cap stops this
                    self.wfile.write(b"\xff" * 2**20)
            while True:  # one byte every 0.1 s, forever: each read is well inside the timeout
                self.wfile.write(b"\xff")
                self.wfile.flush()
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it must

    def log_message(self, *args) -> None:
        return


class StreamServer:
    """Endless bodies on ``host``; ``hits`` lists every path requested (the canary's proof)."""

    def __init__(self, host: str = "127.0.0.1"):
        self.hits: list[str] = []
        handler = type("Handler", (_StreamHandler,), {"hits": self.hits})
        self._server = ThreadingHTTPServer((host, 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.host, self.port = self._server.server_address[:2]

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class HostileRow:
    url: object  # str, None, or bytes
    caption: object  # str, None, or bytes (not UTF-8)
    status: str
    reason: str | None  # the exact reason; "{first}" is replaced by the first row's sample_id


def routes(files: CorpusServer | None = None) -> dict[str, Route]:
    jpeg = image_bytes("JPEG", seed=41)
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="4000" height="4000"><rect width="9" height="9"/></svg>'
    return {
        "/ok.jpg": Route(jpeg),
        "/traversal/../../etc/passwd.jpg": Route(image_bytes("JPEG", seed=42)),
        "/bomb-huge.png": Route(png_declaring(50_000, 50_000), content_type="image/png"),
        "/bomb-over-cap.png": Route(png_declaring(2_000, 2_000), content_type="image/png"),
        "/big.jpg": Route(b"\xff" * (MAX_BODY + 1)),
        "/svg.jpg": Route(svg),
        "/html.jpg": Route(b"<!doctype html><html><body>hello</body></html>"),
        "/empty.jpg": Route(b""),
        "/slow.jpg": Route(jpeg, delay=6.0),
        "/loop": Route(status=302, redirect_to="/loop", content_type="text/plain"),
        **{f"/chain/{i}": Route(status=302, redirect_to=f"/chain/{i + 1}", content_type="text/plain") for i in range(12)},
        "/to-file": Route(status=302, redirect_to="file:///etc/passwd", content_type="text/plain"),
    }


def add_redirects_to_canary(server_routes: dict[str, Route], canary: StreamServer) -> None:
    server_routes["/to-canary"] = Route(status=302, redirect_to=canary.url("/redirected"), content_type="text/plain")
    server_routes["/to-canary-name"] = Route(
        status=302, redirect_to=canary.url("/redirected-name", host="internal.test"), content_type="text/plain"
    )


def resolve_map() -> dict[str, str]:
    """download.resolve for the hostile run: only 127.x targets, ever."""
    return {"images.test": "127.0.0.1", "internal.test": CANARY_HOST}


def hostile_rows(files: CorpusServer, streams: StreamServer, canary: StreamServer) -> list[HostileRow]:
    u = files.url
    named = files.url("/ok.jpg").replace("127.0.0.1", "images.test")
    many_words = " ".join(["word"] * 300)  # over max_caption_words, under max_caption_chars
    return [
        HostileRow(u("/ok.jpg"), GOOD, "kept", None),
        HostileRow(named, GOOD, "duplicate", "duplicate_of:{first}"),
        HostileRow(u("/ok.jpg"), GOOD, "duplicate", "same_url_as:{first}"),  # a duplicate url: fetched once
        HostileRow(u("/traversal/../../etc/passwd.jpg"), "a photo of ../../etc/passwd and ../../../tmp/x", "kept", None),
        HostileRow(u("/bomb-huge.png"), GOOD, "download_failed", f"image_too_large:{MAX_PIXELS}"),
        HostileRow(u("/bomb-over-cap.png"), GOOD, "download_failed", f"image_too_large:{MAX_PIXELS}"),
        HostileRow(u("/big.jpg"), GOOD, "download_failed", f"body_too_large:{MAX_BODY}"),
        HostileRow(streams.url("/endless"), GOOD, "download_failed", f"body_too_large:{MAX_BODY}"),
        HostileRow(streams.url("/trickle"), GOOD, "download_failed", "timeout:max_fetch_seconds"),
        HostileRow(u("/slow.jpg"), GOOD, "download_failed", "timeout"),
        HostileRow(u("/svg.jpg"), GOOD, "download_failed", "not_an_image"),
        HostileRow(u("/html.jpg"), GOOD, "download_failed", "not_an_image"),
        HostileRow(u("/empty.jpg"), GOOD, "download_failed", "not_an_image:empty_body"),
        HostileRow(u("/loop"), GOOD, "download_failed", "too_many_redirects"),
        HostileRow(u("/chain/0"), GOOD, "download_failed", "too_many_redirects"),
        HostileRow(u("/to-file"), GOOD, "blocked", "scheme_not_allowed:file"),
        HostileRow(u("/to-canary"), GOOD, "blocked", f"redirect_to_private_host:{CANARY_HOST}"),
        HostileRow(u("/to-canary-name"), GOOD, "blocked", f"redirect_to_private_host:{CANARY_HOST}"),
        HostileRow(canary.url("/by-name", host="internal.test"), GOOD, "blocked", f"private_host:{CANARY_HOST}"),
        HostileRow(canary.url("/literal"), GOOD, "blocked", f"private_host:{CANARY_HOST}"),
        HostileRow(u("/ok.jpg") + "?many-words", many_words, "filtered", "caption_too_long:256"),
        HostileRow(u("/ok.jpg") + "?3mb-words", "a long caption " * 200_000, "filtered", "caption_too_long:4096_chars"),
        HostileRow(u("/ok.jpg") + "?3mb-token", "x" * 3_000_000, "filtered", "caption_too_long:4096_chars"),
        HostileRow(u("/ok.jpg") + "?latin1", "caf\xe9 au lait".encode("latin-1"), "filtered", "caption_bad_encoding"),
        HostileRow(u("/ok.jpg") + "?null-caption", None, "filtered", "caption_empty"),
        HostileRow(None, GOOD, "blocked", "url_missing"),
        HostileRow("file:///etc/passwd", "../../etc/passwd", "blocked", "scheme_not_allowed:file"),
    ]


def hostile_settings() -> list[str]:
    """Config overrides: private hosts refused except the test server's address."""
    return [
        "download.allow_private_hosts=false",
        f"download.allowed_networks=['{ALLOWED}']",
        "download.resolve={" + ", ".join(f"'{k}': '{v}'" for k, v in resolve_map().items()) + "}",
        f"download.max_body_bytes={MAX_BODY}",
        f"download.max_image_pixels={MAX_PIXELS}",
        "download.max_fetch_seconds=3",
        "download.max_redirects=5",
    ]
