"""The URL a browser would request for a URL as written in the input.

Web data holds URLs as people write them: raw non-ASCII letters (``/static/東京.jpg``),
spaces, international host names (``bücher.de``). HTTP needs ASCII, and img2dataset hands
the text to urllib as it is, which fails before any request (``'ascii' codec can't
encode``). Browsers parse such a URL with the WHATWG URL standard: the host through IDNA
(UTS #46) to its ``xn--`` form, the path and query percent-encoded as UTF-8, ``\\`` read as
``/``, dot segments resolved, default ports dropped. ada (``ada-url``, Node's URL parser)
implements that standard; this module only decides which URLs go through it.

Only URLs that HTTP can't carry as written (non-ASCII characters, spaces) go through it:
any other URL is fetched byte for byte as given, as before (a server may answer
``/a/../b`` differently from ``/b``). The manifest keeps the URL as given; the download
list gets this one, and the pre-download check judges this one, since it is what is
fetched (a full-width ``１２７.0.0.1`` host *is* 127.0.0.1 to a browser).
"""

from __future__ import annotations

import ada_url

_SCHEMES = ("http://", "https://")
_REPLACEMENT = "\ufffd"  # what bytes that were not UTF-8 became when the input was read


def browser_url(url: str | None) -> str | None:
    """The URL to request for ``url``: ASCII, as a browser would send it.

    Returns ``url`` unchanged when it is ASCII without spaces already, is not an http(s)
    URL, holds control characters, or does not parse (the pre-download check then gives its reason: ``scheme_not_allowed``,
    ``url_invalid``...), and None when it holds U+FFFD, the mark of input bytes that were
    not UTF-8 (no browser could know the URL meant; recorded as ``url_invalid``)."""
    if not isinstance(url, str):
        return url
    if _REPLACEMENT in url:
        return None
    if not url[:8].lower().startswith(_SCHEMES):
        return url
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        return url  # browsers drop tabs and newlines silently; a URL with them is broken data
    if url.isascii() and " " not in url:
        return url  # HTTP carries it as written
    try:
        return ada_url.URL(url).href
    except ValueError:
        return url
