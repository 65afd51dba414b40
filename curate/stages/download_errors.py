"""Stable reason codes for the downloader's remaining error messages.

img2dataset records ``str(error)`` of whatever a fetch or a decode raised. That text is
no reason code: it changes with Python versions, it can quote the URL or a server's bytes
(``BadStatusLine`` repeats the status line a server sent), and it splits one cause into
many groups. ``curate.stages.download.download_reason`` maps the common messages first
(HTTP status, timeout, connection, not an image...); what is left is matched here against
a fixed table, and anything else is ``download_error`` with no detail. The message itself
stays in the ``error_message`` column of ``RUN/downloaded/``, for whoever debugs it.
"""

from __future__ import annotations

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
