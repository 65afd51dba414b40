"""Pre-download URL check: rows that must never be fetched are blocked before download.

This catches what can be decided from the URL text alone: missing URLs, non-http(s)
schemes, unparsable URLs, and hosts that are literal non-public addresses in any of the
spellings a resolver accepts (``127.1``, ``0x7f.0.0.1``, ``2130706433``, ``[::1]``).
Hosts given by name are checked against the address actually connected to, at download
time (see ``curate.stages.safe_fetch``), since DNS can point a public-looking name at an
internal address.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from curate.schemas.status import reason

ALLOWED_SCHEMES = ("http", "https")
_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


def parse_ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host string denotes without DNS, or None if it is a name."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        # inet_aton accepts the legacy forms (octal, hex, 1-3 parts) that resolvers accept.
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def check_url(url: object, allow_private_hosts: bool) -> str | None:
    """None if the URL may be fetched, else the ``blocked`` reason."""
    if url is None or not isinstance(url, str) or not url.strip():
        return reason("url_missing")
    text = url.strip()
    try:
        parts = urlsplit(text)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return reason("url_invalid")
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        return reason("scheme_not_allowed", scheme or "none")
    if not host:
        return reason("url_invalid")
    if any(ch.isspace() for ch in text) or any(ord(ch) < 32 for ch in text):
        return reason("url_invalid")
    if allow_private_hosts:
        return None
    if host.lower().rstrip(".") in _LOCAL_NAMES or host.lower().endswith(".localhost"):
        return reason("private_host", host)
    address = parse_ip_literal(host)
    if address is not None and not is_public_address(address):
        return reason("private_host", str(address))
    return None
