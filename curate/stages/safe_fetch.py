"""Safe fetching for img2dataset: connect-time address checks, bounded redirects, a body
cap, a whole-response deadline, and a declared-pixel check before any image is decoded.

img2dataset fetches with ``urllib.request.urlopen``, i.e. through the process-wide urllib
opener of whichever process runs a shard (a Ray worker). It has no hook for its HTTP
client, so the policy travels with the shard: ``SafeDownloader`` is img2dataset's
Downloader carrying a ``FetchPolicy``, and on arrival in a worker it installs the opener
built here before it fetches anything (``install``). ``downloader_with_policy`` makes
img2dataset build a SafeDownloader for the length of one ``download()`` call.

(``SafeDownloader`` lives in ``curate.stages.safe_downloader``: it imports img2dataset.)

The address check happens on the resolved address *before* connecting (so nothing is
ever sent to a refused address) and again on the socket's peer address after
connecting; the socket is opened to the checked address itself, never re-resolved, so a
DNS answer that changes between check and connect (rebinding) can't slip through. Every
hop of a redirect chain goes through the same check.

Time: inside a fetch made under a deadline (``curate.stages.fetch_deadline``: the request's
``max_fetch_seconds`` from before its connect, or its download shard's deadline, whichever
comes first) a connect waits at most the time left, and the connected socket is handed to
the deadline's watchdog, which shuts it down when the time is up; the body reader checks the
same deadline between reads. Every answer's status and ``Retry-After`` are noted for the
caller (``AnswerRecorder``).

Refusals raise ``FetchRefused``; img2dataset records ``str(error)`` as the row's
error message, and ``curate.stages.download.download_reason`` reads the reason back.
"""

from __future__ import annotations

import functools
import http.client
import io
import ipaddress
import socket
import threading
import time
import urllib.request
import warnings
from dataclasses import dataclass, field

from curate.schemas.reasons import reason
from curate.stages.content_encoding import ContentRefused, decode_content
from curate.stages.fetch_deadline import Deadline, current_deadline, note_answer, watch_socket
from curate.stages.precheck import ALLOWED_SCHEMES, AddressPolicy

_CHUNK = 64 * 1024
MARK = "curate-refused"  # prefix of every refusal message; download_reason parses it


class FetchRefused(OSError):
    """A fetch curate refuses to make or finish; ``reason`` is the manifest reason."""

    def __init__(self, code: str, detail: object | None = None):
        self.reason = reason(code, detail)
        super().__init__(f"{MARK} {self.reason}")

    @classmethod
    def by(cls, deadline: Deadline) -> "FetchRefused":
        """The refusal of a fetch ``deadline`` ended (its cause: ``code`` or ``code:detail``)."""
        code, _, detail = deadline.cause.partition(":")
        return cls(code, detail or None)


@dataclass(frozen=True)
class FetchPolicy:
    addresses: AddressPolicy = field(default_factory=AddressPolicy)
    resolve: tuple[tuple[str, str], ...] = ()  # host -> address overrides (curl --resolve)
    max_body_bytes: int = 32 * 2**20
    max_fetch_seconds: float = 60.0
    max_redirects: int = 5
    max_image_pixels: int = 178_956_970
    max_decode_bytes: int = 512 * 2**20  # see curate.stages.image_decode

    @classmethod
    def from_config(cls, cfg) -> "FetchPolicy":
        """From a ``DownloadConfig``."""
        return cls(
            addresses=AddressPolicy(cfg.allow_private_hosts, tuple(cfg.allowed_networks)),
            resolve=tuple(sorted(cfg.resolve.items())),
            max_body_bytes=cfg.max_body_bytes,
            max_fetch_seconds=cfg.max_fetch_seconds,
            max_redirects=cfg.max_redirects,
            max_image_pixels=cfg.max_image_pixels,
            max_decode_bytes=cfg.max_decode_bytes,
        )

    def candidates(self, host: str, port: int) -> list[tuple[int, tuple]]:
        """(family, sockaddr) to try for host:port: the override, or what DNS answers."""
        override = dict(self.resolve).get(host.lower().rstrip("."))
        if override is not None:
            family = socket.AF_INET6 if ipaddress.ip_address(override).version == 6 else socket.AF_INET
            return [(family, (override, port))]
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return [(family, sockaddr) for family, _, _, _, sockaddr in infos]


