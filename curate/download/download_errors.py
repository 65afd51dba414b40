"""Reason codes from the downloader's error messages, and sets of them.

``download_reason`` turns img2dataset's (status, error_message) of a row into its reason
code; :class:`ReasonSet` matches codes (``curate retry --reasons``, the transient failures a
download shard retries at once).

Stable reason codes for the downloader's remaining error messages:

img2dataset records ``str(error)`` of whatever a fetch or a decode raised. That text is
no reason code: it changes with Python versions, it can quote the URL or a server's bytes
(``BadStatusLine`` repeats the status line a server sent), and it splits one cause into
many groups. ``download_reason`` maps the common messages first (HTTP status, timeout,
connection, not an image...); what is left is matched against a fixed table
(``download_error_code``), and anything else is ``download_error`` with no detail. The message itself
stays in the ``error_message`` column of ``RUN/downloaded/``, for whoever debugs it.
"""

from __future__ import annotations

import re

from curate.schemas.reasons import reason

# (code, lowercase fragments of the messages it stands for), checked in order.
_KNOWN = (
    # http.client.IncompleteRead: the connection ended before Content-Length bytes came.
    ("incomplete_body", ("incompleteread", "incomplete read")),
    # http.client.LineTooLong ("got more than 65536 bytes when reading header line"), too
    # many headers. (A BadStatusLine's text is the server's own line: it can't be matched.)
    ("bad_http_response", ("got more than", "line too long", "unknown protocol")),
    # urllib/http.client refusing the request itself: no request was sent.
    ("invalid_request", ("codec can't encode", "can't contain control characters", "nonnumeric port",
                         "unknown url type", "no host given", "invalid url")),
    ("tls_error", ("[ssl", "ssl:", "certificate verify", "tlsv1", "wrong version number",
                   "eof occurred in violation of protocol")),
)
# img2dataset's status for an error raised while decoding or resizing a fetched body.
_RESIZE_STATUS = "failed_to_resize"


def download_error_code(status: str | None, message: str | None) -> str:
    """The reason for a downloader error that ``download_reason``'s own rules did not
    name: a code from the table above, ``resize_error`` for other failures of the
    resizer (cv2) on a body that was fetched, else ``download_error``. Never the message."""
    lowered = (message or "").lower()
    for code, fragments in _KNOWN:
        if any(fragment in lowered for fragment in fragments):
            return reason(code)
    if status == _RESIZE_STATUS:
        return reason("resize_error")
    return reason("download_error")


_HTTP_ERROR = re.compile(r"HTTP Error (\d{3})")
# Refusals at download time that mean "must not be fetched", like the precheck's: status blocked.
BLOCKED_AT_DOWNLOAD = ("private_host", "redirect_to_private_host", "scheme_not_allowed")


# What `curate retry` fetches again by default, and what a download shard retries at once
# (download.retries; shard_timeout aside: the shard is over): failures that say nothing about
# the image, only about the server or the network at the time.
TRANSIENT_REASONS = ("timeout", "connection_error", "http_429", "http_5xx", "shard_timeout")
_HTTP_FAMILY = re.compile(r"http_([1-5])xx")


class ReasonSet:
    """Download-failure reason codes to match: codes of ``download_failed`` rows
    (``timeout``, ``http_503``) and HTTP families (``http_5xx``, ``http_4xx``).

    Raises ValueError for a name that is not such a code, or that a retry can't act on
    (``missing_from_downloader``: the downloader returned nothing to retry from)."""

    def __init__(self, names: tuple[str, ...] | list[str]):
        from curate.schemas import reasons as R
        from curate.schemas.status import Status

        self.names = tuple(dict.fromkeys(n.strip() for n in names if n.strip()))
        if not self.names:
            raise ValueError("no reason codes given")
        for name in self.names:
            if _HTTP_FAMILY.fullmatch(name):
                continue
            try:
                code = R.lookup(name)
            except ValueError:
                code = None
            if code is None or code.status is not Status.DOWNLOAD_FAILED or code is R.MISSING_FROM_DOWNLOADER:
                allowed = [c.name for c in R.CODES if c.status is Status.DOWNLOAD_FAILED
                           and c not in (R.MISSING_FROM_DOWNLOADER, R.HTTP_STATUS)]
                raise ValueError(f"{name!r} is not a download failure reason that can be retried; use "
                                 f"{', '.join(allowed)}, an HTTP status (http_503) or family (http_4xx, http_5xx)")

    def matches(self, reason_text: str | None) -> bool:
        """Whether a reason (``code`` or ``code:detail``) is one of these."""
        if not reason_text:
            return False
        code = reason_text.split(":", 1)[0]
        return any(code == n or (_HTTP_FAMILY.fullmatch(n) and re.fullmatch(f"http_{n[5]}\\d\\d", code))
                   for n in self.names)

    def sql(self, reason_expr: str) -> str:
        """SQL that is true when the reason ``reason_expr`` is one of these."""
        code = f"split_part({reason_expr}, ':', 1)"
        exact = [n for n in self.names if not _HTTP_FAMILY.fullmatch(n)]
        tests = [f"{code} IN ({', '.join(repr(n) for n in exact)})"] if exact else []
        tests += [f"regexp_full_match({code}, 'http_{n[5]}[0-9][0-9]')" for n in self.names if _HTTP_FAMILY.fullmatch(n)]
        return "(" + " OR ".join(tests) + ")"


def download_reason(status: str | None, error_message: str | None, fetch_reason: str | None = None) -> str | None:
    """img2dataset's (status, error_message) and the verified ``fetch_reason`` of a row ->
    its reason code; None for a success.

    A verdict (blocked or not) comes only from ``fetch_reason``, never from the message:
    the message can hold text a server wrote. The message is read only for what
    img2dataset reports itself (X-Robots-Tag, the resizer), and for shards downloaded by
    an earlier curate that had no ``fetch_reason``; whatever it says, it can only make the
    row a download failure with a stable code (curate.download.download_errors), never
    with its text."""
    if status == "success":
        return None
    if fetch_reason:
        return fetch_reason
    message = error_message or ""
    lowered = message.lower()
    if "infinite loop" in lowered or ("redirect" in lowered and "error" in lowered):
        return reason("too_many_redirects")
    match = _HTTP_ERROR.search(message)
    if match:
        return reason(f"http_{match.group(1)}")
    if "timed out" in lowered or "timeout" in lowered:
        return reason("timeout")
    if "x-robots-tag" in lowered:
        return reason("opted_out")
    if "area too large" in lowered or "exceeds limit" in lowered or "decompression bomb" in lowered:
        return reason("image_too_large")
    if "decoding error" in lowered or "cannot identify image" in lowered:
        return reason("not_an_image")
    if "urlopen error" in lowered or "connection" in lowered or "remote end closed" in lowered:
        return reason("connection_error")
    return download_error_code(status, message)  # a stable code, never the message
