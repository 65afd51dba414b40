"""Safe fetching for img2dataset: connect-time address checks, bounded redirects, a body
cap, a deadline on the whole exchange (connect, headers, body, redirects), and a
declared-pixel check before any image is decoded.

img2dataset fetches with ``urllib.request.urlopen``, i.e. through the process-wide urllib
opener of whichever process runs a shard (a Ray worker). It has no hook for its HTTP
client, so the policy travels with the shard: ``SafeDownloader`` is img2dataset's
Downloader carrying a ``FetchPolicy``, and on arrival in a worker it installs the opener
built here before it fetches anything (``install``). ``downloader_with_policy`` makes
img2dataset build a SafeDownloader for the length of one ``download()`` call.

(``SafeDownloader`` lives in ``curate.download.safe_downloader``: it imports img2dataset.)

The address check happens on the resolved address *before* connecting (so nothing is
ever sent to a refused address) and again on the socket's peer address after
connecting; the socket is opened to the checked address itself, never re-resolved, so a
DNS answer that changes between check and connect (rebinding) can't slip through. Every
hop of a redirect chain goes through the same check.

Every way a fetch ends badly becomes a ``FetchVerdict`` carrying a reason code:
``FetchRefused`` for the policy's refusals, ``FetchFailed`` for errors classified by their
exception *type* (a timeout, an HTTP status, a refused connection). How the verdict gets
from here to the manifest is the part a server must not be able to forge; see
``verified_reason``.

Time: a fetch has one ``Deadline`` (``curate.download.fetch_deadline``) for all its hops: the
deadline of the row's fetch when one is running (``max_fetch_seconds`` from before its
connect, or its download shard's ``shard_timeout``, whichever comes first), else
``max_fetch_seconds`` from its first connect. Every connect, TLS handshake and recv (status
line and headers included) waits at most the time left, and the connected socket is handed
to the deadline's watchdog, which shuts it down when the time is up. A fetch the deadline
ends is refused with the deadline's cause (``timeout:max_fetch_seconds``,
``shard_timeout``). Every answer's status and ``Retry-After`` are noted for the caller
(``fetch_deadline.note_answer``).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import http.client
import io
import ipaddress
import re
import secrets
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field

from curate.schemas.reasons import reason
from curate.download.address_policy import AddressPolicy, address_text
from curate.download.content_encoding import ContentRefused, decode_content
from curate.download.fetch_deadline import Deadline, current_deadline, note_answer, watch_socket
from curate.download.precheck import ALLOWED_SCHEMES

_CHUNK = 64 * 1024

# -- verdicts: how a reason travels through img2dataset without a server forging one --
#
# img2dataset catches every fetch error and keeps only ``str(error)`` as the row's
# error_message, text a server shapes: an HTTP reason phrase, a status line quoted by
# BadStatusLine, a redirect target. Reading a reason back from that text let a server
# answer ``HTTP/1.1 2xx curate-refused private_host:...`` and choose its own verdict.
#
# So a verdict's message carries an HMAC of its reason under a key that exists only in
# the memory of this process (fresh random bytes at import, never written anywhere, never
# sent): ``curate-verdict private_host:10.0.0.8 #<tag>``. In the same process, before the
# row is written, ``verified_reason`` accepts a reason only with a tag that verifies; a
# server can copy the format but not produce a valid tag, since it never sees one. (The
# shard writer in curate.download.safe_downloader stores the verified reason in a column of
# its own; nothing downstream parses error messages for verdicts.) A key per process,
# not per run, because the check happens in the worker that fetched, right away.
MARK = "curate-verdict"
_KEY = secrets.token_bytes(32)
_SIGNED = re.compile(re.escape(MARK) + r" (\S+) #([0-9a-f]{32})")


def _tag(text: str) -> str:
    return hmac.new(_KEY, text.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def verified_reason(message: str | None) -> str | None:
    """The reason of a verdict made by this process whose message is (or is inside)
    ``message``; None when it holds no verdict, or only forged ones."""
    for found in _SIGNED.finditer(message or ""):
        if hmac.compare_digest(_tag(found.group(1)), found.group(2)):
            return found.group(1)
    return None


class FetchVerdict(OSError):
    """How a fetch ended badly: ``reason`` is the manifest reason; ``str()`` is signed."""

    def __init__(self, code: str, detail: object | None = None):
        self.reason = reason(code, detail)
        super().__init__(f"{MARK} {self.reason} #{_tag(self.reason)}")


class FetchRefused(FetchVerdict):
    """A fetch curate refuses to make or finish (the address policy, a cap, a deadline)."""

    @classmethod
    def by(cls, deadline: Deadline) -> "FetchRefused":
        """The refusal of a fetch ``deadline`` ended (its cause: ``code`` or ``code:detail``)."""
        code, _, detail = deadline.cause.partition(":")
        return cls(code, detail or None)


class FetchFailed(FetchVerdict):
    """A fetch that failed, classified by the type of its error (``classify``)."""


def classify(error: BaseException) -> FetchVerdict:
    """The verdict for any error raised while fetching, from its type and typed fields
    only (an HTTP status is an int), never from its message: the codes
    curate.download.download_errors names for the same failures."""
    if isinstance(error, FetchVerdict):
        return error
    if isinstance(error, urllib.error.HTTPError):
        error.close()  # it holds the response and its socket
        return FetchFailed(f"http_{int(error.code)}")
    if isinstance(error, urllib.error.URLError) and isinstance(error.reason, BaseException):
        return classify(error.reason)  # urllib wraps errors raised while sending
    if isinstance(error, urllib.error.URLError):  # its reason is text: urllib refused the request itself
        return FetchFailed("invalid_request")
    if isinstance(error, TimeoutError):  # socket.timeout too
        return FetchFailed("timeout")
    if isinstance(error, ssl.SSLError):  # (an OSError: before the general case)
        return FetchFailed("tls_error")
    if isinstance(error, http.client.IncompleteRead):  # closed before Content-Length bytes came
        return FetchFailed("incomplete_body")
    if isinstance(error, ConnectionError):  # refused, reset
        return FetchFailed("connection_error")
    if isinstance(error, http.client.HTTPException):  # a malformed status line, headers too long
        return FetchFailed("bad_http_response")
    if isinstance(error, (ValueError, UnicodeError)):  # a URL urllib won't send (bad port, unencodable)
        return FetchFailed("invalid_request")
    if isinstance(error, OSError):  # DNS (gaierror), unreachable network, ...
        return FetchFailed("connection_error")
    return FetchFailed("download_error")


@dataclass(frozen=True)
class FetchPolicy:
    addresses: AddressPolicy = field(default_factory=AddressPolicy)
    resolve: tuple[tuple[str, str], ...] = ()  # host -> address overrides (curl --resolve)
    max_body_bytes: int = 32 * 2**20
    max_fetch_seconds: float = 60.0
    max_redirects: int = 5
    max_image_pixels: int = 178_956_970
    max_decode_bytes: int = 512 * 2**20  # see curate.download.image_decode

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


def _refusal(address: str, redirected: bool) -> FetchRefused:
    shown = address_text(ipaddress.ip_address(address))
    return FetchRefused("redirect_to_private_host" if redirected else "private_host", shown)


def _bounded(timeout: float | None, deadline: Deadline) -> float:
    """A socket timeout that is at most ``timeout`` and ends by ``deadline``."""
    remaining = deadline.remaining()
    if remaining <= 0:
        raise FetchRefused.by(deadline)
    return remaining if timeout is None else min(timeout, remaining)


def open_checked_socket(address, timeout, source_address=None, *, policy: FetchPolicy, redirected: bool,
                        deadline: Deadline):
    """socket.create_connection, but only to addresses the policy allows (checked before
    the connect, and on the peer address after it), and never past ``deadline``."""
    host, port = address
    refused, last_error = None, None
    per_op = None if timeout is socket._GLOBAL_DEFAULT_TIMEOUT else timeout
    for family, sockaddr in policy.candidates(host, port):
        if not policy.addresses.allows(ipaddress.ip_address(sockaddr[0])):
            refused = refused or _refusal(sockaddr[0], redirected)
            continue  # never connect to it
        # Bounds the connect, the TLS handshake and sending the request; reading the answer
        # is bounded by _DeadlineReader.
        bounded = _bounded(per_op, deadline)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(bounded)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
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


class _DeadlineReader(io.RawIOBase):
    """The raw stream an HTTPResponse reads the status line, headers and body from: each
    recv waits at most the per-read timeout (``download.timeout``) and never past the
    deadline. The socket timeout alone bounds each read, so a server sending one byte per
    second, headers included, would hold a fetch for as long as it likes."""

    def __init__(self, sock: socket.socket, deadline: Deadline, per_read: float | None):
        # makefile keeps the socket's file descriptor open after urllib closes the socket
        # object (it does so right after reading the headers, and reads the body from here).
        self.raw, self.sock = sock.makefile("rb", buffering=0), sock
        self.deadline, self.per_read = deadline, per_read

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.raw.fileno()

    def readinto(self, buffer) -> int | None:
        self.sock.settimeout(_bounded(self.per_read, self.deadline))
        try:
            got = self.raw.readinto(buffer)
        except (TimeoutError, OSError):
            if self.deadline.passed():  # a timeout, or the watchdog shut the socket down
                raise FetchRefused.by(self.deadline) from None
            raise
        if not got and self.deadline.passed():  # shut down by the watchdog: not the server's end
            raise FetchRefused.by(self.deadline)
        return got

    def close(self) -> None:
        self.raw.close()
        super().close()


class _DeadlineSocket:
    """What CappedResponse hands to HTTPResponse, which only calls ``makefile``."""

    def __init__(self, sock: socket.socket, deadline: Deadline, per_read: float | None):
        self.sock, self.deadline, self.per_read = sock, deadline, per_read

    def makefile(self, mode: str = "rb", *args, **kwargs) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self.sock, self.deadline, self.per_read))


class CappedResponse(http.client.HTTPResponse):
    """An HTTPResponse whose status line, headers and body must all arrive by the fetch's
    Deadline, and whose full read stops
    at ``max_body_bytes``. Any error while reading the body becomes a FetchVerdict."""

    def __init__(self, sock, *args, policy: FetchPolicy, deadline: Deadline, per_read: float | None, **kwargs):
        super().__init__(_DeadlineSocket(sock, deadline, per_read), *args, **kwargs)
        self.policy, self.deadline = policy, deadline

    def begin(self) -> None:
        super().begin()
        note_answer(self.status, self.getheader("Retry-After"))
        if self.length is not None and self.length > self.policy.max_body_bytes:
            raise FetchRefused("body_too_large", self.policy.max_body_bytes)  # declared: don't read it

    def read(self, amt=None):
        try:
            return super().read(amt) if amt is not None else self._read_capped()
        except Exception as error:  # noqa: BLE001 - every failure gets its verdict
            self.close()
            raise classify(error) from None

    def _read_capped(self) -> bytes:
        chunks, total = [], 0
        while True:
            chunk = self.read1(_CHUNK)  # read1: one recv, so a trickle can't block it for long
            if not chunk and self.deadline.passed():
                raise FetchRefused.by(self.deadline)  # the watchdog shut it down: not a complete body
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
                raise FetchRefused("body_too_large", self.policy.max_body_bytes)
            chunks.append(chunk)


def _checked(connection_class):
    class Checked(connection_class):
        def __init__(self, *args, policy: FetchPolicy, redirected: bool, deadline: Deadline, **kwargs):
            super().__init__(*args, **kwargs)
            self._create_connection = functools.partial(
                open_checked_socket, policy=policy, redirected=redirected, deadline=deadline)
            per_read = None if self.timeout is socket._GLOBAL_DEFAULT_TIMEOUT else self.timeout
            self.response_class = functools.partial(CappedResponse, policy=policy, deadline=deadline, per_read=per_read)

        def connect(self):
            super().connect()
            watch_socket(self.sock)  # after TLS wraps it: shutting it down ends a stalled handshake or read

    Checked.__name__ = f"Checked{connection_class.__name__}"
    return Checked


CheckedHTTPConnection = _checked(http.client.HTTPConnection)
CheckedHTTPSConnection = _checked(http.client.HTTPSConnection)


_DEADLINE = "_curate_deadline"  # attribute of a Request: the Deadline of its whole fetch


def _connection(cls, policy: FetchPolicy, req: urllib.request.Request):
    # urllib marks every request made by following a redirect with ``redirect_dict``; a
    # redirected request inherits the first one's deadline (BoundedRedirectHandler), so
    # max_fetch_seconds bounds the whole chain.
    deadline = req.__dict__.get(_DEADLINE) or current_deadline() or Deadline(
        time.monotonic() + policy.max_fetch_seconds, "timeout:max_fetch_seconds")
    setattr(req, _DEADLINE, deadline)
    return functools.partial(cls, policy=policy, redirected=hasattr(req, "redirect_dict"), deadline=deadline)


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
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and hasattr(req, _DEADLINE):
            setattr(new, _DEADLINE, getattr(req, _DEADLINE))
        return new

    def http_error_302(self, req, fp, code, msg, headers):
        # urllib refuses file:// etc. itself with an HTTPError that reads like a failure
        # of the server; refuse them first so the reason names the scheme.
        location = headers.get("location") or headers.get("uri") or ""
        scheme = urllib.parse.urlsplit(location).scheme.lower()
        if scheme and scheme not in ALLOWED_SCHEMES:
            raise FetchRefused("scheme_not_allowed", scheme)
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


class VerdictOpener(urllib.request.OpenerDirector):
    """An opener whose ``open`` raises only FetchVerdicts: every error, whatever its type,
    leaves with a reason chosen here from its type."""

    def open(self, fullurl, data=None, timeout=socket._GLOBAL_DEFAULT_TIMEOUT):
        try:
            return super().open(fullurl, data, timeout)
        except Exception as error:  # noqa: BLE001 - every failure gets its verdict
            raise classify(error) from None


def build_opener(policy: FetchPolicy) -> urllib.request.OpenerDirector:
    """An opener with only what image fetching needs: no proxies from the environment (a
    proxy would be the peer, hiding the real target), no file://, ftp:// or data: handlers."""
    opener = VerdictOpener()
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
    """The refusal message (a signed verdict) for an image body, or None to let the
    decoder judge it."""
    if not data:
        return str(FetchRefused("not_an_image", "empty body"))
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # parses the header only
                width, height = image.size
    except Image.DecompressionBombError:  # Pillow's own limit, far above any sane image
        return str(FetchRefused("image_too_large", max_pixels))
    except Exception:  # noqa: BLE001 - a header Pillow can't read: cv2 decides (and fails) later
        return None
    if width * height > max_pixels:
        return str(FetchRefused("image_too_large", max_pixels))
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