def _refusal(address, redirected: bool) -> FetchRefused:
    return FetchRefused("redirect_to_private_host" if redirected else "private_host", address)


def open_checked_socket(address, timeout, source_address=None, *, policy: FetchPolicy, redirected: bool):
    """socket.create_connection, but only to addresses the policy allows (checked before
    the connect, and on the peer address after it)."""
    host, port = address
    refused, last_error = None, None
    deadline = current_deadline()
    for family, sockaddr in policy.candidates(host, port):
        if not policy.addresses.allows(ipaddress.ip_address(sockaddr[0])):
            refused = refused or _refusal(sockaddr[0], redirected)
            continue  # never connect to it
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if deadline is not None and deadline.passed():
                sock.close()
                raise FetchRefused.by(deadline)
            if deadline is not None:  # the connect gets at most the time left
                step = deadline.remaining() if timeout is socket._GLOBAL_DEFAULT_TIMEOUT else min(timeout, deadline.remaining())
                sock.settimeout(step)
            elif timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            if deadline is not None and timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)  # each read gets download.timeout; the watchdog ends the whole
            peer = sock.getpeername()[0]
        except FetchRefused:
            raise
        except OSError as error:
            sock.close()
            last_error = error
            continue
        if not policy.addresses.allows(ipaddress.ip_address(peer)):
            sock.close()
            raise _refusal(peer, redirected)
        return sock
    raise refused or last_error or OSError(f"no address for {host}")


class CappedResponse(http.client.HTTPResponse):
    """An HTTPResponse whose full read stops at ``max_body_bytes`` and at the deadline."""

    def __init__(self, sock, *args, policy: FetchPolicy, **kwargs):
        super().__init__(sock, *args, **kwargs)
        self.policy = policy
        # The fetch's deadline (set before its connect) when there is one, else from now.
        self.deadline = current_deadline() or Deadline(time.monotonic() + policy.max_fetch_seconds,
                                                       "timeout:max_fetch_seconds")

    def begin(self) -> None:
        super().begin()
        note_answer(self.status, self.getheader("Retry-After"))
        if self.length is not None and self.length > self.policy.max_body_bytes:
            raise FetchRefused("body_too_large", self.policy.max_body_bytes)  # declared: don't read it

    def read(self, amt=None):
        if amt is not None:
            self._check_deadline()
            return super().read(amt)
        chunks, total = [], 0
        while True:
            self._check_deadline()
            chunk = self.read1(_CHUNK)  # read1: one recv, so a trickle can't block it for long
            if not chunk and self.deadline.passed():
                raise FetchRefused.by(self.deadline)  # the watchdog ended it: not a complete body
            if not chunk:
                if self.length:  # closed before Content-Length bytes came: never a cut image
                    raise http.client.IncompleteRead(b"".join(chunks), self.length)
                # gzip etc. sent anyway (img2dataset asks for none): decoded, capped again
                try:
                    return decode_content(b"".join(chunks), self.getheader("Content-Encoding"),
                                          self.policy.max_body_bytes)
                except ContentRefused as refused:
                    raise FetchRefused(refused.code, refused.detail) from None
            total += len(chunk)
            if total > self.policy.max_body_bytes:
                self.close()
                raise FetchRefused("body_too_large", self.policy.max_body_bytes)
            chunks.append(chunk)

    def _check_deadline(self) -> None:
        # The socket timeout bounds each read; only this (and the watchdog) bounds a server
        # that trickles bytes forever, each one just inside the timeout.
        if self.deadline.passed():
            self.close()
            raise FetchRefused.by(self.deadline)


def _checked(connection_class):
    class Checked(connection_class):
        def __init__(self, *args, policy: FetchPolicy, redirected: bool, **kwargs):
            super().__init__(*args, **kwargs)
            self._create_connection = functools.partial(open_checked_socket, policy=policy, redirected=redirected)
            self.response_class = functools.partial(CappedResponse, policy=policy)

        def connect(self):
            super().connect()
            watch_socket(self.sock)  # after TLS wraps it: shutting it down ends a stalled handshake or read

    Checked.__name__ = f"Checked{connection_class.__name__}"
    return Checked


