"""Which IP addresses an image may be fetched from: an explicit deny list, not ``is_global``.

The deny list is the IANA special-purpose address registries, written out below as data
with the RFC of each range, plus the few ranges outside them that are just as
non-public (multicast, IPv6 site-local). Python's ``ipaddress.is_global`` is not used: in
Python 3.11 it calls ``::127.0.0.1``, ``::ffff:0:127.0.0.1``, ``64:ff9b:1::/48``,
``fec0::/10`` and ``192.0.0.8`` global, and its answer changes between Python versions.

IPv6 forms that carry an IPv4 address (mapped, translated, compatible, NAT64, 6to4,
Teredo, ISATAP) reach that IPv4 address through some translator or tunnel, so they are
judged by it as well: ``64:ff9b::a00:1`` reaches 10.0.0.1 on a NAT64 network.

Registries (as of 2025):
https://www.iana.org/assignments/iana-ipv4-special-registry/
https://www.iana.org/assignments/iana-ipv6-special-registry/
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# (range, what it is, where it is defined). Every range is refused, also those the
# registry marks globally reachable (anycast and AS112 DNS service addresses): no image
# is served from a protocol's special address.
IPV4_DENY: tuple[tuple[str, str, str], ...] = (
    ("0.0.0.0/8", "this network", "RFC 791 3.2"),
    ("10.0.0.0/8", "private use", "RFC 1918"),
    ("100.64.0.0/10", "shared address space (CGNAT)", "RFC 6598"),
    ("127.0.0.0/8", "loopback", "RFC 1122 3.2.1.3"),
    ("169.254.0.0/16", "link local (cloud metadata)", "RFC 3927"),
    ("172.16.0.0/12", "private use", "RFC 1918"),
    ("192.0.0.0/24", "IETF protocol assignments (incl. 192.0.0.8 dummy, 192.0.0.9 PCP, 192.0.0.170 NAT64 discovery)", "RFC 6890 2.1"),
    ("192.0.2.0/24", "documentation TEST-NET-1", "RFC 5737"),
    ("192.31.196.0/24", "AS112-v4", "RFC 7535"),
    ("192.52.193.0/24", "AMT", "RFC 7450"),
    ("192.88.99.0/24", "deprecated 6to4 relay anycast", "RFC 7526"),
    ("192.168.0.0/16", "private use", "RFC 1918"),
    ("192.175.48.0/24", "direct delegation AS112 service", "RFC 7534"),
    ("198.18.0.0/15", "benchmarking", "RFC 2544"),
    ("198.51.100.0/24", "documentation TEST-NET-2", "RFC 5737"),
    ("203.0.113.0/24", "documentation TEST-NET-3", "RFC 5737"),
    ("224.0.0.0/4", "multicast (IANA multicast registry, not the special registry)", "RFC 5771"),
    ("240.0.0.0/4", "reserved", "RFC 1112 4"),
    ("255.255.255.255/32", "limited broadcast", "RFC 8190, RFC 919 7"),
)

IPV6_DENY: tuple[tuple[str, str, str], ...] = (
    ("::/128", "unspecified", "RFC 4291"),
    ("::1/128", "loopback", "RFC 4291"),
    ("64:ff9b:1::/48", "local-use IPv4/IPv6 translation (NAT64 inside one network)", "RFC 8215"),
    ("100::/64", "discard only", "RFC 6666"),
    ("100:0:0:1::/64", "dummy IPv6 prefix", "RFC 9780"),
    ("2001::/23", "IETF protocol assignments (Teredo, benchmarking, ORCHID, AMT, AS112, anycast)", "RFC 2928"),
    ("2001:db8::/32", "documentation", "RFC 3849"),
    ("2620:4f:8000::/48", "direct delegation AS112 service", "RFC 7534"),
    ("3fff::/20", "documentation", "RFC 9637"),
    ("5f00::/16", "segment routing SIDs", "RFC 9602"),
    ("fc00::/7", "unique local", "RFC 4193, RFC 8190"),
    ("fe80::/10", "link-local unicast", "RFC 4291"),
    ("fec0::/10", "site-local (deprecated, still routed inside sites)", "RFC 3879"),
    ("ff00::/8", "multicast", "RFC 4291"),
)
# Only this block of the IPv6 address space is allocated for global unicast (IANA IPv6
# address space registry); anything outside it that is not an IPv4-carrying form below is
# reserved or special, whether or not a range above names it.
IPV6_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")

_DENY4 = tuple(ipaddress.ip_network(n) for n, _, _ in IPV4_DENY)
_DENY6 = tuple(ipaddress.ip_network(n) for n, _, _ in IPV6_DENY)

# IPv6 forms whose low 32 bits are an IPv4 address the packet ends up at.
_V4_IN_LOW_BITS = (
    ipaddress.ip_network("::ffff:0:0/96"),  # IPv4-mapped, RFC 4291 2.5.5.2
    ipaddress.ip_network("::ffff:0:0:0/96"),  # IPv4-translated (SIIT), RFC 2765 2.1
    ipaddress.ip_network("::/96"),  # IPv4-compatible (deprecated), RFC 4291 2.5.5.1
    ipaddress.ip_network("64:ff9b::/96"),  # well-known NAT64 prefix, RFC 6052 2.1
    ipaddress.ip_network("64:ff9b:1::/48"),  # local-use NAT64 (denied anyway; shown as IPv4), RFC 8215
)
_6TO4 = ipaddress.ip_network("2002::/16")  # RFC 3056: bits 16-47
_TEREDO = ipaddress.ip_network("2001::/32")  # RFC 4380: server bits 32-63, client obfuscated in 96-127
_ISATAP_IIDS = (0x00005EFE, 0x02005EFE)  # RFC 5214 6.1: interface id 0[02]00:5efe:a.b.c.d


def _low_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)


def _carries_low_v4(plain: ipaddress.IPv6Address) -> bool:
    return int(plain) > 1 and any(plain in net for net in _V4_IN_LOW_BITS)


def embedded_ipv4(address: Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (empty for an IPv4 address or a plain
    IPv6 one). ``::`` and ``::1`` are not IPv4-compatible addresses and carry none."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    plain = ipaddress.IPv6Address(int(address))  # without a %scope
    found: list[ipaddress.IPv4Address] = []
    if _carries_low_v4(plain):
        found.append(_low_v4(plain))
    if plain in _6TO4:
        found.append(ipaddress.IPv4Address((int(plain) >> 80) & 0xFFFFFFFF))
    if plain in _TEREDO:
        server, client = plain.teredo
        found += [server, client]
    if (int(plain) >> 32) & 0xFFFFFFFF in _ISATAP_IIDS:
        found.append(_low_v4(plain))
    return found


def denied_range(address: Address) -> str | None:
    """The deny-list range ``address`` falls in (``"127.0.0.0/8"``), or None if it is
    public. For an IPv6 form that carries an IPv4 address, that address is judged too."""
    if isinstance(address, ipaddress.IPv4Address):
        return next((str(n) for n in _DENY4 if address in n), None)
    plain = ipaddress.IPv6Address(int(address))
    for inner in embedded_ipv4(plain):
        hit = denied_range(inner)
        if hit is not None:
            return hit
    hit = next((str(n) for n in _DENY6 if plain in n), None)
    if hit is not None:
        return hit
    if _carries_low_v4(plain):
        return None  # mapped, compatible or NAT64 form of a public IPv4 address, judged above
    return None if plain in IPV6_GLOBAL_UNICAST else "outside 2000::/3"


def is_public_address(address: Address) -> bool:
    """True for a globally routable unicast address that no special-purpose range covers."""
    return denied_range(address) is None


def address_text(address: Address) -> str:
    """How an address is written in a reason: ``10.0.0.1``, or an IPv6 address in brackets
    as in a URL, its IPv4 part dotted when it ends in one: ``[::1]``, ``[::ffff:127.0.0.1]``,
    ``[64:ff9b::10.0.0.1]``. The zone (``%eth0``) is left out: it is text from the input."""
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    plain = ipaddress.IPv6Address(int(address))
    if _carries_low_v4(plain):
        # The high 96 bits, then the IPv4 address: "::ffff:0:0" + 127.0.0.1 -> "::ffff:127.0.0.1".
        head = ipaddress.IPv6Address(int(plain) >> 32 << 32).compressed
        head = head if head.endswith("::") else head[: -len("0:0")]
        return f"[{head}{_low_v4(plain)}]"
    return f"[{plain.compressed}]"


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses may be fetched: public ones, plus ``allowed_networks`` (CIDR ranges
    or single addresses, e.g. an internal mirror), or everything with ``allow_all``."""

    allow_all: bool = False
    allowed_networks: tuple[str, ...] = ()

    def allows(self, address: Address) -> bool:
        """True if ``address`` may be connected to."""
        if self.allow_all or is_public_address(address):
            return True
        plain = ipaddress.ip_address(int(address)) if address.version == 4 else ipaddress.IPv6Address(int(address))
        return any(plain in network for network in self._networks())  # (an IPv6 %zone is not compared)

    def _networks(self) -> list[Network]:
        return [ipaddress.ip_network(n, strict=False) for n in self.allowed_networks]
