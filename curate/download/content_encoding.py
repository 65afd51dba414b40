"""Undo a response's ``Content-Encoding`` (gzip, deflate, br, zstd), capped.

urllib hands over the body as sent. img2dataset asks for no compression, yet some
servers (and CDNs) gzip images anyway (curl #2422): the body is then gzip of a JPEG, and a
decoder sees no image. Browsers decode it, so do we. The decoded size is capped at
``download.max_body_bytes`` while decoding (a small gzip can expand a thousandfold), and
a body that does not decode as declared, or an encoding we can't decode, is refused with
a stable reason whose detail is one of a fixed set of tokens, never the server's text.
"""

from __future__ import annotations

import zlib

# Content-Encoding token -> pyarrow stream codec (deflate is zlib's: done with zlib).
_ARROW_CODECS = {"gzip": "gzip", "x-gzip": "gzip", "br": "brotli", "zstd": "zstd"}
_IDENTITY = ("", "identity")
_NAMED = ("gzip", "deflate", "br", "zstd", "compress")  # tokens a reason may name


def _token(name: str) -> str:
    name = "gzip" if name == "x-gzip" else name
    return name if name in _NAMED else "other"


class ContentRefused(ValueError):
    """A body curate won't decode: ``code`` and ``detail`` of the reason (safe_fetch turns it
    into its FetchRefused)."""

    def __init__(self, code: str, detail: object):
        super().__init__(f"{code}:{detail}")
        self.code, self.detail = code, detail


def _refused(code: str, detail: object) -> ContentRefused:
    return ContentRefused(code, detail)


def _inflate(body: bytes, limit: int) -> bytes:
    # RFC 9110's deflate is zlib-wrapped; some servers send raw deflate, which browsers
    # also accept.
    for wbits in (zlib.MAX_WBITS, -zlib.MAX_WBITS):
        try:
            inflater = zlib.decompressobj(wbits)
            data = inflater.decompress(body, limit + 1)
            if len(data) <= limit and not inflater.eof:
                raise zlib.error("truncated")
            return data
        except zlib.error:
            continue
    raise ValueError("not deflate")


def _decode_one(body: bytes, name: str, limit: int) -> bytes:
    if name == "deflate":
        return _inflate(body, limit)
    import pyarrow as pa

    stream = pa.CompressedInputStream(pa.BufferReader(body), _ARROW_CODECS[name])
    return stream.read(limit + 1)  # one byte past the cap tells a body that is too large


def decode_content(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """The body with its ``Content-Encoding`` undone (a list is undone last first).

    Raises ContentRefused: ``body_too_large:<max_bytes>`` when the decoded body would be
    larger than ``max_bytes``; ``content_encoding_invalid:<token>`` when it does not
    decode as declared; ``content_encoding_unsupported:<token>`` for an encoding other
    than gzip, deflate, br, zstd (``compress`` or anything else: token ``other``)."""
    names = [n.strip().lower() for n in (content_encoding or "").split(",")]
    for name in reversed([n for n in names if n not in _IDENTITY]):
        if name != "deflate" and name not in _ARROW_CODECS:
            raise _refused("content_encoding_unsupported", _token(name))
        try:
            body = _decode_one(body, name, max_bytes)
        except (OSError, ValueError):  # pyarrow: OSError "zlib inflate failed", truncated...
            raise _refused("content_encoding_invalid", _token(name)) from None
        if len(body) > max_bytes:
            raise _refused("body_too_large", max_bytes)
    return body