CheckedHTTPConnection = _checked(http.client.HTTPConnection)
CheckedHTTPSConnection = _checked(http.client.HTTPSConnection)


def _connection(cls, policy: FetchPolicy, req: urllib.request.Request):
    # urllib marks every request made by following a redirect with ``redirect_dict``.
    return functools.partial(cls, policy=policy, redirected=hasattr(req, "redirect_dict"))


class CheckedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, policy: FetchPolicy):
        super().__init__()
        self.policy = policy

    def http_open(self, req):
        return self.do_open(_connection(CheckedHTTPConnection, self.policy, req), req)


class CheckedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, policy: FetchPolicy):
        super().__init__()
        self.policy = policy

    def https_open(self, req):
        return self.do_open(_connection(CheckedHTTPSConnection, self.policy, req), req)


class BoundedRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows at most ``max_redirects`` hops, only to http(s), never to a URL twice."""

    def __init__(self, policy: FetchPolicy):
        super().__init__()
        self.max_redirections = policy.max_redirects

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in ALLOWED_SCHEMES:
            raise FetchRefused("scheme_not_allowed", scheme or "none")
        visited = getattr(req, "redirect_dict", {})  # absolute URLs followed so far
        if newurl in visited or len(visited) >= self.max_redirections:
            raise FetchRefused("too_many_redirects")  # a loop (no cookies here: it can't end) or too long
        return super().redirect_request(req, fp, code, msg, headers, newurl)

    def http_error_302(self, req, fp, code, msg, headers):
        # urllib refuses file:// etc. itself with an HTTPError that reads like a failure
        # of the server; refuse them first so the reason names the scheme.
        location = headers.get("location") or headers.get("uri") or ""
        scheme = urllib.parse.urlsplit(location).scheme.lower()
        if scheme and scheme not in ALLOWED_SCHEMES:
            raise FetchRefused("scheme_not_allowed", scheme)
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def build_opener(policy: FetchPolicy) -> urllib.request.OpenerDirector:
    """An opener with only what image fetching needs: no proxies from the environment (a
    proxy would be the peer, hiding the real target), no file://, ftp:// or data: handlers."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler({}),
        urllib.request.UnknownHandler(),
        CheckedHTTPHandler(policy),
        CheckedHTTPSHandler(policy),
        urllib.request.HTTPDefaultErrorHandler(),
        BoundedRedirectHandler(policy),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


_installed: list[FetchPolicy] = []
_install_lock = threading.Lock()


def install(policy: FetchPolicy) -> None:
    """Make ``urllib.request.urlopen`` in this process fetch under ``policy``."""
    with _install_lock:
        if _installed != [policy]:
            urllib.request.install_opener(build_opener(policy))
            _installed[:] = [policy]


# -- images: refuse decompression bombs from their header, before the decoder allocates --


def declared_pixels_refusal(data: bytes, max_pixels: int) -> str | None:
    """The refusal message for an image body, or None to let the decoder judge it."""
    if not data:
        return f"{MARK} {reason('not_an_image', 'empty body')}"
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # parses the header only
                width, height = image.size
    except Image.DecompressionBombError:  # Pillow's own limit, far above any sane image
        return f"{MARK} {reason('image_too_large', max_pixels)}"
    except Exception:  # noqa: BLE001 - a header Pillow can't read: cv2 decides (and fails) later
        return None
    if width * height > max_pixels:
        return f"{MARK} {reason('image_too_large', max_pixels)}"
    return None


class PixelCappedResizer:
    """Wraps img2dataset's Resizer: checks the declared size before cv2 decodes."""

    def __init__(self, resizer, max_pixels: int):
        self.resizer, self.max_pixels = resizer, max_pixels

    def __call__(self, img_stream, blurring_bbox_list=None):
        img_stream.seek(0)
        refused = declared_pixels_refusal(img_stream.read(), self.max_pixels)
        if refused:
            return None, None, None, None, None, refused
        img_stream.seek(0)
        return self.resizer(img_stream, blurring_bbox_list)
