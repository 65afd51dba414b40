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
from dataclasses import dataclass
from urllib.parse import urlsplit

from curate.schemas.reasons import reason

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


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4, Teredo), if any:
    ``64:ff9b::a00:1`` reaches 10.0.0.1 on a NAT64 network, so it is judged as 10.0.0.1."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def is_public_address(address: Address) -> bool:
    """Globally routable unicast: not loopback, private, link-local, CGNAT, multicast,
    reserved, documentation or unspecified (Python's ``is_global`` plus multicast)."""
    inner = embedded_ipv4(address)
    if inner is not None and not is_public_address(inner):
        return False
    return address.is_global and not address.is_multicast


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses may be fetched: public ones, plus ``allowed_networks`` (CIDR ranges
    or single addresses, e.g. an internal mirror), or everything with ``allow_all``."""

    allow_all: bool = False
    allowed_networks: tuple[str, ...] = ()

    def allows(self, address: Address) -> bool:
        if self.allow_all or is_public_address(address):
            return True
        return any(address in network for network in self._networks())

    def _networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(n, strict=False) for n in self.allowed_networks]


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
        return reason("private_host", str(address))
    return None
