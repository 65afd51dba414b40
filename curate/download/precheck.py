"""Pre-download URL check: rows that must never be fetched are blocked before download.

This catches what can be decided from the URL text alone: missing URLs, non-http(s)
schemes, unparsable URLs, and hosts that are literal non-public addresses in any of the
spellings a resolver accepts (``127.1``, ``0x7f.0.0.1``, ``2130706433``, ``[::1]``,
``[::ffff:0:127.0.0.1]``); which addresses are non-public is ``curate.download.address_policy``.
Hosts given by name are checked against the address actually connected to, at download
time (see ``curate.download.safe_fetch``), since DNS can point a public-looking name at an
internal address.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from curate.schemas.reasons import reason
from curate.download.address_policy import AddressPolicy, address_text, embedded_ipv4, is_public_address

__all__ = ["ALLOWED_SCHEMES", "AddressPolicy", "check_url", "embedded_ipv4", "is_public_address", "parse_ip_literal"]

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


def check_url(url: object, allow_private_hosts: bool, allowed_networks: tuple[str, ...] = ()) -> str | None:
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
    policy = AddressPolicy(allow_private_hosts, tuple(allowed_networks))
    if host.lower().rstrip(".") in _LOCAL_NAMES or host.lower().endswith(".localhost"):
        return None if policy.allows(ipaddress.IPv4Address("127.0.0.1")) else reason("private_host", host)
    address = parse_ip_literal(host)
    if address is not None and not policy.allows(address):
        return reason("private_host", address_text(address))
    return None
